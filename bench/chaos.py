"""Fault benchmark: the chaos suite (tests/chaos/) at full size, with its figures.

Each scenario is a function in `SCENARIOS` that gets a fresh migrated database (or its own cluster) and
returns a dict of figures: messages, faults injected, submit_sm seen at the SMSC, distinct rows sent,
duplicates (total, per fault, max, the bound), lost, final statuses, recovery times, wall time. The scenario
code is the one the tests run (tests/chaos/test_*.py `run_*` functions) with bigger sizes; new scenarios (two
instances on one database, say) are one more entry in `SCENARIOS`.

    .venv/bin/python bench/chaos.py                      # every scenario, full size (20,000 messages, 5 kills...)
    .venv/bin/python bench/chaos.py --quick              # the CI sizes
    .venv/bin/python bench/chaos.py --only gateway_kill half_open

Prints a table, then one JSON line: {"benchmark": "chaos", "ok": ..., "scenarios": {name: figures}}.
"ok" means every row of every scenario ended delivered, nothing was lost, no duplicate was unexplained and
each fault's duplicates stayed within its bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
for _folder in (REPO / "tests", REPO / "tests" / "chaos"):  # the harness and the scenario runners
    sys.path.insert(0, str(_folder))

from harness import Figures  # noqa: E402
from test_gateway_kill import run_gateway_kill  # noqa: E402
from test_half_open import run_half_open  # noqa: E402
from test_postgres_restart import run_postgres_restart  # noqa: E402
from test_smsc_drops import run_smsc_drops  # noqa: E402

from gateway.db.embedded import EmbeddedPostgres  # noqa: E402
from gateway.db.migrate import migrate  # noqa: E402


@dataclass
class Context:
    """What a scenario gets: a shared cluster for fresh databases, a scratch folder, the size wanted."""

    cluster: EmbeddedPostgres
    workdir: Path
    quick: bool
    _databases: int = 0

    async def new_database(self) -> tuple[asyncpg.Pool, str]:
        """A fresh, migrated database and a small pool on it (the caller closes the pool)."""
        self._databases += 1
        name = f"chaos_{self._databases}"
        admin = await asyncpg.connect(self.cluster.dsn("postgres"), timeout=30)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"', timeout=120)
        finally:
            await admin.close()
        dsn = self.cluster.dsn(name)
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return await asyncpg.create_pool(dsn, min_size=1, max_size=4, timeout=30), dsn

    def folder(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


async def gateway_kill(ctx: Context) -> Figures:
    pool, dsn = await ctx.new_database()
    try:
        if ctx.quick:
            return await run_gateway_kill(pool, dsn, ctx.folder("gateway_kill"))
        return await run_gateway_kill(pool, dsn, ctx.folder("gateway_kill"), messages=20_000, kills=5,
                                      bind_tps=300.0, time_limit=300.0)
    finally:
        await pool.close()


async def smsc_drops(ctx: Context) -> Figures:
    pool, dsn = await ctx.new_database()
    try:
        if ctx.quick:
            return await run_smsc_drops(pool, dsn, ctx.folder("smsc_drops"))
        return await run_smsc_drops(pool, dsn, ctx.folder("smsc_drops"), messages=20_000, every_s=3.0,
                                    bind_tps=300.0, time_limit=300.0)
    finally:
        await pool.close()


async def half_open(ctx: Context) -> Figures:
    pool, dsn = await ctx.new_database()
    try:
        if ctx.quick:
            return await run_half_open(pool, dsn, ctx.folder("half_open"))
        stalls = [(3.0, "resume"), (3.0, "abort"), (1.5, "resume"), (5.0, "resume"), (3.0, "abort"),
                  (3.0, "resume")]
        return await run_half_open(pool, dsn, ctx.folder("half_open"), messages=10_000, stalls=stalls,
                                   bind_tps=200.0, time_limit=300.0)
    finally:
        await pool.close()


async def postgres_restart(ctx: Context) -> Figures:
    if ctx.quick:
        return await run_postgres_restart(ctx.folder("postgres_restart"))
    return await run_postgres_restart(ctx.folder("postgres_restart"), messages=10_000, outage_s=5.0, mos=100,
                                      bind_tps=200.0, time_limit=300.0)


# name -> scenario. Each returns `harness.Figures`; the order is the order they run in.
SCENARIOS: dict[str, Callable[[Context], Awaitable[Figures]]] = {
    "gateway_kill": gateway_kill,
    "smsc_drops": smsc_drops,
    "half_open": half_open,
    "postgres_restart": postgres_restart,
}


def scenario_ok(fig: Figures) -> bool:
    """Every row delivered, nothing lost, every duplicate explained by a fault and within that fault's bound."""
    return (
        fig.lost == 0
        and fig.not_final == 0
        and fig.final_statuses == {"delivered": fig.messages}
        and fig.unattributed_duplicates == 0
        and fig.max_duplicates_per_event <= fig.duplicate_bound_per_event
    )


def print_table(results: dict[str, dict[str, Any]]) -> None:
    head = (f"{'scenario':<17}{'msgs':>7}{'faults':>7}{'submit_sm':>10}{'sent':>7}{'dups':>6}{'max/ev':>7}"
            f"{'bound':>6}{'lost':>5}{'recover max s':>14}{'wall s':>8}  ok")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<17} failed: {r['error']}")
            continue
        print(f"{name:<17}{r['messages']:>7}{r['events']:>7}{r['submit_sm']:>10}{r['distinct_sent']:>7}"
              f"{r['duplicates']:>6}{r['max_duplicates_per_event']:>7}{r['duplicate_bound_per_event']:>6}"
              f"{r['lost']:>5}{r['recovery_max_s'] or 0:>14.3f}{r['wall_s']:>8.1f}  {r['ok']}")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the CI sizes (what tests/chaos runs)")
    ap.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="run only these scenarios")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="smsgw-chaos-"))
    cluster = EmbeddedPostgres(workdir / "pg", log_file=workdir / "postgres.log")
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    await asyncio.to_thread(cluster.start)
    try:
        ctx = Context(cluster, workdir, args.quick)
        for name, scenario in SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            print(f"== {name}", flush=True)
            try:
                fig = await scenario(ctx)
            except Exception as exc:  # one scenario failing must not hide the others' figures
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "ok": False}
                continue
            fig.print()
            results[name] = {**fig.as_dict(), "ok": scenario_ok(fig)}
    finally:
        await asyncio.to_thread(cluster.stop)
    print()
    print_table(results)
    ok = bool(results) and all(r.get("ok") for r in results.values())
    print(json.dumps({
        "benchmark": "chaos",
        "ok": ok,
        "size": "quick" if args.quick else "full",
        "wall_s": round(time.monotonic() - started, 1),
        "cpus": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "logs": str(workdir),
        "scenarios": results,
    }, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
