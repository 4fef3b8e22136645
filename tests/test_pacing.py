"""Pacing measured where it matters: the simulator's receive timestamps (statistical, generous margins;
the exact figures are in bench/pacing.py)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from gw import enqueue, running_gateway, settings_for, wait_status
from prometheus_client import REGISTRY

from gateway.simulator import SimulatorConfig, SmscSimulator


def window_counts(times: list[float], seconds: int) -> list[int]:
    """Submits per 1-second window, skipping the first two seconds (binds and the first claims settle; on a
    loaded CI machine the first full second once fell 11 % short)."""
    t0 = times[0] + 2.0
    return [sum(1 for t in times if t0 + k <= t < t0 + k + 1) for k in range(seconds)]


@pytest.mark.parametrize(("tps", "binds", "seconds"), [(10, 1, 3), (100, 2, 3), (1000, 2, 3)])
async def test_pacing_holds_the_configured_rate(
    db_pool: asyncpg.Pool, db_dsn: str, tps: int, binds: int, seconds: int
) -> None:
    total = tps * (seconds + 3)
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.05)) as sim:
        await enqueue(db_pool, total)
        async with running_gateway(settings_for(db_dsn, sim, tps=tps, binds=binds, window=100)):
            await sim.wait_for(lambda: sim.stats.submits_ok >= total, timeout=seconds + 30)
        times = sorted(r.received_at for r in sim.submits)
    counts = window_counts(times, seconds)
    # Generous: CI shares two cores with Postgres and the rest of the suite; bench/pacing.py has the +-2 % figures.
    # Above the rate is the pacer's fault (what a carrier penalises): no window may be over. Below it, one window can
    # be the machine's (simulator and gateway share this process; at 1,000/s a loaded box once gave 935, 978, 897):
    # the windows together must carry 90 % of the rate, and none may fall under 80 %.
    margin = max(1, round(tps * 0.1))
    assert all(c <= tps + margin for c in counts), counts
    assert sum(counts) >= 0.9 * tps * seconds and min(counts) >= 0.8 * tps - 1, counts
    # Smooth, not a burst at the start of each second: no 100 ms slice carries more than twice its share.
    if tps >= 100:
        t0 = times[0] + 2.0
        slices = [sum(1 for t in times if t0 + k / 10 <= t < t0 + (k + 1) / 10) for k in range(10 * seconds)]
        assert max(slices) <= 3 * tps / 10, slices


async def test_throttling_converges_below_the_smsc_limit_without_failures(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    async with SmscSimulator(SimulatorConfig(tps_limit=200, receipt_delay=0.01)) as sim:
        await enqueue(db_pool, 1500)
        async with running_gateway(settings_for(db_dsn, sim, window=50)) as gw:
            c = await wait_status(db_pool, "delivered", 1500, timeout=60)
            rate = gw.dispatchers[0].adaptive.rate
        throttled = sim.stats.throttled
    assert c == {"delivered": 1500}
    assert throttled > 0
    # The effective rate came down from "unlimited" to the neighbourhood of the SMSC's limit, and ops see it.
    assert 20 <= rate <= 260, rate
    assert REGISTRY.get_sample_value("smsgw_effective_rate", {"smsc": "sim"}) == pytest.approx(rate)


async def test_two_instances_split_the_account_rate(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as sim:
        base = settings_for(db_dsn, sim, tps=200)
        first = base.model_copy(update={"dispatcher": base.dispatcher.model_copy(update={"instance": "gw-a"})})
        second = base.model_copy(update={"dispatcher": base.dispatcher.model_copy(update={"instance": "gw-b"})})
        async with running_gateway(first) as a, running_gateway(second) as b:
            await sim.wait_for(lambda: a.dispatchers[0].instances == 2 and b.dispatchers[0].instances == 2, timeout=10)
            assert a.dispatchers[0].account_bucket.rate == b.dispatchers[0].account_bucket.rate == 100
        # Both deregistered when they stopped: a restarted gw-a is alone and keeps the whole rate.
        assert await db_pool.fetchval("SELECT count(*) FROM gateway_instance") == 0
        async with running_gateway(first) as a:
            await asyncio.sleep(0.5)  # a few heartbeats
            assert await db_pool.fetchval("SELECT array_agg(instance) FROM gateway_instance") == ["gw-a"]
            assert a.dispatchers[0].instances == 1 and a.dispatchers[0].account_bucket.rate == 200
