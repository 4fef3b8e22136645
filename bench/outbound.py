"""Outbound benchmark: N queued rows -> SMSC -> receipts recorded, measured end to end.

Starts a private Postgres, enqueues N rows with COPY, runs the SMSC simulator (or uses --smsc) and the
gateway as separate processes (`smsgw simulate-smsc`, `smsgw run`), waits until every row is final or
the time limit passes, and prints the figures; the last line is one JSON object.

    .venv/bin/python bench/outbound.py --messages 100000
    .venv/bin/python bench/outbound.py --smsc 127.0.0.1:2775 --system-id me --password pw
    .venv/bin/python bench/outbound.py --messages 20000 --id-quirk hex-resp-decimal-receipt

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


def postgres_procs(data_dir: Path) -> list[psutil.Process]:
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    master = psutil.Process(pid)
    return [master, *master.children()]


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


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


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--binds", type=int, default=2)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--tps", type=float, default=0.0, help="account TPS limit in the gateway (0 = off)")
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

    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-"))
    pg = EmbeddedPostgres(tmp / "pg")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        pg.start()
        dsn = pg.dsn()
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        await conn.close()
        enqueue_s = await enqueue(dsn, args.messages, args.body)

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
            wait_port(smsc_port, 15)
        metrics_port = free_port()
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
        gw = subprocess.Popen([SMSGW, "run", "--config", str(config)], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "gateway.log", "wb"))
        procs.append(gw)
        gw_proc = psutil.Process(gw.pid)
        pg_procs = postgres_procs(pg.data_dir)
        pg_cpu0, gw_cpu0, t0 = cpu_seconds(pg_procs), cpu_seconds([gw_proc]), time.monotonic()
        peak_rss = 0
        ok = False
        while time.monotonic() - t0 < args.time_limit:
            await asyncio.sleep(0.5)
            peak_rss = max(peak_rss, gw_proc.memory_info().rss)
            pg_procs = list({p.pid: p for p in [*pg_procs, *postgres_procs(pg.data_dir)]}.values())
            left = await conn.fetchval(
                "SELECT count(*) FROM outbound_message WHERE status IN ('queued', 'claimed', 'submitted')"
            )
            if gw.poll() is not None:
                break
            if left == 0:
                ok = True
                break
        elapsed = time.monotonic() - t0
        pg_cpu = cpu_seconds(pg_procs) - pg_cpu0
        gw_cpu = cpu_seconds([gw_proc]) - gw_cpu0
        try:
            metrics_text = await asyncio.to_thread(
                lambda: __import__("urllib.request").request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            )
        except OSError:
            metrics_text = ""
        gw.terminate()
        gw_exit = gw.wait(30)
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
        run_s = (row["last_done"] - t_start_db).total_seconds() if row["last_done"] else elapsed
        rtt = histogram_quantiles(metrics_text, "smsgw_submit_rtt_seconds", (0.5, 0.99))
        result = {
            "benchmark": "outbound",
            "ok": ok and gw_exit == 0,
            "messages": args.messages,
            "msg_per_s": round(args.messages / run_s, 1) if ok else None,
            "run_s": round(run_s, 2),
            "receipts_recorded": delivered_with_receipt,
            "all_final": not_final == 0,
            "not_final": not_final,
            "receipts_parked": parked,
            # Back-pressure episodes (the writer fell behind Postgres): each one stalls the pipeline briefly.
            "reading_pauses": counter_value(metrics_text, "smsgw_reading_pauses_total"),
            "quarantined": counter_value(metrics_text, "smsgw_quarantined_total"),
            "submit_rtt_p50_ms": None if rtt[0.5] is None else round(rtt[0.5] * 1000, 2),
            "submit_rtt_p99_ms": None if rtt[0.99] is None else round(rtt[0.99] * 1000, 2),
            "enqueue_to_submit_p50_ms": None if row["q50"] is None else round(row["q50"] * 1000, 1),
            "enqueue_to_submit_p99_ms": None if row["q99"] is None else round(row["q99"] * 1000, 1),
            "gateway_cpu_cores": round(gw_cpu / elapsed, 2),
            "postgres_cpu_cores": round(pg_cpu / elapsed, 2),
            "gateway_peak_rss_mb": round(peak_rss / 2**20, 1),
            "enqueue_copy_rows_per_s": round(args.messages / enqueue_s),
            "gateway_exit_code": gw_exit,
            "statuses": statuses,
            "settings": {
                "binds": args.binds, "window": args.window, "tps": args.tps, "receipt_delay_s": args.receipt_delay,
                "smsc": args.smsc or "simulator (separate process)", "cpus": os.cpu_count(),
                "id_quirk": args.id_quirk,
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        }
        print(f"messages {args.messages}  binds {args.binds}  window {args.window}  tps {args.tps or 'off'}")
        print(f"throughput {result['msg_per_s']} msg/s (queued -> receipt recorded) over {result['run_s']} s")
        print(f"submit rtt p50/p99 {result['submit_rtt_p50_ms']}/{result['submit_rtt_p99_ms']} ms (histogram)")
        print(f"enqueue->submit p50/p99 {result['enqueue_to_submit_p50_ms']}/{result['enqueue_to_submit_p99_ms']} ms")
        print(f"cpu cores: gateway {result['gateway_cpu_cores']}  postgres {result['postgres_cpu_cores']};"
              f" gateway peak rss {result['gateway_peak_rss_mb']} MB")
        print(f"statuses {statuses}; every row final: {not_final == 0} ({not_final} not final),"
              f" receipts recorded {delivered_with_receipt}, parked {parked}")
        if not ok:
            print(f"FAILED: not every message final after {args.time_limit} s (logs in {tmp})", file=sys.stderr)
        print(json.dumps(result))
        return 0 if result["ok"] else 1
    finally:
        stop(procs)
        pg.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
