"""Campaign benchmark (issue 10): a personalised, checked campaign to N subscribers against plain rows, same run.

One private Postgres, N subscribers created in bulk (an active subscription to list `news` each, and attributes
first_name / store / tier; every 10th without first_name, every 3rd without store: the template's defaults),
one marketing template with three placeholders, and the simulator as its own process. Three kinds of round, in
turn (plain, checked, personalised, plain, checked, ...), each on a truncated `outbound_message`:

- plain: `smsgw_broadcast` of one fixed body (the template rendered with its defaults), content checks OFF;
- checked: the same rows with the short code's content checks ON (`[keywords."12345".content]`, default rules,
  `append_opt_out = false`: a text without program name or opt-out would end `rejected`);
- personalised: `smsgw_broadcast_template` (rendered per subscriber by 0012's trigger), checks ON.

Each round enqueues with the gateway stopped (timed), then starts `smsgw run` and measures queued -> receipt
recorded (msg/s over the round, steady msg/s between 10 % and 90 % final, CPU microseconds per message of
gateway, Postgres (and of it, background work) and simulator in that steady part). The list has no frequency
cap. Every row of every round must end `delivered` with a receipt (none `not_subscribed`, none `content_*`).

The verdict is the issue's budget: rendering and checks together may cost at most 10 % of throughput, i.e. the
personalised rounds' msg/s at least 0.9 of the plain rounds' (medians). The checked rounds split that cost into
the checks and the rendering. The last line is one JSON object.

    .venv/bin/python bench/campaign.py                                # 100,000 subscribers, 2 rounds of each
    .venv/bin/python bench/campaign.py --subscribers 20000 --pairs 1  # quick
    .venv/bin/python bench/campaign.py --pg-stats                     # + each round's costliest statements
    .venv/bin/python bench/campaign.py --cap 1000     # + a personalised round with the list capped (lookup cost)

Compare the CPU microseconds per message too: a process waiting for a core uses none, so it is less sensitive to
a busy machine than msg/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import psutil
from outbound import (
    SMSGW,
    cores,
    counter_value,
    cpu_per_message,
    postgres_procs,
    process_tree,
    sample,
    scrape,
    steady_window,
)
from processes import stop, wait_port

from gateway.db.embedded import EmbeddedPostgres, free_port
from gateway.db.migrate import migrate

SC = "12345"
PROGRAM = "Acme Alerts"
TEMPLATE = "Hi {first_name|there}, Acme Alerts: {offer|20% off} this week at {store|our stores}. Reply STOP to opt out"
# The template with its defaults: the same text, the same length class, one fixed body for every recipient.
PLAIN_BODY = "Hi there, Acme Alerts: 20% off this week at our stores. Reply STOP to opt out"
STORES = ["Main St", "Harbour Mall", "Riverside", "Old Town", "Airport"]

# The round's costliest statements (--pg-stats): time, calls, and the shared blocks they touched per call.
PG_STATS = """
    SELECT round(total_exec_time::numeric, 1) AS total_ms, calls, round(mean_exec_time::numeric, 3) AS mean_ms,
           round((shared_blks_hit + shared_blks_read)::numeric / greatest(calls, 1), 1) AS blocks_per_call,
           round(shared_blks_dirtied::numeric / greatest(calls, 1), 1) AS dirtied_per_call,
           rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) AS query
    FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8"""

# Every row the gateway can still act on.
NOT_FINAL = "status IN ('queued', 'claimed', 'submitted')"


async def setup(conn: asyncpg.Connection, n: int) -> float:
    """List, N active subscriptions (consent recorded the way tests/test_templates.py writes it), attributes,
    the template. Returns seconds taken."""
    t = time.perf_counter()
    await conn.execute("INSERT INTO subscriber_list (short_code, name, program, frequency, marketing)"
                       " VALUES ($1, 'news', 'Acme News', 'Up to 4 msgs/week', true)", SC)
    await conn.execute(
        "INSERT INTO subscription (short_code, list_name, msisdn, status, opted_in_at)"
        " SELECT $1, 'news', (12020000000 + i)::text, 'active', now() FROM generate_series(1, $2) i", SC, n)
    await conn.execute(
        "INSERT INTO subscriber (short_code, msisdn, attributes)"
        " SELECT $1, (12020000000 + i)::text, jsonb_strip_nulls(jsonb_build_object("
        "   'first_name', CASE WHEN i % 10 <> 0 THEN 'Name' || i END,"
        "   'store', CASE WHEN i % 3 <> 0 THEN ($3::text[])[1 + i % 5] END,"
        "   'tier', CASE WHEN i % 2 = 0 THEN 'gold' ELSE 'silver' END))"
        " FROM generate_series(1, $2) i", SC, n, STORES)
    await conn.execute("INSERT INTO message_template (short_code, name, body, message_class)"
                       " VALUES ($1, 'promo', $2, 'marketing')", SC, TEMPLATE)
    await conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - t


async def reset(conn: asyncpg.Connection) -> None:
    """Empty the queue between rounds (the gateway is stopped)."""
    await conn.execute("TRUNCATE outbound_message, message_part, pending_receipt")
    await conn.execute("VACUUM ANALYZE outbound_message")


async def enqueue(conn: asyncpg.Connection, kind: str, key: str) -> tuple[int, float]:
    t = time.perf_counter()
    if kind in ("plain", "checked"):
        rows = await conn.fetchval("SELECT smsgw_broadcast($1, 'news', $2, $3)", SC, PLAIN_BODY, key, timeout=600)
    else:
        rows = await conn.fetchval("SELECT smsgw_broadcast_template($1, 'news', 'promo', $2)", SC, key,
                                   timeout=600)
    return rows, time.perf_counter() - t


async def pre_checks(conn: asyncpg.Connection, key: str) -> dict[str, int]:
    """What the round's rows are before the gateway sees them: all marketing, list news, subscribed, a body."""
    return dict(await conn.fetchrow(
        """SELECT count(*) AS rows,
                  count(*) FILTER (WHERE status = 'queued' AND body IS NOT NULL) AS queued_with_body,
                  count(*) FILTER (WHERE message_class = 'marketing' AND list_name = 'news') AS marketing_news,
                  count(*) FILTER (WHERE NOT EXISTS (
                      SELECT 1 FROM subscription s WHERE s.short_code = $2 AND s.list_name = 'news'
                      AND s.status = 'active' AND s.msisdn = ltrim(m.destination, '+'))) AS without_consent,
                  count(DISTINCT body) AS distinct_bodies,
                  max(length(body)) AS longest_body
           FROM outbound_message m WHERE campaign_key = $1""", key, SC))


