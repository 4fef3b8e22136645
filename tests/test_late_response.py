"""A submit_sm_resp that comes after the response timeout on a bind that is still fine (issue 7, item 8). Before,
the session dropped it as unmatched and the message was sent again; now it is kept for a grace period and
recorded. The row stays claimed meanwhile: its lease (shorter here than timeout + grace) is renewed."""

from __future__ import annotations

from collections import Counter

import asyncpg
import pytest
from gw import enqueue, running_gateway, settings_for, wait_final

from gateway.simulator import SimulatorConfig, SmscSimulator

ROWS = 5


@pytest.mark.parametrize(("grace", "sent_once"), [(None, True), (0.0, False)])
async def test_late_submit_sm_resp_is_recorded_not_resent(
    db_pool: asyncpg.Pool, db_dsn: str, grace: float | None, sent_once: bool
) -> None:
    # Responses 2.5 s after each submit_sm; the timeout is 1.5 s (grace: another 1.5 s); the lease only 2 s.
    async with SmscSimulator(SimulatorConfig(response_delay=2.5, receipt_delay=0.01)) as sim:
        await enqueue(db_pool, ROWS)
        settings = settings_for(db_dsn, sim, response_timeout=1.5, late_response_grace=grace, window=ROWS)
        settings = settings.model_copy(
            update={"dispatcher": settings.dispatcher.model_copy(update={"lease_seconds": 2.0, "max_attempts": 2})}
        )
        async with running_gateway(settings):
            if sent_once:
                c = await wait_final(db_pool, timeout=20)
            else:
                await sim.wait_for(lambda: sim.stats.submits_ok >= 2 * ROWS, timeout=20)
        per_dest = Counter(r.destination_addr for r in sim.submits)
    if sent_once:
        assert c == {"delivered": ROWS}
        assert set(per_dest.values()) == {1}
        rows = await db_pool.fetch("SELECT attempts, reason FROM outbound_message")
        assert {(r["attempts"], r["reason"]) for r in rows} == {(1, "delivered")}
    else:  # without the grace (the behaviour before): every message is sent again
        assert min(per_dest.values()) >= 2
