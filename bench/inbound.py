"""Inbound benchmark: MOs injected over SMPP by the simulator, handled by the gateway's keyword engine,
replies observed back at the simulator as submit_sm.

Phase 1 sends MOs at a fixed rate (default 200 MO/s) with a keyword mix and measures the reply latency:
MO sent by the simulator -> reply submit_sm received by it. Phase 2 sends a burst as fast as possible and
measures MOs handled per second (stored, keyword applied, consent recorded, reply enqueued). The gateway runs
as its own process (`smsgw run`); the simulator runs in this process. The last line is one JSON object.

    .venv/bin/python bench/inbound.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrate import migrate
from gateway.simulator import SimulatorConfig, SmscSimulator

SMSGW = str(Path(sys.executable).with_name("smsgw"))
SHORT_CODE = "12345"
# (text, weight): STOP, HELP, JOIN and START get replies; the rest is stored and notified only.
MIX = [("STOP", 0.1), ("HELP", 0.2), ("JOIN NEWS", 0.2), ("START", 0.1), ("what are your hours?", 0.4)]
REPLYING = {"STOP", "HELP", "JOIN NEWS", "START"}



def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_config(path: Path, dsn: str, sim_port: int) -> None:
    path.write_text(
        f'log_level = "WARNING"\n[database]\nurl = "{dsn}"\n[metrics]\nenabled = false\n'
        "[dispatcher]\nflush_interval = 0.01\n"
        "[inbound]\nbatch = 500\n"
        f'[smsc.sim]\nport = {sim_port}\nsystem_id = "smsgw"\nbinds = 1\nwindow = 100\n'
        f'[keywords."{SHORT_CODE}"]\nprogram = "Bench Alerts"\ncontact = "help@bench.example"\n'
        'frequency = "Up to 4 msgs/week"\ndefault_list = "news"\n'
        f'[[keywords."{SHORT_CODE}".lists]]\nname = "news"\nprogram = "Bench News"\njoin_keywords = ["NEWS"]\n'
        'frequency = "2 msgs/week"\n'
    )


async def wait_handled(
    conn: asyncpg.Connection, n: int, timeout: float, t0: float, progress: list[int] | None = None
) -> float | None:
    """Seconds from `t0` until `n` MOs are handled, or None on timeout; `progress` gets the count each second."""
    next_mark = t0 + 1.0
    while time.monotonic() - t0 < timeout:
        handled = await conn.fetchval("SELECT count(*) FROM inbound_message WHERE handled_at IS NOT NULL")
        if progress is not None and time.monotonic() >= next_mark:
            progress.append(handled)
            next_mark += 1.0
        if handled >= n:
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    return None


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0, help="MO/s in the fixed-rate phase")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the fixed-rate phase")
    ap.add_argument("--burst", type=int, default=10_000, help="MOs in the as-fast-as-possible phase")
    ap.add_argument("--time-limit", type=float, default=120.0)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-in-"))
    pg = EmbeddedPostgres(tmp / "pg")
    gw: subprocess.Popen[bytes] | None = None
    rng = random.Random(7)
    try:
        pg.start()
        conn = await asyncpg.connect(pg.dsn())
        await migrate(conn)
        async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as sim:
            config = tmp / "gateway.toml"
            write_config(config, pg.dsn(), sim.port)
            env = {**os.environ, "SMSGW_SMSC__SIM__PASSWORD": "secret"}
            gw = subprocess.Popen(  # started once, before anything is measured
                [SMSGW, "run", "--config", str(config)], env=env, stdout=subprocess.DEVNULL,
                stderr=open(tmp / "gateway.log", "wb"),
            )
            proc = psutil.Process(gw.pid)
            await sim.wait_for(lambda: sim.bound() >= 1, timeout=30)

            # Phase 1: fixed rate, reply latency.
            sent: dict[str, tuple[float, str]] = {}
            n = int(args.rate * args.seconds)
            start = time.monotonic()
            for i in range(n):
                due = start + i / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                text = rng.choices([t for t, _ in MIX], [w for _, w in MIX])[0]
                number = f"1{2025000000 + i}"
                delivery = await sim.inject_mo(number, SHORT_CODE, text)
                if text in REPLYING:
                    sent[number] = (delivery.created_at, text)
            handled_s = await wait_handled(conn, n, args.time_limit, time.monotonic())
            await sim.wait_for(lambda: sum(1 for r in sim.submits if r.destination_addr in sent) >= len(sent),
                               timeout=30)
            first_reply: dict[str, float] = {}
            for rec in sim.submits:
                if rec.destination_addr in sent and rec.destination_addr not in first_reply:
                    first_reply[rec.destination_addr] = rec.received_at
            latencies = [(first_reply[num] - t0) * 1000 for num, (t0, _) in sent.items() if num in first_reply]
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)

            # Phase 2: as fast as possible.
            before = await conn.fetchval("SELECT count(*) FROM inbound_message")
            c0 = proc.cpu_times()
            t0 = time.monotonic()
            for i in range(args.burst):
                text = rng.choices([t for t, _ in MIX], [w for _, w in MIX])[0]
                await sim.inject_mo(f"1{3025000000 + i}", SHORT_CODE, text)
            progress: list[int] = []
            burst_s = await wait_handled(conn, before + args.burst, args.time_limit, t0, progress)
            c1 = proc.cpu_times()
            burst_cpu = (c1.user + c1.system) - (c0.user + c0.system)
            statuses = dict(await conn.fetch("SELECT intent, count(*) FROM inbound_message GROUP BY 1"))
            sim_stats = {"redeliveries": sim.stats.redeliveries, "deliver_timeouts": sim.stats.deliver_timeouts,
                         "mos_acked": sim.stats.mos_acked}
            replies = await conn.fetchval("SELECT count(*) FROM outbound_message WHERE inbound_message_id IS NOT NULL")
            gw.terminate()
            exit_code = await asyncio.to_thread(gw.wait, 30)
        await conn.close()
        result = {
            "benchmark": "inbound",
            "ok": handled_s is not None and burst_s is not None and exit_code == 0 and len(latencies) == len(sent),
            "mo_per_s": round(args.burst / burst_s, 1) if burst_s else None,
            "reply_p50_ms": None if p50 is None else round(p50, 1),
            "reply_p99_ms": None if p99 is None else round(p99, 1),
            "replies_measured": len(latencies),
            "fixed_rate_mo_per_s": args.rate,
            "fixed_rate_mos": n,
            "burst_mos": args.burst,
            "burst_gateway_cpu_cores": round(burst_cpu / burst_s, 2) if burst_s else None,
            "burst_handled_each_second": [p - before for p in progress],
            "intents": statuses,
            "replies_enqueued": replies,
            "gateway_exit_code": exit_code,
            "simulator": sim_stats,
            "settings": {
                "mix": MIX, "binds": 1, "window": 100, "cpus": os.cpu_count(), "simulator": "in the benchmark process",
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        }
        print(f"fixed rate {args.rate} MO/s for {args.seconds} s: reply latency p50 {result['reply_p50_ms']} ms,"
              f" p99 {result['reply_p99_ms']} ms over {len(latencies)} replies")
        print(f"burst of {args.burst} MOs: {result['mo_per_s']} MO/s handled,"
              f" gateway {result['burst_gateway_cpu_cores']} cores")
        print(f"intents {statuses}; replies enqueued {replies}")
        print(json.dumps(result))
        return 0 if result["ok"] else 1
    finally:
        if gw is not None and gw.poll() is None:
            gw.kill()
        pg.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
