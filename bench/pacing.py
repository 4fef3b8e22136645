"""Pacing benchmark: how exactly the gateway holds a configured rate, measured at the SMSC.

For each configured rate (10, 100, 1,000 TPS and unlimited) the gateway (`smsgw run`, its own process) sends
from a queue that never runs dry, and the simulator (in this process) timestamps every submit_sm it receives.
Per rate: the 1-second window counts after the first second (min / median / max) and the share of windows
within +-2 % of the rate. Then the simulator throttles at a limit (ESME_RTHROTTLED above it) with the gateway
unlimited: the accepted rate it settles at, and whether any message failed. The last line is one JSON object.

    .venv/bin/python bench/pacing.py
    .venv/bin/python bench/pacing.py --seconds 20 --rates 10,100,1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrate import migrate
from gateway.simulator import SimulatorConfig, SmscSimulator

SMSGW = str(Path(sys.executable).with_name("smsgw"))


def windows(times: list[float], seconds: int) -> list[int]:
    if not times:
        return []
    t0 = times[0] + 1.0
    counts = [0] * seconds
    for t in times:
        k = int(t - t0) if t >= t0 else -1
        if 0 <= k < seconds:
            counts[k] += 1
    return counts


async def run_gateway(tmp: Path, dsn: str, sim: SmscSimulator, *, tps: float, binds: int, seconds: float,
                      total: int, label: str) -> tuple[list[float], int]:
    """Run the gateway until the simulator saw `total` accepted submits or `seconds` + margin passed."""
    config = tmp / f"gateway-{label}.toml"
    config.write_text(
        f'log_level = "WARNING"\n[database]\nurl = "{dsn}"\n[metrics]\nenabled = false\n'
        f'[smsc.sim]\nport = {sim.port}\nsystem_id = "smsgw"\nbinds = {binds}\nwindow = 100\ntps = {tps}\n'
    )
    env = {**os.environ, "SMSGW_SMSC__SIM__PASSWORD": "secret"}
    start_index = len(sim.submits)
    proc = subprocess.Popen(  # started before anything is measured
        [SMSGW, "run", "--config", str(config)], env=env, stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"gateway-{label}.log", "wb"),
    )
    try:
        deadline = time.monotonic() + seconds + 30
        while time.monotonic() < deadline:
            accepted = sum(1 for r in sim.submits[start_index:] if r.status == 0)
            if accepted >= total:
                break
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    times = sorted(r.received_at for r in sim.submits[start_index:] if r.status == 0)
    return times, proc.returncode


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="10,100,1000", help="comma-separated TPS values")
    ap.add_argument("--seconds", type=int, default=10, help="measured 1-second windows per rate")
    ap.add_argument("--binds", type=int, default=2)
    ap.add_argument("--throttle-limit", type=float, default=300.0)
    ap.add_argument("--unlimited-messages", type=int, default=30_000)
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]

    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-pacing-"))
    pg = EmbeddedPostgres(tmp / "pg")
    per_rate: dict[str, dict[str, object]] = {}
    try:
        pg.start()
        conn = await asyncpg.connect(pg.dsn())
        await migrate(conn)

        async def fill(n: int) -> None:
            await conn.execute("DELETE FROM outbound_message")
            await conn.copy_records_to_table(
                "outbound_message",
                records=[("12345", f"+1202555{i % 10000:04d}", "pacing test") for i in range(n)],
                columns=["source", "destination", "body"],
            )

        async with SmscSimulator(SimulatorConfig(receipt_delay=0.05)) as sim:
            for tps in rates:
                total = int(tps * (args.seconds + 2))
                await fill(total)
                times, code = await run_gateway(tmp, pg.dsn(), sim, tps=tps, binds=args.binds,
                                                seconds=args.seconds + 2, total=total, label=f"{tps:g}")
                counts = windows(times, args.seconds)
                within = [c for c in counts if abs(c - tps) <= tps * 0.02]
                per_rate[f"{tps:g}"] = {
                    "windows": counts,
                    "min": min(counts) if counts else None,
                    "median": statistics.median(counts) if counts else None,
                    "max": max(counts) if counts else None,
                    "share_within_2pct": round(len(within) / len(counts), 3) if counts else 0.0,
                    "gateway_exit_code": code,
                }
            await fill(args.unlimited_messages)
            times, code = await run_gateway(tmp, pg.dsn(), sim, tps=0, binds=args.binds, seconds=args.seconds,
                                            total=args.unlimited_messages, label="unlimited")
            counts = windows(times, max(1, int(times[-1] - times[0]) - 1) if times else 1)
            per_rate["unlimited"] = {
                "sent": len(times),
                "rate": round(len(times) / (times[-1] - times[0]), 1) if len(times) > 1 else None,
                "windows": counts,
                "gateway_exit_code": code,
            }

        # Throttling: the SMSC refuses above its limit; the gateway (unlimited) must settle near it, losing nothing.
        throttle_total = int(args.throttle_limit * (args.seconds + 2))
        await fill(throttle_total)
        async with SmscSimulator(SimulatorConfig(receipt_delay=0.05, tps_limit=args.throttle_limit)) as sim:
            times, code = await run_gateway(tmp, pg.dsn(), sim, tps=0, binds=args.binds, seconds=args.seconds * 3,
                                            total=throttle_total, label="throttled")
            throttled = sim.stats.throttled
        counts = windows(times, max(1, int(times[-1] - times[0]) - 1) if times else 1)
        failed = await conn.fetchval("SELECT count(*) FROM outbound_message WHERE status IN ('failed', 'rejected')")
        await conn.close()
        held = counts[len(counts) // 2 :] or counts
        throttle = {
            "smsc_limit": args.throttle_limit,
            "accepted_windows": counts,
            "rate_held_median": statistics.median(held) if held else None,
            "throttled_answers": throttled,
            "failed_messages": failed,
            "gateway_exit_code": code,
        }
    finally:
        pg.stop()

    shares = [v["share_within_2pct"] for k, v in per_rate.items() if k != "unlimited"]
    result = {
        "benchmark": "pacing",
        "min_share_within_2pct": min(shares) if shares else None,
        "per_rate": per_rate,
        "throttle": throttle,
        "settings": {"binds": args.binds, "window": 100, "seconds": args.seconds, "burst": 1,
                     "simulator": "in the benchmark process", "cpus": os.cpu_count(),
                     "when": datetime.now(UTC).isoformat(timespec="seconds")},
    }
    print(f"{'rate':>10} {'min':>6} {'median':>7} {'max':>6} {'within 2%':>10}")
    for k, v in per_rate.items():
        if k != "unlimited":
            print(f"{k:>10} {v['min']:>6} {v['median']:>7} {v['max']:>6} {v['share_within_2pct']:>10.0%}")
    print(f"unlimited: {per_rate['unlimited']['rate']} msg/s submitted")
    print(f"throttled at {args.throttle_limit}/s: held {throttle['rate_held_median']}/s,"
          f" {throttle['throttled_answers']} throttled answers, {throttle['failed_messages']} failed")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
