"""The scaling table: bench/outbound.py over binds x processes x window, printed as Markdown.

Each configuration is one `bench/outbound.py` run (its own private Postgres and simulator); the rounds
alternate the configurations, so a noisy neighbour slows all of them alike instead of one. The table shows the
median of the rounds and the CPU each part used in the steady part of the run.

    .venv/bin/python bench/scaling.py                          # 100,000 messages, 1 round
    .venv/bin/python bench/scaling.py --messages 50000 --rounds 3
    .venv/bin/python bench/scaling.py --configs 2x1x200,4x2x200  # binds x processes x window

The last line is one JSON object with every run's figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

OUTBOUND = Path(__file__).resolve().parent / "outbound.py"
DEFAULT_CONFIGS = "1x1x200,2x1x200,4x1x200,2x2x200,4x2x200,2x1x50,4x2x50"


def run(messages: int, binds: int, processes: int, window: int, extra: list[str]) -> dict[str, Any]:
    """One benchmark run; its JSON line (or a failure record)."""
    cmd = [sys.executable, str(OUTBOUND), "--messages", str(messages), "--binds", str(binds),
           "--processes", str(processes), "--window", str(window), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"ok": False, "error": (proc.stderr or proc.stdout)[-500:]}
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated BINDSxPROCESSESxWINDOW")
    ap.add_argument("extra", nargs="*", help="more bench/outbound.py arguments, after --")
    args = ap.parse_args()
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    results: dict[tuple[int, ...], list[dict[str, Any]]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for binds, processes, window in configs:
            res = run(args.messages, binds, processes, window, args.extra)
            results[(binds, processes, window)].append(res)
            print(f"round {r + 1}: binds {binds} processes {processes} window {window}: "
                  f"{res.get('msg_per_s')} msg/s", file=sys.stderr, flush=True)
    print("| binds | processes | window | msg/s (median) | steady msg/s | gateway cores | postgres | simulator"
          " | machine | gateway RSS MB | all final |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (binds, processes, window), runs in results.items():
        ok = [r for r in runs if r.get("ok")]
        rates = [r["msg_per_s"] for r in ok]
        steady = [r["steady_msg_per_s"] for r in ok if r.get("steady_msg_per_s")]
        cpu = ok[len(ok) // 2].get("cpu_cores_steady") or {} if ok else {}
        print(f"| {binds} | {processes} | {window} | {statistics.median(rates) if rates else 'failed'} | "
              f"{statistics.median(steady) if steady else '-'} | {cpu.get('gateway', '-')} | "
              f"{cpu.get('postgres', '-')} | {cpu.get('simulator', '-')} | {cpu.get('machine', '-')} | "
              f"{max((r['gateway_peak_rss_mb'] for r in ok), default='-')} | "
              f"{all(r.get('all_final') for r in runs)} |")
    print(json.dumps({"benchmark": "scaling", "messages": args.messages, "rounds": args.rounds,
                      "runs": {"x".join(map(str, c)): runs for c, runs in results.items()}}))
    return 0 if all(r.get("ok") for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
