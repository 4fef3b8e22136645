"""The SMSC drops every connection (TCP reset, what it had queued to write is lost) every few seconds of a run.

The gateway re-binds with back-off and sends again what was not answered; the simulator re-sends the receipts
that were in flight on the dropped links to the next bind of the account. Expected: every row delivered,
nothing lost, and per drop at most one window per bind sent again: the submits the SMSC had accepted but
not yet answered when it dropped the link come twice (their answers died with the connection).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import asyncpg
import pytest
from harness import (
    FaultEvent,
    Figures,
    GatewayConfig,
    GatewayProcess,
    accepted_since,
    enqueue_marked,
    figures,
    open_rows,
    smsc_tally,
    table_outcome,
    wait_until,
)

from gateway.simulator import SimulatorConfig, SmscSimulator

pytestmark = pytest.mark.chaos

BINDS = 2
WINDOW = 20


async def run_smsc_drops(
    pool: asyncpg.Pool,
    dsn: str,
    workdir: Path,
    *,
    messages: int = 4000,
    every_s: float = 1.5,
    bind_tps: float = 200.0,
    seed: int = 11,
    time_limit: float = 120.0,
) -> Figures:
    """Run `messages` rows through `smsgw run` while the SMSC resets every connection every ~`every_s` s."""
    rng = random.Random(seed)
    events: list[FaultEvent] = []
    started = time.monotonic()
    await enqueue_marked(pool, messages)
    # Answers take 20 ms, as at a real carrier: a drop then catches submits the SMSC has accepted but not yet
    # answered (their receipts still come), the ones the gateway must send again.
    sim_config = SimulatorConfig(receipt_delay=0.05, response_delay=0.02, deliver_timeout=2.0, redelivery_delay=0.1)
    async with SmscSimulator(sim_config) as sim:
        config = GatewayConfig(dsn, sim.port, binds=BINDS, window=WINDOW, bind_tps=bind_tps).write(
            workdir / "gateway.toml")
        async with GatewayProcess(config, workdir) as gw:
            gw.start()
            up = await wait_until(lambda: sim.stats.submits_ok > 0, 30)
            assert up, f"gateway never sent\n{gw.log_tail()}"
            # Drop on a timer while most of the run is still ahead; the last rows go through undisturbed.
            while sim.stats.submits_ok < messages * 0.85:
                await asyncio.sleep(every_s * rng.uniform(0.7, 1.3))
                if sim.stats.submits_ok >= messages * 0.85:
                    break
                conns_before = sim.stats.connections
                event = FaultEvent("smsc drop", time.monotonic(), detail={"connections": sim.bound()})
                sim.disconnect_all()
                events.append(event)
                ok = await wait_until(lambda e=event, c=conns_before: accepted_since(sim, e.at, new_binds_after=c)
                                      is not None, 30)
                assert ok, f"no submit accepted after drop {len(events)}\n{gw.log_tail()}"
                first = accepted_since(sim, event.at, new_binds_after=conns_before)
                assert first is not None
                event.recovered_s = first.received_at - event.at
                assert len(events) < 100, "the run does not progress"
            done = await wait_until(lambda: _none_open(pool), time_limit)
            assert done, f"rows still open after {time_limit} s: {await table_outcome(pool)}\n{gw.log_tail()}"
            code = await gw.terminate()
            assert code == 0, gw.log_tail()
        tally = smsc_tally(sim, events)
        stats = sim.stats
    table = await table_outcome(pool)
    return figures(
        "smsc_drops", messages, events, tally, table, event_kind="SMSC drop (all links reset)",
        duplicate_bound=WINDOW * BINDS, wall_s=time.monotonic() - started,
        extra={
            "binds_at_smsc": stats.binds,
            "receipts_redelivered": stats.redeliveries,
            "receipts_acked": stats.receipts_acked,
            "attempts_max": table.attempts_max,
        },
    )


async def _none_open(pool: asyncpg.Pool) -> bool:
    return await open_rows(pool) == 0


async def test_smsc_dropping_the_links_every_few_seconds_loses_nothing(
    db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path
) -> None:
    fig = await run_smsc_drops(db_pool, db_dsn, tmp_path)
    fig.print()
    assert fig.events >= 4, fig.events
    assert fig.lost == 0 and fig.not_final == 0, fig
    assert fig.final_statuses == {"delivered": fig.messages}, fig
    assert fig.distinct_sent == fig.messages
    assert fig.unattributed_duplicates == 0, fig
    assert fig.max_duplicates_per_event <= WINDOW * BINDS, fig.duplicates_per_event
    # Re-bind within the back-off (reconnect_min 0.05 s, reconnect_max 0.5 s) plus a claim round trip.
    assert all(r is not None and r < 3.0 for r in fig.recovery_s), fig.recovery_s
    assert fig.extra["binds_at_smsc"] == BINDS * (fig.events + 1), fig.extra  # one re-bind per link per drop
