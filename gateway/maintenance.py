"""Periodic queue hygiene, run by every instance: lease reaper, expiry, parked-receipt sweeper, depth gauge.

Rule of this module: each statement is a single set-based UPDATE/DELETE in its own short transaction;
running it on several instances at once is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg

from gateway import metrics, receipt_ids
from gateway.db import outbound_sql as sql
from gateway.settings import DispatcherSettings

if TYPE_CHECKING:
    from gateway.dispatcher import SmscDispatcher

log = logging.getLogger(__name__)


async def heartbeat(pool: asyncpg.Pool, settings: DispatcherSettings, dispatchers: Sequence[SmscDispatcher]) -> None:
    """Record this instance as live and split each account's rate by the live instances serving it."""
    if not dispatchers:
        return
    names = [d.name for d in dispatchers]
    stale_after = 3 * settings.maintenance_interval + 5
    # Binds, rates and the last bind error ride along, for the status page and `smsgw status` (ops_status.py).
    rows = await pool.fetch(
        sql.HEARTBEAT,
        settings.instance,
        names,
        stale_after,
        [d.binds_up for d in dispatchers],
        [len(d.binds) for d in dispatchers],
        [float(d.smsc.tps) for d in dispatchers],
        [float(d.account_bucket.rate) for d in dispatchers],
        [d.last_error for d in dispatchers],
        [d.last_error_at for d in dispatchers],
        timeout=30,
    )
    live = {r["smsc"]: r["live"] for r in rows}
    for d in dispatchers:
        d.set_instances(live.get(d.name, 1))


async def sweep_parked(pool: asyncpg.Pool, settings: DispatcherSettings) -> int:
    """Record parked receipts (recent ones only) whose message (or part) now carries their id; returns how many."""
    async with pool.acquire(timeout=10) as conn, conn.transaction():
        rows = await conn.fetch(
            sql.TAKE_MATCHABLE_PARKED, settings.parked_receipt_match_seconds, settings.receipt_timeout, timeout=30
        )
        if rows:
            matches = await conn.fetch(
                sql.RECORD_RECEIPTS, *[[r[k] for r in rows] for k in range(10)], settings.receipt_timeout, timeout=30
            )
            receipt_ids.observe_matches(matches, count_unmatched=False)
    return len(rows)


async def count_parked(pool: asyncpg.Pool, settings: DispatcherSettings) -> None:
    """Refresh the parked-receipt gauge; warn (rate-limited) when receipts pile up unmatched."""
    rows = await pool.fetch(sql.PARKED_RECEIPTS, settings.parked_receipt_match_seconds, timeout=30)
    receipt_ids.observe_parked(rows, settings.parked_receipt_match_seconds)


async def run_once(pool: asyncpg.Pool, settings: DispatcherSettings) -> dict[str, int]:
    """One pass; returns the rows touched per task (for logs and tests)."""
    reaped = await pool.fetchrow(sql.REAP_LEASES_COUNTED, settings.max_attempts, timeout=30)
    touched = {
        "reaped": reaped["reaped"] if reaped is not None else 0,
        "expired": _count(await pool.execute(sql.EXPIRE_QUEUED, timeout=30)),
        "no_receipt": _count(await pool.execute(sql.EXPIRE_SUBMITTED, settings.receipt_timeout, timeout=30)),
        "swept": await sweep_parked(pool, settings),
        "dropped_parked": _count(
            await pool.execute(sql.DROP_OLD_PARKED, max(1, round(settings.parked_receipt_days)), timeout=30)
        ),
        "dropped_instances": _count(await pool.execute(sql.DROP_STALE_INSTANCES, timeout=30)),
    }
    if reaped is not None and reaped["failed"]:
        metrics.FINAL.labels("failed", "lease_expired_max_attempts").inc(reaped["failed"])
    if touched["expired"]:
        metrics.FINAL.labels("expired", "expired_before_submit").inc(touched["expired"])
    if touched["no_receipt"]:
        metrics.FINAL.labels("expired", "no_receipt_within_timeout").inc(touched["no_receipt"])
    await observe_queue(pool)
    await count_parked(pool, settings)
    return touched


async def observe_queue(pool: asyncpg.Pool) -> None:
    """Queue depth by status and priority class, and the oldest due row's wait: two cheap statements."""
    depth = {(status, prio): 0 for status in ("queued", "claimed", "submitted") for prio in metrics.PRIORITY_CLASSES}
    for status, prio, count in await pool.fetch(sql.QUEUE_STATS, timeout=30):
        depth[(status, prio)] = count
    totals: dict[str, int] = {}
    for (status, prio), count in depth.items():
        metrics.QUEUE_DEPTH_BY_PRIORITY.labels(status, prio).set(count)
        totals[status] = totals.get(status, 0) + count
    for status, count in totals.items():
        metrics.QUEUE_DEPTH.labels(status).set(count)
    age = await pool.fetchval(sql.QUEUE_OLDEST_DUE, timeout=30)
    metrics.QUEUE_OLDEST_AGE.set(age or 0.0)


async def run_forever(
    pool: asyncpg.Pool, settings: DispatcherSettings, dispatchers: Sequence[SmscDispatcher] = ()
) -> None:
    """Every `maintenance_interval` seconds until cancelled; database errors are logged, never fatal."""
    while True:
        try:
            await heartbeat(pool, settings, dispatchers)
            touched = await run_once(pool, settings)
            if any(touched.values()):
                log.info("maintenance", extra=touched)
        except Exception as exc:  # never fatal: the next pass tries again
            log.warning("maintenance failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        await asyncio.sleep(settings.maintenance_interval)


def _count(status: str) -> int:
    """Rows from a command tag such as 'UPDATE 3'."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0
