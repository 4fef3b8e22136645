"""Route skew (issue 7, item 7): most rows routed to a slow SMSC with a short lease. Before the fix the router
claimed by the free room of all SMSCs together and handed every claimed row to its SMSC afterwards, so the slow
SMSC's buffer grew past what it could send within the lease: rows were reaped while still waiting, claimed and
sent again (duplicates at the SMSC), and ended `failed / lease_expired_max_attempts` although accepted."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import pytest
from gw import ENQUEUE, running_gateway, wait_final

from gateway.settings import Settings, load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator

SLOW_TPS = 50
LEASE = 4.0
SLOW_ROWS = 300  # 6 s of sending at 50/s: longer than the lease
FAST_ROWS = 300


def skew_settings(dsn: str, slow_port: int, fast_port: int, by: str) -> Settings:
    smsc = {"system_id": "smsgw", "password": "secret", "window": 20, "reconnect_min": 0.05, "reconnect_max": 0.3,
            "response_timeout": 2.0}
    return load_settings(
        None,
        database={"url": dsn},
        smsc={"uk": {**smsc, "port": slow_port, "tps": SLOW_TPS}, "fast": {**smsc, "port": fast_port}},
        # By prefix the claim itself leaves the full SMSC's rows queued (Router.blocked_rules); by source it
        # cannot tell them apart, so they are claimed and handed back at once to wait (reason smsc_busy).
        route=[{"smsc": ["uk"], **({"destination_prefix": ["44"]} if by == "prefix" else {"source": ["777"]})},
               {"smsc": ["fast"]}],
        dispatcher={"flush_interval": 0.01, "poll_interval": 0.2, "maintenance_interval": 0.2, "retry_base": 0.05,
                    "lease_seconds": LEASE, "max_attempts": 3, "shutdown_timeout": 5},
        metrics={"enabled": False},
    )


@pytest.mark.parametrize("by", ["prefix", "source"])
async def test_slow_route_gets_each_row_once_and_does_not_hold_up_the_fast_one(
    db_pool: asyncpg.Pool, db_dsn: str, by: str
) -> None:
    uk = [f"+4477009{i:05d}" for i in range(SLOW_ROWS)]
    us = [f"+1202555{i:04d}" for i in range(FAST_ROWS)]
    # Interleaved, UK first in each pair: a claim in queue order always meets slow rows first.
    dest = [d for pair in zip(uk, us, strict=True) for d in pair]
    n = len(dest)
    sources = ["777" if d.startswith("+44") else "12345" for d in dest]
    await db_pool.execute(ENQUEUE, sources, dest, ["skew"] * n, [None] * n, [0] * n)
    slow_cfg = SimulatorConfig(receipt_delay=0.01, tps_limit=SLOW_TPS * 1.2)
    async with SmscSimulator(slow_cfg) as slow, SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as fast:
        loop = asyncio.get_running_loop()
        async with running_gateway(skew_settings(db_dsn, slow.port, fast.port, by)):
            t0 = loop.time()
            assert await fast.wait_for(lambda: fast.stats.submits_ok >= FAST_ROWS, timeout=30)
            fast_done = loop.time() - t0
            c = await wait_final(db_pool, timeout=40)
            slow_done = loop.time() - t0
    assert c == {"delivered": n}, c
    # Every row sent exactly once, each to the SMSC of its route.
    per_dest = Counter(r.destination_addr for r in slow.submits) + Counter(r.destination_addr for r in fast.submits)
    assert set(per_dest.values()) == {1} and len(per_dest) == n
    assert {r.destination_addr[:2] for r in slow.submits} == {"44"}
    rows = await db_pool.fetch("SELECT reason, max(attempts) AS attempts, count(*) FROM outbound_message GROUP BY 1")
    assert [(r["reason"], r["attempts"]) for r in rows] == [("delivered", 1)]
    # The fast SMSC needs well under a second for its rows alone; the slow one needs SLOW_ROWS / SLOW_TPS.
    assert fast_done < 2.5, (fast_done, slow_done)
    assert slow_done >= SLOW_ROWS / SLOW_TPS * 0.9