async def run_round(args: argparse.Namespace, dsn: str, data_dir: Path, config: Path, metrics_port: int,
                    env: dict[str, str], sim_procs: list[psutil.Process], tmp: Path, kind: str,
                    index: int) -> dict:
    key = f"{kind}-{index}"
    conn = await asyncpg.connect(dsn)
    try:
        await reset(conn)
        rows, enqueue_s = await enqueue(conn, kind, key)
        pre = await pre_checks(conn, key)
        # Not timed: statistics of the queue as the gateway will find it (not of the empty table).
        await conn.execute("ANALYZE outbound_message")
        if args.pg_stats:
            await conn.execute("SELECT pg_stat_statements_reset()")
        t_start_db: datetime = await conn.fetchval("SELECT clock_timestamp()")
        gw = subprocess.Popen([SMSGW, "run", "--config", str(config)], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(tmp / f"gateway-{key}.log", "wb"))
        profiler = None
        try:
            wait_port(metrics_port, 30)
            if args.profile:  # sampled stacks of the gateway for the whole round, `collapsed` text for flamegraphs
                profiler = subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(gw.pid), "--rate", "250",
                     "--nonblocking", "--format", "raw", "--output", str(tmp / f"profile-{key}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            t0 = time.monotonic()
            samples = [sample(0.0, 0, process_tree(gw.pid), postgres_procs(data_dir), sim_procs)]
            ok = False
            while time.monotonic() - t0 < args.time_limit:
                await asyncio.sleep(0.5)
                left = await conn.fetchval(f"SELECT count(*) FROM outbound_message WHERE {NOT_FINAL}")
                samples.append(sample(time.monotonic() - t0, rows - left, process_tree(gw.pid),
                                      postgres_procs(data_dir), sim_procs))
                if gw.poll() is not None:
                    break
                if left == 0:
                    ok = True
                    break
            metrics_text = await asyncio.to_thread(scrape, [metrics_port])
        finally:
            stop([gw], timeout=60)
            if profiler is not None:
                profiler.wait(timeout=30)
        gw_exit = gw.returncode
        last_done = await conn.fetchval("SELECT max(done_at) FROM outbound_message")
        statuses = {f"{r['status']}:{r['reason']}": r["count"] for r in await conn.fetch(
            "SELECT status, coalesce(reason, '') AS reason, count(*) FROM outbound_message GROUP BY 1, 2")}
        receipts = await conn.fetchval("SELECT count(*) FROM outbound_message WHERE receipt_stat IS NOT NULL")
        sample_bodies = [r["body"] for r in await conn.fetch(
            "SELECT body FROM outbound_message WHERE destination = ANY($1::text[]) ORDER BY destination",
            ["+12020000001", "+12020000003", "+12020000010"])]
        parked = await conn.fetchval("SELECT count(*) FROM pending_receipt")
        statements = ([{k: float(v) if isinstance(v, Decimal) else v for k, v in r.items()}
                       for r in await conn.fetch(PG_STATS)] if args.pg_stats else None)
    finally:
        await conn.close()
    run_s = (last_done - t_start_db).total_seconds() if last_done else samples[-1].at
    window = steady_window(samples, rows)
    delivered = statuses.get("delivered:delivered", 0) + statuses.get("delivered:", 0)
    all_delivered = delivered == rows == args.subscribers and receipts == rows
    return {
        "kind": kind, "round": index, "campaign_key": key, "rows": rows,
        "enqueue_s": round(enqueue_s, 3), "enqueue_rows_per_s": round(rows / enqueue_s),
        "msg_per_s": round(rows / run_s, 1) if ok else None,
        "steady_msg_per_s": (round((window[1].final - window[0].final) / (window[1].at - window[0].at), 1)
                             if window else None),
        "run_s": round(run_s, 2),
        "cpu_us_per_msg_steady": cpu_per_message(*window) if window else None,
        "cpu_cores_steady": cores(*window) if window else None,
        "cpu_us_per_msg_whole_run": cpu_per_message(samples[0], samples[-1]),
        "statuses": statuses, "receipts_recorded": receipts, "receipts_parked": parked,
        "all_delivered_with_receipt": all_delivered, "ok": ok and gw_exit == 0 and all_delivered
        and pre["without_consent"] == 0 and pre["marketing_news"] == rows,
        "pre": pre, "reading_pauses": counter_value(metrics_text, "smsgw_reading_pauses_total"),
        "gateway_exit_code": gw_exit, "sample_bodies": sample_bodies, "statements": statements,
    }


def ratio(rounds: list[dict], field: str, sub: str | None = None, base: str = "plain",
          kind: str = "personalised") -> dict[str, float | None]:
    """Median of the `kind` rounds over the median of the `base` rounds, for one figure."""
    def values(kind: str) -> list[float]:
        out = []
        for r in rounds:
            if r["kind"] != kind:
                continue
            v = r[field][sub] if sub and r[field] else (None if sub else r[field])
            if v is not None:
                out.append(v)
        return out
    plain, personal = values(base), values(kind)
    if not plain or not personal:
        return {base: None, kind: None, "ratio": None}
    p, q = statistics.median(plain), statistics.median(personal)
    return {base: round(p, 3), kind: round(q, 3), "ratio": round(q / p, 3) if p else None}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--pairs", type=int, default=2,
                    help="rounds of each kind, in turn plain / checked / personalised")
    ap.add_argument("--binds", type=int, default=2)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--receipt-delay", type=float, default=0.05)
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per round")
    ap.add_argument("--budget", type=float, default=0.10,
                    help="throughput the personalised rounds may lose against the plain ones (issue 10: 10 %%)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) after the run")
    ap.add_argument("--cap", type=int, default=0, metavar="N",
                    help="add a round per pair: personalised with the list capped at N a week (no row held)")
    ap.add_argument("--pg-stats", action="store_true",
                    help="print each round's costliest statements (pg_stat_statements, reset at the gateway's start)")
    ap.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a Postgres server setting (repeatable), e.g. session_preload_libraries=auto_explain")
    ap.add_argument("--profile", action="store_true",
                    help="record the gateway with py-spy in every round (profile-<round>.txt in the kept directory)")
    args = ap.parse_args()
    n = args.subscribers

    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-campaign-"))
    pg_settings = dict(kv.split("=", 1) for kv in args.pg_setting)
    if args.pg_stats:
        pg_settings["shared_preload_libraries"] = "pg_stat_statements"
    pg = EmbeddedPostgres(tmp / "pg", settings=pg_settings)
    procs: list[subprocess.Popen[bytes]] = []
    rounds: list[dict] = []
    try:
        pg.start()
        dsn = pg.dsn()
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            setup_s = await setup(conn, n)
            if args.pg_stats:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        finally:
            await conn.close()

        smsc_port = free_port()
        procs.append(subprocess.Popen(
            [SMSGW, "simulate-smsc", "--port", str(smsc_port), "--system-id", "bench", "--password", "benchpw",
             "--receipt-delay", str(args.receipt_delay)],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "simulator.log", "wb")))
        sim_procs = [psutil.Process(procs[-1].pid)]
        wait_port(smsc_port, 15)
        metrics_port = free_port()
        config = tmp / "gateway.toml"
        base_config = (
            f'log_level = "WARNING"\n[database]\nurl = "{dsn}"\npool_size = 4\n'
            f"[metrics]\nport = {metrics_port}\n"
            f'[smsc.bench]\nhost = "127.0.0.1"\nport = {smsc_port}\nsystem_id = "bench"\n'
            f"binds = {args.binds}\nwindow = {args.window}\ntps = 0\n"
            f'[keywords."{SC}"]\nprogram = "{PROGRAM}"\ncontact = "help@acme.example"\n'
            f'frequency = "Up to 4 msgs/week"\ndefault_list = "news"\n'
            # The list without max_per_day / max_per_week: no frequency cap.
            f'[[keywords."{SC}".lists]]\nname = "news"\nprogram = "Acme News"\nfrequency = "Up to 4 msgs/week"\n'
        )
        (tmp / "gateway-plain.toml").write_text(base_config)
        # Content checks on, every rule at its default; refuse (do not append) a missing opt-out.
        content = f'[keywords."{SC}".content]\nappend_opt_out = false\n'
        config.write_text(base_config + content)
        # --cap: the list capped at N a week (high enough that no row is held: the cost of the lookups alone).
        capped_config = tmp / "gateway-capped.toml"
        capped_config.write_text(base_config + f"max_per_week = {args.cap}\n" + content)
        env = {**os.environ, "SMSGW_SMSC__BENCH__PASSWORD": "benchpw"}
        check = await asyncio.to_thread(
            subprocess.run, [SMSGW, "content", "check", PLAIN_BODY, "--config", str(config), "--short-code", SC,
                             "--class", "marketing", "--json"], env=env, capture_output=True, text=True)
        content_check = json.loads(check.stdout) if check.stdout.strip().startswith("{") else check.stdout

        print(f"campaign: {n:,} subscribers, list news (no frequency cap), short code {SC} with content checks on"
              f" (program_name, opt_out refuse, link_shortener, shaft, max_segments); {args.pairs} rounds each,"
              f" alternated, queue truncated between rounds; binds {args.binds} window {args.window} receipts"
              f" {args.receipt_delay * 1000:g} ms after submit_sm_resp; simulator and gateway as processes;"
              f" {os.cpu_count()} cpus")
        print(f"template:   {TEMPLATE!r}")
        print(f"plain body: {PLAIN_BODY!r}  (content check of it: exit {check.returncode})")
        print(f"set-up (subscriptions, attributes, template, VACUUM ANALYZE): {setup_s:.1f} s")
        for i in range(args.pairs):
            for kind in ("plain", "checked", "personalised", *(("capped",) if args.cap else ())):
                cfg = {"plain": tmp / "gateway-plain.toml", "capped": capped_config}.get(kind, config)
                r = await run_round(args, dsn, pg.data_dir, cfg, metrics_port, env, sim_procs, tmp, kind, i + 1)
                rounds.append(r)
                cpu = r["cpu_us_per_msg_steady"] or {}
                print(f"round {len(rounds)} {kind:12s}: enqueue {r['enqueue_s']:.2f} s"
                      f" ({r['enqueue_rows_per_s']:,} rows/s); {r['msg_per_s']} msg/s over {r['run_s']} s"
                      f" (steady {r['steady_msg_per_s']}); cpu us/msg steady gateway {cpu.get('gateway')}"
                      f" postgres {cpu.get('postgres')} (background {cpu.get('postgres_background')})"
                      f" simulator {cpu.get('simulator')};"
                      f" {r['statuses']}, receipts {r['receipts_recorded']:,}, consent missing"
                      f" {r['pre']['without_consent']}, distinct bodies {r['pre']['distinct_bodies']:,}"
                      f" -> {'OK' if r['ok'] else 'FAILED'}", flush=True)
                for st in r["statements"] or []:
                    print(f"    {st['total_ms']:>9} ms {st['calls']:>7} calls {st['mean_ms']:>8} ms/call"
                          f" {st['blocks_per_call']:>8} blocks/call {st['dirtied_per_call']:>6} dirtied/call"
                          f"  {st['query']}")
    finally:
        stop(procs, timeout=60)
        pg.stop()
        if not (args.keep or args.profile) and all(r["ok"] for r in rounds) and rounds:
            shutil.rmtree(tmp, ignore_errors=True)

    figures = {
        "msg_per_s": ("msg_per_s", None),
        "steady_msg_per_s": ("steady_msg_per_s", None),
        "gateway_cpu_us_per_msg": ("cpu_us_per_msg_steady", "gateway"),
        "postgres_cpu_us_per_msg": ("cpu_us_per_msg_steady", "postgres"),
        "enqueue_s": ("enqueue_s", None),
    }
    # personalised / plain: the budget; checked / plain: the checks alone; personalised / checked: rendering alone;
    # capped / personalised: the frequency-cap lookups.
    ratios = {
        f"{kind}_vs_{base}": {name: ratio(rounds, field, sub, base=base, kind=kind)
                              for name, (field, sub) in figures.items()}
        for kind, base in (("personalised", "plain"), ("checked", "plain"), ("personalised", "checked"),
                           *((("capped", "personalised"),) if args.cap else ()))
    }
    kept = ratios["personalised_vs_plain"]["msg_per_s"]["ratio"]
    loss = None if kept is None else round(1 - kept, 3)
    all_ok = bool(rounds) and all(r["ok"] for r in rounds) and len(rounds) == (4 if args.cap else 3) * args.pairs
    within = loss is not None and loss <= args.budget
    print("ratios of the medians of the rounds of each kind:")
    for pair, values in ratios.items():
        print(f"  {pair}: " + "; ".join(f"{name} {v['ratio']}" for name, v in values.items()))
    print(f"throughput lost to rendering and checks (personalised against plain):"
          f" {None if loss is None else f'{loss * 100:.1f} %'} (budget {args.budget * 100:g} %):"
          f" {'within' if within else 'OVER or unknown'}")
    print(f"every row of every round delivered with its receipt, none not_subscribed / content_*: {all_ok}"
          f"{'' if all_ok else f' (logs in {tmp})'}")
    result = {
        "benchmark": "campaign", "ok": all_ok, "within_budget": within, "throughput_loss": loss,
        "budget": args.budget, "subscribers": n, "pairs": args.pairs, "ratios": ratios, "rounds": rounds,
        "template": TEMPLATE, "plain_body": PLAIN_BODY, "content_check_plain_body": content_check,
        "setup_s": round(setup_s, 2) if rounds else None,
        "settings": {"binds": args.binds, "window": args.window, "receipt_delay_s": args.receipt_delay,
                     "content_checks": "on (defaults, append_opt_out false)",
                     "frequency_cap": f"capped rounds: max_per_week {args.cap}" if args.cap else None,
                     "cpus": os.cpu_count(), "when": datetime.now(UTC).isoformat(timespec="seconds")},
    }
    print(json.dumps(result))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
