"""Postgres stops mid-run and starts again (a restart, a fail-over): the gateway process keeps running.

Extends tests/test_daemon.py::test_postgres_restart_mid_run_loses_nothing (copied here, with the daemon as
its own process and the SMSC side counted). What must hold:

- the binds are kept: the database outage is no reason to re-bind (the simulator counts binds and connections);
- receipts and MOs are not acknowledged until stored: MOs injected while the server is down, and receipts
  first sent then, get their deliver_sm_resp only after it is back (the simulator stamps `acked_at`);
- the gateway resumes within 5 s of the database coming back (first row marked delivered after that);
- nothing is lost, and an outage shorter than the lease sends nothing twice.
"""

from __future__ import annotations

import asyncio
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

from gateway.db.embedded import EmbeddedPostgres, free_port
from gateway.db.migrate import migrate
from gateway.simulator import Delivery, SimulatorConfig, SmscSimulator

pytestmark = pytest.mark.chaos

BINDS = 2
WINDOW = 20
LEASE_S = 15.0  # longer than the outage: no claim may be reaped because the database was away
RESUME_BOUND_S = 5.0


async def _delivered(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbound_message WHERE status = 'delivered'", timeout=10))


async def run_postgres_restart(
    workdir: Path,
    *,
    messages: int = 3000,
    outage_s: float = 2.0,
    mos: int = 20,
    bind_tps: float = 150.0,
    time_limit: float = 120.0,
) -> Figures:
    """Run `messages` rows through `smsgw run` on a private cluster that is stopped for `outage_s` mid-run,
    with `mos` MOs injected while it is down."""
    started = time.monotonic()
    pg = EmbeddedPostgres(workdir / "pg", port=free_port(), shared_buffers="32MB", log_file=workdir / "pg.log")
    await asyncio.to_thread(pg.start)
    try:
        conn = await asyncpg.connect(pg.dsn(), timeout=30)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(pg.dsn(), min_size=1, max_size=2, timeout=30)
        await enqueue_marked(pool, messages)
        await pool.close()
        sim_config = SimulatorConfig(receipt_delay=0.05, deliver_timeout=1.0, redelivery_delay=0.1)
        async with SmscSimulator(sim_config) as sim:
            config = GatewayConfig(
                pg.dsn(), sim.port, binds=BINDS, window=WINDOW, bind_tps=bind_tps, lease_seconds=LEASE_S,
            ).write(workdir / "gateway.toml")
            async with GatewayProcess(config, workdir) as gw:
                gw.start()
                flowing = await wait_until(lambda: sim.stats.submits_ok >= messages * 0.3, time_limit / 2)
                assert flowing, f"gateway never got going: {sim.stats}\n{gw.log_tail()}"
                binds_before, conns_before = sim.stats.binds, sim.stats.connections
                event = FaultEvent("postgres restart", time.monotonic())
                await asyncio.to_thread(pg.stop)
                down_at = time.monotonic()  # from here until start_at the server is certainly not there
                injected: list[Delivery] = [
                    await sim.inject_mo(f"+1202555{9000 + i:04d}", "12345", f"chaos mo {i:03d}")
                    for i in range(mos)
                ]
                await asyncio.sleep(outage_s)
                start_at = time.monotonic()
                await asyncio.to_thread(pg.start)
                up_at = event.until = time.monotonic()
                pool = await asyncpg.create_pool(pg.dsn(), min_size=1, max_size=2, timeout=30)
                try:
                    baseline = await _delivered(pool)
                    resumed = await wait_until(lambda: _more_delivered(pool, baseline), 30, interval=0.02)
                    assert resumed, f"nothing delivered after the restart\n{gw.log_tail()}"
                    resume_delivered_s = time.monotonic() - up_at
                    event.recovered_s = resume_delivered_s
                    done = await wait_until(lambda: _none_open(pool), time_limit)
                    assert done, f"rows still open: {await table_outcome(pool)}\n{gw.log_tail()}"
                    first = accepted_since(sim, up_at)  # the router claiming again: the first new submit
                    resume_submit_s = None if first is None else first.received_at - up_at
                    mos_acked = await wait_until(lambda: all(d.acked for d in injected), 30)
                    # Each copy the SMSC re-sent during the outage is stored; the MO processor marks all but
                    # one of each as 'duplicate' (an SMSC re-delivery): wait until it has handled them.
                    await wait_until(lambda: _mos_handled(pool), 30)
                    stored_mos = await pool.fetch(
                        "SELECT body, intent FROM inbound_message WHERE body LIKE 'chaos mo %'", timeout=30)
                    code = await gw.terminate()
                    assert code == 0, gw.log_tail()
                    tally = smsc_tally(sim, [event])
                    table = await table_outcome(pool)
                finally:
                    await pool.close()
                stats = sim.stats
                receipts_acked_while_down = sum(
                    1 for d in sim.receipts if d.acked_at is not None and down_at <= d.acked_at < start_at
                )
                # Receipts planned before the server came back but acknowledged only after: held over the outage.
                receipts_held_over = sum(
                    1 for d in sim.receipts
                    if d.created_at < start_at and d.acked_at is not None and d.acked_at >= start_at
                )
    finally:
        await asyncio.to_thread(pg.stop)
    mo_ack_after_up = [None if d.acked_at is None else round(d.acked_at - start_at, 3) for d in injected]
    return figures(
        "postgres_restart", messages, [event], tally, table, event_kind="Postgres restart",
        duplicate_bound=0, wall_s=time.monotonic() - started,
        extra={
            "outage_s": round(start_at - event.at, 2),
            "rebinds_during_outage": stats.binds - binds_before,
            "new_connections_during_outage": stats.connections - conns_before,
            "resume_delivered_s": round(resume_delivered_s, 3),
            "resume_submit_s": None if resume_submit_s is None else round(resume_submit_s, 3),
            "mos_injected_while_down": len(injected),
            "mos_all_acked": mos_acked,
            "mo_acked_s_after_db_start_min": min((a for a in mo_ack_after_up if a is not None), default=None),
            "mos_acked_before_db_start": sum(1 for a in mo_ack_after_up if a is not None and a < 0),
            "mos_stored": len({r["body"] for r in stored_mos}),
            "mo_rows_stored": len(stored_mos),  # copies the SMSC re-sent while unacknowledged included
            "mos_handled_not_duplicate": sum(1 for r in stored_mos if r["intent"] != "duplicate"),
            "receipts_acked_while_down": receipts_acked_while_down,
            "receipt_redeliveries": stats.redeliveries,
            "receipts_acked_only_after_restart": receipts_held_over,
        },
    )


async def _more_delivered(pool: asyncpg.Pool, baseline: int) -> bool:
    try:
        return await _delivered(pool) > baseline
    except (OSError, asyncpg.PostgresError):
        return False


async def _mos_handled(pool: asyncpg.Pool) -> bool:
    return not await pool.fetchval(
        "SELECT count(*) FROM inbound_message WHERE body LIKE 'chaos mo %' AND intent IS NULL", timeout=10)


async def _none_open(pool: asyncpg.Pool) -> bool:
    return await open_rows(pool) == 0


async def test_postgres_restart_keeps_binds_acks_only_what_is_stored_and_loses_nothing(tmp_path: Path) -> None:
    fig = await run_postgres_restart(tmp_path)
    fig.print()
    x = fig.extra
    assert fig.lost == 0 and fig.not_final == 0, fig
    assert fig.final_statuses == {"delivered": fig.messages}, fig
    assert fig.distinct_sent == fig.messages
    assert fig.duplicates == 0, fig  # the outage is shorter than the lease: nothing is claimed twice
    assert x["rebinds_during_outage"] == 0 and x["new_connections_during_outage"] == 0, x
    assert x["mos_all_acked"] and x["mos_acked_before_db_start"] == 0, x
    assert x["mos_stored"] == x["mos_injected_while_down"], x
    assert x["mos_handled_not_duplicate"] == x["mos_injected_while_down"], x  # re-sent copies are not acted on
    assert x["receipts_acked_while_down"] == 0, x
    assert x["resume_delivered_s"] <= RESUME_BOUND_S, x
