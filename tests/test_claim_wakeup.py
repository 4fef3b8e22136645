"""A NOTIFY that arrives while a claim is in flight is not lost.

Before the fix the claimer forgot it when that claim came back short, and the row waited for the next wake-up
from elsewhere: an idle bind's (about every second) or the fallback poll. The racing claim must find nothing:
a claim that hands rows to a dispatcher wakes the claimer again through the sends, which hides the loss. Each
round would pass by luck without the fix only if an idle bind happened to wake the claimer in time (about
half the time within the bound below), so five rounds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from gw import ENQUEUE, running_gateway, settings_for, wait_status

from gateway.simulator import SmscSimulator

_POLL_S = 30.0  # the fallback poll: far longer than the test waits
_ROUNDS = 5
_BOUND_S = 0.5  # a claim round trip, with room for a slow CI machine; an idle bind wakes about every 1 s


async def test_a_row_committed_during_an_empty_claim_is_claimed_at_once(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    async with SmscSimulator() as sim:
        base = settings_for(db_dsn, sim)
        settings = base.model_copy(
            update={"dispatcher": base.dispatcher.model_copy(update={"poll_interval": _POLL_S})}
        )
        async with running_gateway(settings) as gw:
            router = gw.router
            assert router is not None
            original = router._claim
            armed: str | None = None
            committed_at: dict[str, float] = {}
            claimed_at: dict[str, float] = {}

            async def claim_then_insert(*args: Any) -> Any:
                nonlocal armed
                rows = await original(*args)
                for _, record in rows:
                    claimed_at.setdefault(record["body"], time.monotonic())
                if armed is not None and not rows:
                    # Committed after this claim's snapshot: only its NOTIFY, arriving now, announces it.
                    body, armed = armed, None
                    before = router._wakes
                    await db_pool.execute(ENQUEUE, ["12345"], ["+12025550100"], [body], [None], [0])
                    committed_at[body] = time.monotonic()
                    async with asyncio.timeout(5):
                        while router._wakes == before:  # noqa: ASYNC110 (the wake counter has no event)
                            await asyncio.sleep(0.002)
                return rows

            router._claim = claim_then_insert  # type: ignore[method-assign]
            for n in range(_ROUNDS):
                await asyncio.sleep(0.2)  # the claimer is idle again
                armed = f"round {n}"
                router.wake()  # a claim over the empty queue, during which the row is committed
                final = await wait_status(db_pool, "delivered", n + 1, timeout=5)
                assert final.get("delivered") == n + 1, final
    assert sorted(committed_at) == [f"round {n}" for n in range(_ROUNDS)], "the race was not staged every round"
    waits = {body: round(claimed_at[body] - committed_at[body], 3) for body in committed_at}
    assert all(w < _BOUND_S for w in waits.values()), waits
    assert len(sim.submits) == _ROUNDS
