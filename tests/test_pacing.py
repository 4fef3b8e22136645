"""Pacing measured where it matters: the simulator's receive timestamps (statistical, generous margins;
the exact figures are in bench/pacing.py)."""

from __future__ import annotations

import asyncpg
import pytest
from gw import enqueue, running_gateway, settings_for, wait_status

from gateway.simulator import SimulatorConfig, SmscSimulator


def window_counts(times: list[float], seconds: int) -> list[int]:
    """Submits per 1-second window, skipping the first second (binds and the first claim settle)."""
    t0 = times[0] + 1.0
    return [sum(1 for t in times if t0 + k <= t < t0 + k + 1) for k in range(seconds)]


@pytest.mark.parametrize(("tps", "binds", "seconds"), [(10, 1, 3), (100, 2, 3), (1000, 2, 3)])
async def test_pacing_holds_the_configured_rate(
    db_pool: asyncpg.Pool, db_dsn: str, tps: int, binds: int, seconds: int
) -> None:
    total = tps * (seconds + 2)
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.05)) as sim:
        await enqueue(db_pool, total)
        async with running_gateway(settings_for(db_dsn, sim, tps=tps, binds=binds, window=100)):
            await sim.wait_for(lambda: sim.stats.submits_ok >= total, timeout=seconds + 30)
        times = sorted(r.received_at for r in sim.submits)
    counts = window_counts(times, seconds)
    margin = max(1, round(tps * 0.05))
    assert all(abs(c - tps) <= margin for c in counts), counts
    # Smooth, not a burst at the start of each second: no 100 ms slice carries more than twice its share.
    if tps >= 100:
        t0 = times[0] + 1.0
        slices = [sum(1 for t in times if t0 + k / 10 <= t < t0 + (k + 1) / 10) for k in range(10 * seconds)]
        assert max(slices) <= 2 * tps / 10, slices


async def test_throttling_converges_below_the_smsc_limit_without_failures(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    async with SmscSimulator(SimulatorConfig(tps_limit=200, receipt_delay=0.01)) as sim:
        await enqueue(db_pool, 1500)
        async with running_gateway(settings_for(db_dsn, sim, window=50)) as gw:
            c = await wait_status(db_pool, "delivered", 1500, timeout=60)
            rate = gw.dispatchers[0].adaptive.rate
        throttled = sim.stats.throttled
    assert c == {"delivered": 1500}
    assert throttled > 0
    # The effective rate came down from "unlimited" to the neighbourhood of the SMSC's limit.
    assert 20 <= rate <= 260, rate
