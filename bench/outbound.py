"""Outbound benchmark: N queued rows -> SMSC -> receipts recorded, measured end to end.

Starts a private Postgres, enqueues N rows with COPY, runs the SMSC simulator (or uses --smsc) and the
gateway as separate processes (`smsgw simulate-smsc`, `smsgw run`), waits until every row is final or
the time limit passes, and prints the figures; the last line is one JSON object.

    .venv/bin/python bench/outbound.py --messages 100000
    .venv/bin/python bench/outbound.py --smsc 127.0.0.1:2775 --system-id me --password pw
    .venv/bin/python bench/outbound.py --messages 20000 --id-quirk hex-resp-decimal-receipt
    .venv/bin/python bench/outbound.py --processes 2 --binds 4           # `smsgw run --workers 2`
    .venv/bin/python bench/outbound.py --steady-rate 1000 --duration 30  # latency at a steady producer rate

Backlog mode (the default) enqueues every row first and measures queued -> receipt recorded. `--steady-rate`
instead inserts rows continuously (a batch every 10 ms) for `--duration` seconds and reports the queue wait
(row created -> its submit_sm_resp recorded, the gateway's `smsgw_queue_wait_seconds` histogram).

CPU is reported twice: over the whole run (process start included) and over the steady part (10 % to 90 % of
the rows final), where `gateway_cpu_cores` near 1.0 per process means the gateway is CPU-bound.

`--id-quirk` makes the simulator write ids in one base in submit_sm_resp and in the other in receipts; the
gateway gets no id setting (automatic matching), and the run must still end with every row final.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil
from processes import stop, wait_port

from gateway.db.embedded import EmbeddedPostgres, free_port
from gateway.db.migrate import migrate

REPO = Path(__file__).resolve().parent.parent
# --id-quirk -> (simulator --message-id-format, --receipt-id-format)
ID_QUIRKS = {
    "none": ("decimal", "decimal"),
    "hex-resp-decimal-receipt": ("hex", "decimal"),
    "decimal-resp-hex-receipt": ("decimal", "hex"),
}
SMSGW = str(Path(sys.executable).with_name("smsgw"))





def histogram_quantiles(metrics_text: str, name: str, qs: tuple[float, ...]) -> dict[float, float | None]:
    """Quantiles from a Prometheus histogram (summed over labels), interpolated within buckets."""
    buckets: dict[float, float] = {}
    for m in re.finditer(rf'^{name}_bucket\{{.*?le="([^"]+)".*?\}} ([0-9.e+-]+)$', metrics_text, re.M):
        le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
        buckets[le] = buckets.get(le, 0.0) + float(m.group(2))
    if not buckets:
        return dict.fromkeys(qs)
    edges = sorted(buckets)
    total = buckets[edges[-1]]
    out: dict[float, float | None] = {}
    for q in qs:
        target = q * total
        prev_edge, prev_count = 0.0, 0.0
        out[q] = None
        for edge in edges:
            count = buckets[edge]
            if count >= target:
                if edge == float("inf"):
                    out[q] = prev_edge
                else:
                    frac = 0.0 if count == prev_count else (target - prev_count) / (count - prev_count)
                    out[q] = prev_edge + (edge - prev_edge) * frac
                break
            prev_edge, prev_count = edge, count
    return out


def counter_value(metrics_text: str, name: str) -> float:
    """A counter's value summed over its labels (0 when absent)."""
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:\{{.*?\}})? ([0-9.e+-]+)$", metrics_text, re.M))


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (`smsgw run --workers N` forks its workers); [] once it is gone."""
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return []


def postgres_procs(data_dir: Path) -> list[psutil.Process]:
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    master = psutil.Process(pid)
    return [master, *master.children()]


def cpu_seconds(procs: list[psutil.Process], *, reaped: bool = True) -> float:
    """CPU seconds used so far by the live processes and by the children they have already reaped.

    The reaped children count because Postgres starts and ends processes all the time (autovacuum workers,
    a backend per connection): summing only the live ones would lose a worker's seconds when it exits between
    two samples, or count a whole run's worth of them when it starts in between.
    """
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + (t.children_user + t.children_system if reaped else 0.0)
        except psutil.Error:
            pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (every process, other users' included)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


@dataclass
class Sample:
    """CPU seconds used so far by each group of processes, and how many rows were final, at one moment."""

    at: float
    final: int
    gateway: float
    postgres: float
    simulator: float
    machine: float
    rss: int
    # Of `postgres`: the seconds not spent by a live client connection (autovacuum, checkpoints, WAL writing,
    # and connections that have ended).
    postgres_background: float = 0.0


def sample(at: float, final: int, gw: list[psutil.Process], pg: list[psutil.Process],
           sim: list[psutil.Process]) -> Sample:
    rss = 0
    for p in gw:
        try:
            rss += p.memory_info().rss
        except psutil.Error:
            pass
    pg_total = cpu_seconds(pg)
    pg_clients = cpu_seconds([p for p in pg if _is_client_backend(p)], reaped=False)
    return Sample(at, final, cpu_seconds(gw), pg_total, cpu_seconds(sim), machine_busy_seconds(), rss,
                  postgres_background=pg_total - pg_clients)


def _is_client_backend(p: psutil.Process) -> bool:
    """A Postgres process serving a connection: its title is `postgres: user db host(port) state`."""
    try:
        return "(" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def cores(a: Sample, b: Sample) -> dict[str, float]:
    """Cores used by each group between two samples."""
    dt = max(b.at - a.at, 1e-9)
    return {
        "gateway": round((b.gateway - a.gateway) / dt, 2),
        "postgres": round((b.postgres - a.postgres) / dt, 2),
        "simulator": round((b.simulator - a.simulator) / dt, 2),
        "machine": round((b.machine - a.machine) / dt, 2),
    }


def cpu_per_message(a: Sample, b: Sample) -> dict[str, float] | None:
    """CPU microseconds each part spent per row finished between two samples: less sensitive to a busy machine
    than msg/s (a process waiting for a core uses no CPU), so builds compare better by it."""
    done = b.final - a.final
    if done <= 0:
        return None
    return {
        "gateway": round((b.gateway - a.gateway) / done * 1e6, 1),
        "postgres": round((b.postgres - a.postgres) / done * 1e6, 1),
        "postgres_background": round((b.postgres_background - a.postgres_background) / done * 1e6, 1),
        "simulator": round((b.simulator - a.simulator) / done * 1e6, 1),
    }


def steady_window(samples: list[Sample], total: int) -> tuple[Sample, Sample] | None:
    """The first sample with >= 10 % of the rows final and the last with <= 90 %."""
    lo = next((s for s in samples if s.final >= 0.1 * total), None)
    hi = next((s for s in reversed(samples) if s.final <= 0.9 * total), None)
    if lo is None or hi is None or hi.at - lo.at < 1.0:
        return None
    return lo, hi


async def enqueue(dsn: str, n: int, body: str) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        t = time.perf_counter()
        records = [("12345", f"+1202{5550000 + i % 10_000_000:07d}"[:12], body) for i in range(n)]
        await conn.copy_records_to_table(
            "outbound_message", records=records, columns=["source", "destination", "body"]
        )
        return time.perf_counter() - t
    finally:
        await conn.close()


STEADY_INSERT = """
INSERT INTO outbound_message (source, destination, body)
SELECT '12345', d, $2 FROM unnest($1::text[]) AS d
"""


async def produce_steadily(dsn: str, rate: float, duration: float, body: str) -> int:
    """Insert `rate` rows per second in a batch every 10 ms for `duration` seconds; return rows inserted.

    Batches are sized from the elapsed time, so a late tick catches up instead of lowering the rate."""
    conn = await asyncpg.connect(dsn)
    loop = asyncio.get_running_loop()
    sent = 0
    try:
        t0 = loop.time()
        while (elapsed := loop.time() - t0) < duration:
            due = int(rate * elapsed) - sent
            if due > 0:
                dest = [f"+1202{5550000 + (sent + i) % 10_000_000:07d}"[:12] for i in range(due)]
                await conn.execute(STEADY_INSERT, dest, body)
                sent += due
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    return sent


def scrape(ports: list[int]) -> str:
    """The /metrics text of every worker, concatenated (the parsers sum over all series)."""
    texts = []
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                texts.append(resp.read().decode())
        except OSError:
            pass
    return "\n".join(texts)


def ms(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value * 1000, digits)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000, help="backlog mode: rows enqueued before the start")
    ap.add_argument("--binds", type=int, default=2, help="binds in all (split between --processes)")
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--processes", type=int, default=1, help="gateway processes (`smsgw run --workers N`)")
    ap.add_argument("--tps", type=float, default=0.0, help="account TPS limit in the gateway (0 = off)")
    ap.add_argument("--steady-rate", type=float, default=0.0,
                    help="msg/s a producer inserts continuously instead of a backlog (0 = backlog mode)")
    ap.add_argument("--duration", type=float, default=30.0, help="steady mode: seconds the producer runs")
    ap.add_argument("--receipt-delay", type=float, default=0.05)
    ap.add_argument("--time-limit", type=float, default=300.0)
    ap.add_argument("--smsc", help="HOST:PORT of an external SMSC instead of the simulator")
    ap.add_argument("--system-id", default="bench")
    ap.add_argument("--password", default="benchpw")
    ap.add_argument("--body", default="Your verification code is 123456. Reply STOP to opt out.")
    ap.add_argument(
        "--id-quirk", choices=sorted(ID_QUIRKS), default="none",
        help="simulator writes submit_sm_resp and receipt ids in different bases (gateway id settings untouched)",
    )
    args = ap.parse_args()
    if args.smsc and args.id_quirk != "none":
        ap.error("--id-quirk configures the simulator; it cannot be used with --smsc")
    if args.binds < args.processes:
        ap.error("--binds must be at least --processes (each worker needs a bind)")
    steady = args.steady_rate > 0

    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-"))
    pg = EmbeddedPostgres(tmp / "pg")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        pg.start()
        dsn = pg.dsn()
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        await conn.close()
        enqueue_s = 0.0 if steady else await enqueue(dsn, args.messages, args.body)

        sim_procs: list[psutil.Process] = []
        if args.smsc:
            host, port_text = args.smsc.rsplit(":", 1)
            smsc_port = int(port_text)
        else:
            host, smsc_port = "127.0.0.1", free_port()
            procs.append(subprocess.Popen(
                [SMSGW, "simulate-smsc", "--port", str(smsc_port), "--system-id", args.system_id,
                 "--password", args.password, "--receipt-delay", str(args.receipt_delay),
                 "--message-id-format", ID_QUIRKS[args.id_quirk][0],
                 "--receipt-id-format", ID_QUIRKS[args.id_quirk][1]],
                stdout=subprocess.DEVNULL, stderr=open(tmp / "simulator.log", "wb"),
            ))
            sim_procs.append(psutil.Process(procs[-1].pid))
            wait_port(smsc_port, 15)
        # Workers serve metrics on port + i: keep the next ports free of anything else we start.
        metrics_port = free_port()
        metrics_ports = [metrics_port + i for i in range(args.processes)]
        config = tmp / "gateway.toml"
        config.write_text(
            f'log_level = "WARNING"\n[database]\nurl = "{dsn}"\npool_size = 4\n'
            f"[metrics]\nport = {metrics_port}\n"
            f'[smsc.bench]\nhost = "{host}"\nport = {smsc_port}\nsystem_id = "{args.system_id}"\n'
            f"binds = {args.binds}\nwindow = {args.window}\ntps = {args.tps}\n"
        )
        env = {**os.environ, "SMSGW_SMSC__BENCH__PASSWORD": args.password}
        conn = await asyncpg.connect(dsn)
        t_start_db: datetime = await conn.fetchval("SELECT clock_timestamp()")
        # `--workers` only when asked: older builds (compared with PYTHONPATH) do not know the option.
        workers = ["--workers", str(args.processes)] if args.processes > 1 else []
        gw = subprocess.Popen([SMSGW, "run", "--config", str(config), *workers], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "gateway.log", "wb"))
        procs.append(gw)
        for port in metrics_ports:
            wait_port(port, 30)

        t0 = time.monotonic()
        first = sample(0.0, 0, process_tree(gw.pid), postgres_procs(pg.data_dir), sim_procs)
        samples = [first]
        producer = (asyncio.create_task(produce_steadily(dsn, args.steady_rate, args.duration, args.body))
                    if steady else None)
        ok = False
        # The progress count scans the table: at a million rows it costs Postgres a few hundred ms, so look less often.
        poll_s = 0.5 if args.messages <= 200_000 or steady else 3.0
        while time.monotonic() - t0 < args.time_limit:
            await asyncio.sleep(poll_s)
            row = await conn.fetchrow(
                """SELECT count(*) FILTER (WHERE status IN ('queued', 'claimed', 'submitted')) AS left,
                          count(*) AS total FROM outbound_message"""
            )
            samples.append(sample(time.monotonic() - t0, row["total"] - row["left"], process_tree(gw.pid),
                                  postgres_procs(pg.data_dir), sim_procs))
            if gw.poll() is not None:
                break
            if row["left"] == 0 and (producer is None or producer.done()):
                ok = True
                break
        inserted = await producer if producer is not None else args.messages
        metrics_text = await asyncio.to_thread(scrape, metrics_ports)
        gw.terminate()
        gw_exit = gw.wait(60)
        row = await conn.fetchrow(
            """SELECT max(done_at) AS last_done, min(submitted_at) AS first_submit,
                 percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM submitted_at - created_at)) AS q50,
                 percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM submitted_at - created_at)) AS q99
               FROM outbound_message"""
        )
        statuses = {
            f"{r['status']}:{r['reason']}": r["count"]
            for r in await conn.fetch(
                "SELECT status, coalesce(reason, '') AS reason, count(*) FROM outbound_message GROUP BY 1, 2"
            )
        }
        delivered_with_receipt = await conn.fetchval(
            "SELECT count(*) FROM outbound_message WHERE receipt_stat IS NOT NULL"
        )
        not_final = await conn.fetchval(
            "SELECT count(*) FROM outbound_message WHERE status IN ('queued', 'claimed', 'submitted')"
        )
        parked = await conn.fetchval("SELECT count(*) FROM pending_receipt")
        await conn.close()
        run_s = (row["last_done"] - t_start_db).total_seconds() if row["last_done"] else samples[-1].at
        rtt = histogram_quantiles(metrics_text, "smsgw_submit_rtt_seconds", (0.5, 0.99))
        wait = histogram_quantiles(metrics_text, "smsgw_queue_wait_seconds", (0.5, 0.99, 0.999))
        whole = cores(samples[0], samples[-1])
        window = steady_window(samples, inserted)
        steady_cores = cores(*window) if window else None
        per_message = cpu_per_message(*window) if window else None
        steady_rate = (round((window[1].final - window[0].final) / (window[1].at - window[0].at), 1)
                       if window else None)
        result = {
            "benchmark": "outbound",
            "mode": "steady" if steady else "backlog",
            "ok": ok and gw_exit == 0,
            "messages": inserted,
            "msg_per_s": round(inserted / run_s, 1) if ok and not steady else None,
            # Rows final per second between 10 % and 90 % done: the rate without start-up and tail.
            "steady_msg_per_s": steady_rate,
            "run_s": round(run_s, 2),
            "receipts_recorded": delivered_with_receipt,
            "all_final": not_final == 0,
            "not_final": not_final,
            "receipts_parked": parked,
            # Back-pressure episodes (the writer fell behind Postgres): each one stalls the pipeline briefly.
            "reading_pauses": counter_value(metrics_text, "smsgw_reading_pauses_total"),
            "quarantined": counter_value(metrics_text, "smsgw_quarantined_total"),
            "submit_rtt_p50_ms": ms(rtt[0.5]),
            "submit_rtt_p99_ms": ms(rtt[0.99]),
            "queue_wait_p50_ms": ms(wait[0.5]),
            "queue_wait_p99_ms": ms(wait[0.99]),
            "queue_wait_p999_ms": ms(wait[0.999]),
            "enqueue_to_submit_recorded_p50_ms": ms(row["q50"], 1),
            "enqueue_to_submit_recorded_p99_ms": ms(row["q99"], 1),
            "cpu_cores_whole_run": whole,
            "cpu_cores_steady": steady_cores,
            "cpu_us_per_msg_steady": per_message,
            "gateway_peak_rss_mb": round(max(s.rss for s in samples) / 2**20, 1),
            "enqueue_copy_rows_per_s": round(args.messages / enqueue_s) if enqueue_s else None,
            "gateway_exit_code": gw_exit,
            "statuses": statuses,
            "settings": {
                "binds": args.binds, "window": args.window, "processes": args.processes, "tps": args.tps,
                "steady_rate": args.steady_rate or None, "duration_s": args.duration if steady else None,
                "receipt_delay_s": args.receipt_delay,
                "smsc": args.smsc or "simulator (separate process)", "cpus": os.cpu_count(),
                "id_quirk": args.id_quirk,
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        }
        mode = f"steady {args.steady_rate:g} msg/s for {args.duration:g} s" if steady else "backlog"
        print(f"{mode}: messages {inserted}  processes {args.processes}  binds {args.binds}  window {args.window}"
              f"  tps {args.tps or 'off'}")
        print(f"throughput {result['msg_per_s']} msg/s (queued -> receipt recorded) over {result['run_s']} s;"
              f" steady part {steady_rate} msg/s")
        print(f"queue wait (created -> submit_sm_resp) p50/p99/p99.9 {result['queue_wait_p50_ms']}/"
              f"{result['queue_wait_p99_ms']}/{result['queue_wait_p999_ms']} ms;"
              f" submit rtt p50/p99 {result['submit_rtt_p50_ms']}/{result['submit_rtt_p99_ms']} ms")
        print(f"cpu cores, whole run: {whole}; steady part: {steady_cores}")
        print(f"cpu per message (steady part, microseconds): {per_message}")
        print(f"gateway peak rss {result['gateway_peak_rss_mb']} MB (all processes)")
        print(f"statuses {statuses}; every row final: {not_final == 0} ({not_final} not final),"
              f" receipts recorded {delivered_with_receipt}, parked {parked}")
        if not ok:
            print(f"FAILED: not every message final after {args.time_limit} s (logs in {tmp})", file=sys.stderr)
        print(json.dumps(result))
        return 0 if result["ok"] else 1
    finally:
        stop(procs, timeout=60)
        pg.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
