"""Periodic queue hygiene, run by every instance: lease reaper, expiry, parked-receipt sweeper, depth gauge;
webhook outbox pruning and backlog gauges. And the heartbeat, in a faster loop of its own: this instance's row
per SMSC, and its grant of each account's rate (gateway/rate_share.py).

Rule of this module: each statement is a single set-based UPDATE/DELETE in its own short transaction;
running it on several instances at once is harmless. The heartbeat is the exception: read, decide and write in
one short transaction under an advisory lock, so that the instances take turns deciding their grants.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from gateway import metrics, rate_share, receipt_ids
from gateway.db import outbound_sql as sql
from gateway.settings import DispatcherSettings
from gateway.webhooks import ops_sql

if TYPE_CHECKING:
    from gateway.dispatcher import SmscDispatcher
    from gateway.settings import WebhookSettings

log = logging.getLogger(__name__)

# Per statement of a heartbeat (and the pool checkout); the whole pass is bounded by the grants' fence.
_BEAT_TIMEOUT_S = 5.0
# While the heartbeat keeps failing, warn at the first failure and then every this many passes (~10 s).
_WARN_EVERY = 20


def stale_after(settings: DispatcherSettings) -> float:
    """Seconds without a heartbeat after which an instance counts as gone (its grant is re-used)."""
    return 3 * settings.maintenance_interval + 5


async def heartbeat(
    pool: asyncpg.Pool, settings: DispatcherSettings, dispatchers: Sequence[SmscDispatcher]
) -> list[rate_share.Share]:
    """Record this instance as live and decide its grant of each account's rate (gateway/rate_share.py): under
    the rate-share lock, read the other instances' rows, apply a lower grant before the commit, write the row,
    apply a higher one after it. Returns the shares, in the order of `dispatchers`."""
    if not dispatchers:
        return []
    names = [d.name for d in dispatchers]
    stale = stale_after(settings)
    # The fence counts from before the transaction; the row's last_seen (its start) is later still.
    valid_until = asyncio.get_running_loop().time() + rate_share.fence_after(stale)
    async with pool.acquire(timeout=_BEAT_TIMEOUT_S) as conn, conn.transaction():
        await conn.execute(sql.LOCK_RATE_SHARE, timeout=_BEAT_TIMEOUT_S)
        rows = await conn.fetch(sql.RATE_SHARE_MEMBERS, names, settings.instance, timeout=_BEAT_TIMEOUT_S)
        others: dict[str, list[rate_share.Member]] = {name: [] for name in names}
        for r in rows:
            others[r["smsc"]].append(rate_share.Member(r["instance"], r["grant_tps"], r["tps"], r["age_s"]))
        shares = [rate_share.decide_share(d.smsc.tps, others[d.name], stale) for d in dispatchers]
        for d, share in zip(dispatchers, shares, strict=True):
            if share.rate < d.rate_grant:  # lower first: the others may use what we release from the commit on
                d.set_rate_share(share, None)
        # Binds, rates and the last bind error ride along, for the status page and `smsgw status` (ops_status.py).
        await conn.execute(
            sql.HEARTBEAT,
            settings.instance,
            names,
            [s.rate for s in shares],
            [d.binds_up for d in dispatchers],
            [len(d.binds) for d in dispatchers],
            [float(d.smsc.tps) for d in dispatchers],
            [_effective_rate(d, s) for d, s in zip(dispatchers, shares, strict=True)],
            [d.last_error for d in dispatchers],
            [d.last_error_at for d in dispatchers],
            timeout=_BEAT_TIMEOUT_S,
        )
    for d, share in zip(dispatchers, shares, strict=True):
        d.set_rate_share(share, valid_until)  # committed: raise, and renew the fence
    return shares


def _effective_rate(d: SmscDispatcher, share: rate_share.Share) -> float:
    """The rate this instance sends at after the heartbeat: AIMD below the grant (0 = nothing, or no limit)."""
    if share.reason is rate_share.ShareReason.UNLIMITED:
        return float(d.account_bucket.rate)
    return min(float(d.adaptive.rate), share.rate)


async def run_heartbeat(
    pool: asyncpg.Pool, settings: DispatcherSettings, dispatchers: Sequence[SmscDispatcher]
) -> None:
    """Heartbeat until cancelled: every `rate_share.heartbeat_interval` (shorter while waiting for a share).
    Database errors are logged, never fatal; an instance that cannot beat stops sending once its grants' fence
    has passed (rate_share.py), and sends again after its next successful heartbeat."""
    loop = asyncio.get_running_loop()
    fence = rate_share.fence_after(stale_after(settings))
    last_ok = loop.time()
    waiting = False
    failures = 0
    while True:
        started = loop.time()
        try:
            async with asyncio.timeout(fence):  # a longer pass is worthless: the grants would have run out
                shares = await heartbeat(pool, settings, dispatchers)
            waiting = any(not s.settled for s in shares)
            if failures:
                log.info("heartbeat back", extra={"failed_passes": failures})
            failures, last_ok = 0, started
        except Exception as exc:  # never fatal: the next pass tries again
            failures += 1
            if failures == 1 or failures % _WARN_EVERY == 0:
                fenced = loop.time() - last_ok >= fence and any(d.smsc.tps for d in dispatchers)
                msg = "heartbeat failed; grants expired: not sending until it works" if fenced else "heartbeat failed"
                log.warning(msg, extra={"error": f"{type(exc).__name__}: {exc}", "failed_passes": failures})
        await asyncio.sleep(rate_share.heartbeat_interval(settings.maintenance_interval, waiting=waiting))


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


async def run_once(
    pool: asyncpg.Pool, settings: DispatcherSettings, webhooks: WebhookSettings | None = None
) -> dict[str, int]:
    """One pass; returns the rows touched per task (for logs and tests). With `webhooks`, the outbox is pruned
    and its backlog gauges refreshed too."""
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
    await observe_queue_paced(pool)
    await count_parked(pool, settings)
    if webhooks is not None:
        pruned_deliveries, pruned_events = await prune_webhooks(pool, webhooks.retention_days)
        touched["webhook_deliveries_pruned"] = pruned_deliveries
        touched["webhook_events_pruned"] = pruned_events
        await observe_webhooks(pool)
    return touched


# A pass deletes at most PRUNE_BATCH * PRUNE_MAX_BATCHES rows per table, PRUNE_BATCH per statement (each its own
# short transaction): a backlog of millions is worked off over several passes, never in one long transaction.
PRUNE_BATCH = 5000
PRUNE_MAX_BATCHES = 20


async def prune_webhooks(
    pool: asyncpg.Pool, retention_days: float, *, batch: int = PRUNE_BATCH, max_batches: int = PRUNE_MAX_BATCHES
) -> tuple[int, int]:
    """Delete delivered deliveries older than the retention, then events older than it with no delivery left
    (dead deliveries are kept, and keep their events). Returns (deliveries, events) deleted."""
    retention_s = float(retention_days) * 86400.0
    deleted = []
    for statement in (ops_sql.PRUNE_DELIVERED, ops_sql.PRUNE_EVENTS):
        total = 0
        for _ in range(max_batches):
            n = _count(await pool.execute(statement, retention_s, batch, timeout=60))
            total += n
            if n < batch:
                break
        deleted.append(total)
    if deleted[0]:
        metrics.WEBHOOK_PRUNED.labels("webhook_delivery").inc(deleted[0])
    if deleted[1]:
        metrics.WEBHOOK_PRUNED.labels("webhook_event").inc(deleted[1])
    return deleted[0], deleted[1]


_webhook_gauge_endpoints: set[str] = set()


async def observe_webhooks(pool: asyncpg.Pool) -> dict[str, tuple[int, float]]:
    """Backlog and oldest pending age per endpoint (one statement); an endpoint that disappeared reads 0.
    Returns {endpoint: (pending, oldest age in seconds)}."""
    rows = await pool.fetch(ops_sql.BACKLOG, timeout=30)
    seen = {r["endpoint"]: (int(r["pending"]), float(r["oldest_age"])) for r in rows}
    for name in _webhook_gauge_endpoints - seen.keys():
        metrics.WEBHOOK_BACKLOG.labels(name).set(0)
        metrics.WEBHOOK_OLDEST_PENDING_AGE.labels(name).set(0)
    for name, (pending, age) in seen.items():
        metrics.WEBHOOK_BACKLOG.labels(name).set(pending)
        metrics.WEBHOOK_OLDEST_PENDING_AGE.labels(name).set(age)
    _webhook_gauge_endpoints.update(seen)
    return seen


@dataclass
class DutyCycle:
    """Paces a task that costs more as data grows: run it at most often enough to spend `share` of the time on it."""

    share: float
    due: float = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.due

    def ran(self, started: float, ended: float) -> None:
        """A run took `ended - started`: the next may start once it is `share` of the time since this one began."""
        self.due = started + (ended - started) / self.share


# The depth count reads every non-final row: about 1 ms for a small queue (every maintenance pass), a few hundred
# ms for a backlog of a million (then every ~15 s), so the gauges never cost more than 2 % of a Postgres core.
_QUEUE_STATS_PACE = DutyCycle(share=0.02)


async def observe_queue_paced(pool: asyncpg.Pool) -> None:
    """`observe_queue`, skipped while `_QUEUE_STATS_PACE` says the last one was too recent for its cost."""
    started = time.monotonic()
    if not _QUEUE_STATS_PACE.ready(started):
        return
    try:
        await observe_queue(pool)
    finally:
        _QUEUE_STATS_PACE.ran(started, time.monotonic())


async def observe_queue(pool: asyncpg.Pool) -> None:
    """Queue depth by status and priority class, and the oldest due row's wait."""
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
    pool: asyncpg.Pool, settings: DispatcherSettings, webhooks: WebhookSettings | None = None
) -> None:
    """Every `maintenance_interval` seconds until cancelled; database errors are logged, never fatal. (The
    heartbeat has a loop of its own, `run_heartbeat`: it runs more often.)"""
    while True:
        try:
            touched = await run_once(pool, settings, webhooks)
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
