"""kill -9 of the gateway process at random moments of a run, restarted each time.

Nothing of the killed process runs after the signal: results it had not committed are gone, its binds drop
(the kernel closes the sockets), its claimed rows stay `claimed` until their lease runs out and a live
instance's reaper queues them again. The SMSC (the simulator, in this process) outlives every kill: the
receipts it owes for the dead binds wait for the account's next bind; deliver_sm left unacknowledged are sent
again. Expected: every row final (delivered) at the end; the duplicates of one kill are the submits whose
answer the dead process never recorded: at most one window per bind (window x binds), plus whatever was
answered in the last result flush (flush_interval, 10 ms here): kept below the window by the send rate.
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
LEASE_S = 2.0


async def _claimed_by_pid(pool: asyncpg.Pool, pid: int) -> int:
    """Rows still claimed under a claim token of process `pid` (tokens are instance:pid:sequence)."""
    return int(await pool.fetchval(
        "SELECT count(*) FROM outbound_message WHERE status = 'claimed' AND claimed_by LIKE $1",
        f"%:{pid}:%", timeout=30,
    ))


async def run_gateway_kill(
    pool: asyncpg.Pool,
    dsn: str,
    workdir: Path,
    *,
    messages: int = 4000,
    kills: int = 3,
    bind_tps: float = 200.0,
    seed: int = 7,
    time_limit: float = 150.0,
) -> Figures:
    """Run `messages` rows through `smsgw run`, SIGKILL it `kills` times at random points, restart it each time."""
    rng = random.Random(seed)
    events: list[FaultEvent] = []
    started = time.monotonic()
    await enqueue_marked(pool, messages)
    sim_config = SimulatorConfig(receipt_delay=0.05, deliver_timeout=2.0, redelivery_delay=0.1)
    async with SmscSimulator(sim_config) as sim:
        config = GatewayConfig(
            dsn, sim.port, binds=BINDS, window=WINDOW, bind_tps=bind_tps, lease_seconds=LEASE_S,
        ).write(workdir / "gateway.toml")
        async with GatewayProcess(config, workdir) as gw:
            gw.start()
            # Random points of the run, by accepted submits, so that every kill hits a gateway in full flow.
            thresholds = sorted(rng.sample(range(int(messages * 0.1), int(messages * 0.85)), kills))
            for i, threshold in enumerate(thresholds):
                reached = await wait_until(lambda th=threshold: sim.stats.submits_ok >= th, time_limit / 2)
                assert reached, f"traffic stopped before kill {i}: {sim.stats}\n{gw.log_tail()}"
                await asyncio.sleep(rng.uniform(0.0, 0.25))
                assert gw.proc is not None
                pid, conns_before = gw.proc.pid, sim.stats.connections
                event = FaultEvent("kill -9", time.monotonic())
                gw.kill9()
                events.append(event)
                # The dead process's last submit_sm may still wait in the SMSC's socket buffers and be accepted a
                # moment after the kill: the fault acts until the SMSC has seen the process's binds close (it reads
                # up to the end of the stream first). Without this, a resend of such a row counted as unattributed.
                await wait_until(lambda: sim.bound() == 0, 5)
                event.until = time.monotonic()
                event.detail["claimed_at_kill"] = await _claimed_by_pid(pool, pid)
                await asyncio.sleep(rng.uniform(0.1, 0.5))  # down for a moment
                gw.start()
                ok = await wait_until(lambda e=event, c=conns_before: accepted_since(sim, e.at, new_binds_after=c)
                                      is not None, 30)
                assert ok, f"no submit accepted after restart {i}\n{gw.log_tail()}"
                first = accepted_since(sim, event.at, new_binds_after=conns_before)
                assert first is not None
                event.recovered_s = first.received_at - event.at
                # The dead instance's claims go back to the queue once their lease has run out (the new
                # instance's reaper); wait for that so that each kill's resends are its own.
                requeued = await wait_until(lambda p=pid: _none_claimed(pool, p), LEASE_S + 10)
                assert requeued, f"claims of the killed process {pid} never released\n{gw.log_tail()}"
                event.detail["claims_released_s"] = round(time.monotonic() - event.at, 3)
            done = await wait_until(lambda: _none_open(pool), time_limit)
            assert done, f"rows still open after {time_limit} s: {await table_outcome(pool)}\n{gw.log_tail()}"
            code = await gw.terminate()
            assert code == 0, gw.log_tail()
        tally = smsc_tally(sim, events)
        stats = sim.stats
    table = await table_outcome(pool)
    claimed_again = await pool.fetchval("SELECT count(*) FROM outbound_message WHERE attempts > 1", timeout=30)
    return figures(
        "gateway_kill", messages, events, tally, table, event_kind="kill -9", duplicate_bound=WINDOW * BINDS,
        wall_s=time.monotonic() - started,
        extra={
            "claimed_at_kill": [e.detail["claimed_at_kill"] for e in events],
            "claims_released_s": [e.detail["claims_released_s"] for e in events],
            "lease_s": LEASE_S,
            "binds_at_smsc": stats.binds,
            "receipts_redelivered": stats.redeliveries,
            "rows_claimed_more_than_once": claimed_again,
            "attempts_max": table.attempts_max,
        },
    )


async def _none_open(pool: asyncpg.Pool) -> bool:
    return await open_rows(pool) == 0


async def _none_claimed(pool: asyncpg.Pool, pid: int) -> bool:
    return await _claimed_by_pid(pool, pid) == 0


async def test_kill_9_of_the_gateway_loses_nothing_and_resends_at_most_a_window_per_kill(
    db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path
) -> None:
    fig = await run_gateway_kill(db_pool, db_dsn, tmp_path)
    fig.print()
    assert fig.events == 3
    assert fig.lost == 0 and fig.not_final == 0, fig
    assert fig.final_statuses == {"delivered": fig.messages}, fig
    assert fig.distinct_sent == fig.messages
    assert fig.unattributed_duplicates == 0, fig
    assert fig.max_duplicates_per_event <= WINDOW * BINDS, fig.duplicates_per_event
    assert all(r is not None and r < 15 for r in fig.recovery_s), fig.recovery_s  # process start + bind
    # Claims of a dead process wait for their lease, not longer (reaper every 0.2 s, plus polling).
    assert all(s <= LEASE_S + 3 for s in fig.extra["claims_released_s"]), fig.extra
