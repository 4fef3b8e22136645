"""Webhook benchmark: events per second delivered to a local receiver, and what the outbox costs the outbound
side (msg/s with webhooks on vs off, in the same run).

Starts a private Postgres, the SMSC simulator and a receiver (`--serve-receiver`: an aiohttp server on
127.0.0.1 that answers 204 without verifying anything and counts unique webhook-ids) as separate processes,
then runs the gateway (`smsgw run`) once per round:

1. outbound rounds, alternating off, on, off, on (`--rounds`): N queued rows -> SMSC -> receipts recorded; in
   the "on" rounds one endpoint wants `message.final`, so every row also writes an event and a delivery in the
   transaction of its final status, and the sender POSTs it. The rows are queued (COPY) once the daemon is up
   (its first heartbeat with a bind up); msg/s is measured from then to the last row final, events/s as unique
   ids received from then to the last delivery. `outbox` rounds (with --modes) write events and deliveries
   but run no sender: the cost of the triggers alone.
2. a drain round: N pending deliveries (distinct ordering keys) written directly, the gateway started with
   nothing to send: events/s of the sender alone (first delivery -> last).

The outbox must not cost more than 15 % of throughput: `on_off_ratio` >= 0.85. The last line is one JSON object.

    .venv/bin/python bench/webhooks.py --messages 20000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from processes import stop, wait_port

from gateway.db.embedded import EmbeddedPostgres, free_port
from gateway.db.migrate import migrate

SMSGW = str(Path(sys.executable).with_name("smsgw"))
SENDER_APART = False  # --sender process: `smsgw webhooks run` next to the daemon in the "on" rounds
SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-key").decode()
FINAL = "('delivered', 'undeliverable', 'expired', 'rejected', 'failed')"


# -- the receiver (its own process: `bench/webhooks.py --serve-receiver PORT`) ------------------------------

def serve_receiver(port: int) -> None:
    """Answer 204 to every POST, count unique webhook-ids; GET /stats -> {"unique": n, "total": n}."""
    from aiohttp import web

    ids: set[str] = set()
    total = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal total
        await request.read()
        total += 1
        ids.add(request.headers.get("webhook-id", ""))
        return web.Response(status=204)

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({"unique": len(ids), "total": total})

    async def reset(_request: web.Request) -> web.Response:
        nonlocal total
        ids.clear()
        total = 0
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def receiver_call(port: int, path: str, method: str = "GET") -> dict[str, Any]:
    data = b"" if method == "POST" else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data)
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = resp.read()
    return json.loads(body) if body else {}




# -- rounds ----------------------------------------------------------------------------------------------

def write_config(path: Path, dsn: str, smsc_port: int, args: argparse.Namespace, hook_port: int | None) -> None:
    text = (
        f'log_level = "WARNING"\n[database]\nurl = "{dsn}"\npool_size = 4\n[metrics]\nenabled = false\n'
        f'[smsc.bench]\nhost = "127.0.0.1"\nport = {smsc_port}\nsystem_id = "bench"\n'
        f"binds = {args.binds}\nwindow = {args.window}\n"
    )
    if hook_port is not None:
        text += (
            f'[webhook.bench]\nurl = "http://127.0.0.1:{hook_port}/hook"\nevents = ["message.final"]\n'
            f'secret = "{SECRET}"\nconcurrency = {args.concurrency}\n'
        )
        if args.sender == "process":
            text += "[webhooks]\nin_daemon = false\n"
    path.write_text(text)


async def reset_tables(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE outbound_message, message_part, webhook_delivery, webhook_event CASCADE")
    await conn.execute("DELETE FROM gateway_instance")
    await conn.execute("VACUUM ANALYZE outbound_message")


async def run_round(conn: asyncpg.Connection, config: Path, env: dict[str, str], log: Path, n: int,
                    mode: str, hook_port: int, time_limit: float, body: str) -> dict[str, Any]:
    await reset_tables(conn)
    receiver_call(hook_port, "/reset", "POST")
    records = [("12345", f"+1202{5550000 + i:07d}"[:12], body) for i in range(n)]
    with log.open("ab") as err:
        gw = subprocess.Popen([SMSGW, "run", "--config", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=err)
        # The senders as a process of their own (`smsgw webhooks run`), when the daemon does not run them.
        apart = (subprocess.Popen([SMSGW, "webhooks", "run", "--config", str(config)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=err)
                 if mode == "on" and SENDER_APART else None)
    ok = events_ok = False
    try:
        # The daemon is up (endpoints synced, binds up) once its first heartbeat is written: only then the rows
        # are queued, so that start-up is outside the measurement in every mode.
        t0 = time.monotonic()
        while not await conn.fetchval("SELECT count(*) FROM gateway_instance WHERE binds_up > 0"):
            if time.monotonic() - t0 > 60 or gw.poll() is not None:
                raise SystemExit(f"the gateway did not start (log {log})")
            await asyncio.sleep(0.05)
        if mode == "outbox":  # events and deliveries written by the triggers, but no sender running
            await conn.execute("INSERT INTO webhook_endpoint (name, events) VALUES ('bench', '{message.final}')"
                               " ON CONFLICT (name) DO UPDATE SET enabled = true")
        t_start_db: datetime = await conn.fetchval("SELECT clock_timestamp()")
        await conn.copy_records_to_table(
            "outbound_message", records=records, columns=["source", "destination", "body"]
        )
        t0 = time.monotonic()
        while time.monotonic() - t0 < time_limit and gw.poll() is None:
            await asyncio.sleep(0.25)
            if not ok:
                left = await conn.fetchval(f"SELECT count(*) FROM outbound_message WHERE status NOT IN {FINAL}")
                ok = left == 0
            if ok and mode in ("off", "outbox"):
                break
            if ok and mode == "on":
                events_ok = receiver_call(hook_port, "/stats")["unique"] >= n
                if events_ok:
                    break
    finally:
        stop([gw, apart], timeout=30)
    gw_exit = gw.returncode
    last_done = await conn.fetchval("SELECT max(done_at) FROM outbound_message")
    run_s = (last_done - t_start_db).total_seconds() if ok and last_done else None
    result: dict[str, Any] = {
        "mode": mode, "ok": ok and gw_exit == 0, "messages": n,
        "msg_per_s": round(n / run_s, 1) if run_s else None, "run_s": None if run_s is None else round(run_s, 2),
    }
    if mode == "on":
        stats = receiver_call(hook_port, "/stats")
        last_delivery = await conn.fetchval("SELECT max(delivered_at) FROM webhook_delivery")
        span = (last_delivery - t_start_db).total_seconds() if last_delivery else None
        result.update({
            "ok": result["ok"] and events_ok,
            "events_unique": stats["unique"], "posts": stats["total"],
            "events_per_s": round(stats["unique"] / span, 1) if span else None,
            # How far the last event trailed the last final status.
            "last_event_lag_s": round((last_delivery - last_done).total_seconds(), 2)
            if last_delivery and last_done else None,
        })
    return result


async def drain_round(conn: asyncpg.Connection, config: Path, env: dict[str, str], log: Path, n: int,
                      hook_port: int, time_limit: float) -> dict[str, Any]:
    """n events + pending deliveries written directly (a backlog, as after an endpoint outage); how fast the
    sender alone works it off."""
    await reset_tables(conn)
    receiver_call(hook_port, "/reset", "POST")
    await conn.execute(
        "INSERT INTO webhook_endpoint (name, events) VALUES ('bench', '{message.final}')"
        " ON CONFLICT (name) DO UPDATE SET enabled = true"
    )
    await conn.execute(
        "WITH e AS (INSERT INTO webhook_event (type, ordering_key, short_code, data)"
        " SELECT 'message.final', 'msg:' || g, '12345', jsonb_build_object('message_id', g, 'status', 'delivered')"
        " FROM generate_series(1, $1) g RETURNING id, ordering_key)"
        " INSERT INTO webhook_delivery (event_id, endpoint, ordering_key) SELECT id, 'bench', ordering_key FROM e", n
    )
    await conn.execute("VACUUM ANALYZE webhook_delivery")
    # The senders alone: the daemon (in_daemon) or `smsgw webhooks run` (--sender process) works the backlog off.
    command = ["webhooks", "run"] if SENDER_APART else ["run"]
    with log.open("ab") as err:
        gw = subprocess.Popen([SMSGW, *command, "--config", str(config)], env=env, stdout=subprocess.DEVNULL,
                              stderr=err)
    t0 = time.monotonic()
    ok = False
    try:
        while time.monotonic() - t0 < time_limit and gw.poll() is None:
            await asyncio.sleep(0.25)
            if receiver_call(hook_port, "/stats")["unique"] >= n:
                ok = True
                break
    finally:
        stop([gw], timeout=30)
    gw_exit = gw.returncode
    stats = receiver_call(hook_port, "/stats")
    # From the first delivery to the last: the sender's rate, without the daemon's start-up.
    first, last = await conn.fetchrow("SELECT min(delivered_at), max(delivered_at) FROM webhook_delivery")
    span = (last - first).total_seconds() if last and first and last > first else None
    return {
        "mode": "drain", "ok": ok and gw_exit == 0, "events": n, "events_unique": stats["unique"],
        "posts": stats["total"], "events_per_s": round(stats["unique"] / span, 1) if span and ok else None,
        "run_s": None if span is None else round(span, 2),
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--modes", default="off,on,off,on",
                    help="outbound rounds in this order: off (no endpoint), on (endpoint and sender), outbox (the"
                         " triggers write events and deliveries, no sender runs: the outbox's own cost)")
    ap.add_argument("--drain-events", type=int, default=20_000, help="0: no drain round")
    ap.add_argument("--binds", type=int, default=2)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32, help="the endpoint's POSTs in flight")
    ap.add_argument("--sender", choices=("daemon", "process"), default="daemon",
                    help="senders inside `smsgw run`, or apart as `smsgw webhooks run` (webhooks.in_daemon = false)")
    ap.add_argument("--receipt-delay", type=float, default=0.05)
    ap.add_argument("--time-limit", type=float, default=300.0, help="per round")
    ap.add_argument("--body", default="Your verification code is 123456. Reply STOP to opt out.")
    ap.add_argument("--serve-receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_receiver:  # handled before the event loop starts (see the end of the file)
        return 2

    global SENDER_APART
    SENDER_APART = args.sender == "process"
    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-webhooks-"))
    pg = EmbeddedPostgres(tmp / "pg")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        pg.start()
        dsn = pg.dsn()
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        smsc_port, hook_port = free_port(), free_port()
        procs.append(subprocess.Popen(
            [SMSGW, "simulate-smsc", "--port", str(smsc_port), "--system-id", "bench", "--password", "benchpw",
             "--receipt-delay", str(args.receipt_delay)],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "simulator.log", "wb"),
        ))
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--serve-receiver", str(hook_port)],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "receiver.log", "wb"),
        ))
        wait_port(smsc_port, 15)
        wait_port(hook_port, 15)
        env = {**os.environ, "SMSGW_SMSC__BENCH__PASSWORD": "benchpw"}
        configs = {"off": tmp / "off.toml", "on": tmp / "on.toml", "outbox": tmp / "off.toml"}
        write_config(configs["off"], dsn, smsc_port, args, None)
        write_config(configs["on"], dsn, smsc_port, args, hook_port)
        log = tmp / "gateway.log"

        rounds = []
        for i, mode in enumerate(m.strip() for m in args.modes.split(",")):
            if mode not in configs:
                raise SystemExit(f"--modes: unknown mode {mode!r}")
            r = await run_round(conn, configs[mode], env, log, args.messages, mode, hook_port, args.time_limit,
                                args.body)
            rounds.append(r)
            extra = f"  events/s {r['events_per_s']}  lag {r['last_event_lag_s']} s" if mode == "on" else ""
            print(f"round {i + 1} webhooks {mode:6}: {r['msg_per_s']} msg/s over {r['run_s']} s{extra}"
                  f"{'' if r['ok'] else '  FAILED'}", flush=True)
        drain = None
        if args.drain_events:
            drain = await drain_round(conn, configs["on"], env, log, args.drain_events, hook_port, args.time_limit)
            print(f"drain: {drain['events_per_s']} events/s ({drain['events']} pending deliveries, "
                  f"{drain['run_s']} s){'' if drain['ok'] else '  FAILED'}", flush=True)
        await conn.close()

        def rates(mode: str) -> list[float]:
            return [r["msg_per_s"] for r in rounds if r["mode"] == mode and r["msg_per_s"]]

        off, on, outbox = rates("off"), rates("on"), rates("outbox")
        ratio = round(statistics.mean(on) / statistics.mean(off), 3) if off and on else None
        outbox_ratio = round(statistics.mean(outbox) / statistics.mean(off), 3) if off and outbox else None
        ok = all(r["ok"] for r in rounds) and (drain is None or drain["ok"])
        result = {
            "benchmark": "webhooks",
            "ok": ok,
            "within_budget": ratio is not None and ratio >= 0.85,
            "messages_per_round": args.messages,
            "msg_per_s_off": round(statistics.mean(off), 1) if off else None,
            "msg_per_s_on": round(statistics.mean(on), 1) if on else None,
            "on_off_ratio": ratio,
            "msg_per_s_outbox_only": round(statistics.mean(outbox), 1) if outbox else None,
            "outbox_only_off_ratio": outbox_ratio,
            "events_per_s_with_traffic": round(statistics.mean(
                [r["events_per_s"] for r in rounds if r["mode"] == "on" and r.get("events_per_s")] or [0]), 1),
            "events_per_s_drain": drain["events_per_s"] if drain else None,
            "duplicate_posts": sum(r.get("posts", 0) - r.get("events_unique", 0) for r in rounds)
            + (drain["posts"] - drain["events_unique"] if drain else 0),
            "rounds": rounds,
            "drain": drain,
            "settings": {
                "binds": args.binds, "window": args.window, "concurrency": args.concurrency,
                "receipt_delay_s": args.receipt_delay, "cpus": os.cpu_count(), "sender": args.sender,
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        }
        print(f"outbound msg/s: off {result['msg_per_s_off']}  on {result['msg_per_s_on']}  ratio on/off {ratio}"
              f" ({'within' if result['within_budget'] else 'OVER'} the 15 % budget)")
        if not ok:
            print(f"FAILED: a round did not finish (logs in {tmp})", file=sys.stderr)
        print(json.dumps(result))
        return 0 if ok else 1
    finally:
        stop(procs)
        pg.stop()


if __name__ == "__main__":
    if "--serve-receiver" in sys.argv:
        serve_receiver(int(sys.argv[sys.argv.index("--serve-receiver") + 1]))
        sys.exit(0)
    sys.exit(asyncio.run(main()))
