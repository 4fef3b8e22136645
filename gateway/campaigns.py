"""Automation (issue 10, part 2; migration 0014): event rules, and the scheduler of campaigns.

Events are turned into messages by the database (the BEFORE INSERT trigger on `smsgw_event`), so a service that
records an event needs no gateway running to get its message enqueued. What the daemon does here is keep the
table `event_rule` in step with the configured rules (``[[keywords."<sc>".events]]``) when it starts, as it does
for the subscriber lists (keywords.processor.MoProcessor.sync_lists).

Campaigns (table `campaign`; `smsgw campaign create|pause|resume|cancel`): the scheduler loop (`run_scheduler`,
started by gateway/app.py) enqueues each due occurrence with `smsgw_broadcast_template` under the campaign_key
``<key>@<occurrence ISO>``, so the unique (campaign_key, destination) index makes a second enqueue of one
occurrence (a restarted gateway, a second one) insert nothing. Occurrences missed while no gateway ran are not
replayed: only the latest due one is sent. The occurrence maths (`Schedule`) is pure and takes the time as an
argument; the loop reads the clock through `now()` (tests replace it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from croniter import croniter

from gateway.quiet_hours import named_zone, zones_for_number
from keywords.config import ShortCodeKeywords

log = logging.getLogger(__name__)

_UPSERT_RULE = """
INSERT INTO event_rule (short_code, event, template, message_class, priority, enabled, managed_by)
VALUES (smsgw_short_code($1), $2, $3, $4, $5, $6, 'config')
ON CONFLICT (short_code, event) DO UPDATE
SET template = EXCLUDED.template, message_class = EXCLUDED.message_class, priority = EXCLUDED.priority,
    enabled = EXCLUDED.enabled, managed_by = 'config', updated_at = now()
WHERE (event_rule.template, event_rule.message_class, event_rule.priority, event_rule.enabled,
       event_rule.managed_by)
      IS DISTINCT FROM (EXCLUDED.template, EXCLUDED.message_class, EXCLUDED.priority, EXCLUDED.enabled, 'config')
"""

# Config rules that left the config (SQL-managed rules are never touched).
_DELETE_STALE = """
DELETE FROM event_rule
WHERE managed_by = 'config'
  AND (short_code, event) NOT IN (SELECT smsgw_short_code(s), e FROM unnest($1::text[], $2::text[]) AS t(s, e))
"""

_MISSING_TEMPLATES = """
SELECT r.short_code, r.event, r.template FROM event_rule r
WHERE r.enabled AND NOT EXISTS (SELECT 1 FROM message_template t
                                WHERE t.short_code = r.short_code AND t.name = r.template)
ORDER BY 1, 2
"""


async def sync_event_rules(pool: asyncpg.Pool, configs: Mapping[str, ShortCodeKeywords]) -> None:
    """Make `event_rule` hold exactly the configured rules among those the config manages.

    A rule naming a template that does not exist yet is kept (templates are managed with `smsgw template`) and
    logged: until the template is saved, its events end their messages rejected / template_unknown.
    """
    short_codes: list[str] = []
    events: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        for short_code, cfg in configs.items():
            for rule in cfg.events:
                await conn.execute(
                    _UPSERT_RULE, short_code, rule.event, rule.template, rule.message_class, rule.priority,
                    rule.enabled,
                )
                short_codes.append(short_code)
                events.append(rule.event)
        await conn.execute(_DELETE_STALE, short_codes, events)
        missing = await conn.fetch(_MISSING_TEMPLATES)
    for row in missing:
        log.warning(
            "event rule names a template that does not exist",
            extra={"short_code": row["short_code"], "event": row["event"], "template": row["template"]},
        )


# -- scheduled campaigns -----------------------------------------------------------------------------------

# The earliest time zone (UTC+14): a local-time occurrence is enqueued this long before its wall time in UTC, so
# every recipient's row is waiting (send_after = the wall time in their zone) before their clock reaches it.
MAX_UTC_OFFSET = timedelta(hours=14)
DEFAULT_TIME_ZONE = "America/New_York"  # a number phonenumbers cannot place (as gateway/quiet_hours.py)
SCHEDULER_INTERVAL = 5.0  # seconds between looks at the table


def _utc_now() -> datetime:
    return datetime.now(UTC)


now: Callable[[], datetime] = _utc_now  # the scheduler's clock (aware UTC); tests replace it


@dataclass(frozen=True)
class Schedule:
    """A campaign's schedule: a cron expression or one timestamp, in UTC or (local_time) in wall-clock time.

    Occurrences are naive datetimes: UTC, or with ``local_time`` the wall time every recipient gets in their zone.
    """

    expression: str
    local_time: bool = False

    def __post_init__(self) -> None:
        if not self.is_cron:
            self.one_off  # noqa: B018 - raises ValueError when it is neither

    @functools.cached_property
    def is_cron(self) -> bool:
        return bool(croniter.is_valid(self.expression))

    @functools.cached_property
    def one_off(self) -> datetime:
        """The one occurrence of a timestamp schedule (an aware one, unless local_time, in UTC).

        Raises:
            ValueError: neither a cron expression nor an ISO timestamp; an aware timestamp with local_time.
        """
        try:
            at = datetime.fromisoformat(self.expression)
        except ValueError:
            raise ValueError(f"schedule {self.expression!r} is neither a cron expression nor an ISO timestamp") \
                from None
        if at.tzinfo is not None:
            if self.local_time:
                raise ValueError("a local-time schedule is a wall-clock time: give it without a UTC offset")
            at = at.astimezone(UTC).replace(tzinfo=None)
        return at.replace(microsecond=0)

    def next_after(self, after: datetime) -> datetime | None:
        """The first occurrence strictly after ``after`` (naive, as occurrences); None when there is none."""
        if self.is_cron:
            return croniter(self.expression, after).get_next(datetime)  # type: ignore[no-any-return]
        return self.one_off if self.one_off > after else None

    def latest_due(self, first: datetime, at: datetime) -> datetime | None:
        """The latest occurrence from ``first`` on whose enqueue time is not after ``at`` (aware); None if none."""
        limit = self.wall(at)
        if first > limit:
            return None
        if not self.is_cron:
            return first
        latest = croniter(self.expression, limit + timedelta(seconds=1)).get_prev(datetime)
        return max(first, latest)

    def enqueue_time(self, occurrence: datetime) -> datetime:
        """When the scheduler enqueues ``occurrence`` (aware UTC)."""
        at = occurrence.replace(tzinfo=UTC)
        return at - MAX_UTC_OFFSET if self.local_time else at

    def wall(self, at: datetime) -> datetime:
        """The latest occurrence time whose enqueue time is not after ``at`` (the inverse of enqueue_time)."""
        at = at.astimezone(UTC).replace(tzinfo=None)
        return at + MAX_UTC_OFFSET if self.local_time else at

    def key(self, campaign: str, occurrence: datetime) -> str:
        """The campaign_key of one occurrence (Z: a UTC occurrence; none: a wall time)."""
        return f"{campaign}@{occurrence.isoformat()}{'' if self.local_time else 'Z'}"


def recipient_zone(destination: str, time_zone: str | None) -> ZoneInfo:
    """The recipient's zone: the subscriber attribute `time_zone` when it names a zone, else the number's."""
    zone = named_zone(time_zone)
    if zone is not None:
        return zone
    digits = "".join(ch for ch in destination if ch.isdigit())
    try:
        return zones_for_number(digits, DEFAULT_TIME_ZONE)[0]
    except ValueError:
        return ZoneInfo(DEFAULT_TIME_ZONE)


def local_send_after(occurrence: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant at which the clock in ``zone`` first reads ``occurrence`` (in a DST gap: just after it)."""
    return occurrence.replace(tzinfo=zone, fold=0).astimezone(UTC)


_DUE = """
SELECT key, short_code, list_name, template, variables, schedule, local_time, next_occurrence
FROM campaign WHERE status = 'active' AND next_run <= $1
ORDER BY next_run LIMIT 20
FOR UPDATE SKIP LOCKED
"""
_ADVANCE = """
UPDATE campaign SET last_occurrence = $2, last_enqueued = $3, next_occurrence = $4, next_run = $5,
    status = CASE WHEN $4::timestamp IS NULL THEN 'done' ELSE status END, updated_at = now()
WHERE key = $1
"""
_BROADCAST = "SELECT smsgw_broadcast_template($1, $2, $3, $4, $5::jsonb, $6)"
_LOCAL_ROWS = """
SELECT m.id, m.destination, s.attributes ->> 'time_zone' AS time_zone
FROM outbound_message m
LEFT JOIN subscriber s ON s.short_code = $2 AND s.msisdn = regexp_replace(m.destination, '[^0-9]', '', 'g')
WHERE m.campaign_key = $1 AND m.status = 'queued'
"""
_SET_SEND_AFTER = """
UPDATE outbound_message m SET send_after = u.t
FROM unnest($1::bigint[], $2::timestamptz[]) AS u(id, t) WHERE m.id = u.id
"""


def first_run(schedule: Schedule, at: datetime) -> tuple[datetime | None, datetime | None]:
    """(next_occurrence, next_run) of a campaign created or resumed at ``at``: the first occurrence still to
    come (a one-off timestamp in the past is sent at once)."""
    occurrence = schedule.one_off if not schedule.is_cron else schedule.next_after(schedule.wall(at))
    if occurrence is None:
        return None, None
    return occurrence, schedule.enqueue_time(occurrence)


async def enqueue_occurrence(conn: asyncpg.Connection, row: Any, schedule: Schedule, occurrence: datetime) -> int:
    """Broadcast one occurrence (inside the caller's transaction); return the rows inserted (0: done before)."""
    key = schedule.key(row["key"], occurrence)
    send_after = schedule.enqueue_time(occurrence) if not schedule.local_time else now()
    inserted: int = await conn.fetchval(
        _BROADCAST, row["short_code"], row["list_name"], row["template"], key, row["variables"], send_after
    )
    if schedule.local_time and inserted:
        ids: list[int] = []
        times: list[datetime] = []
        for r in await conn.fetch(_LOCAL_ROWS, key, row["short_code"]):
            ids.append(r["id"])
            times.append(local_send_after(occurrence, recipient_zone(r["destination"], r["time_zone"])))
        await conn.execute(_SET_SEND_AFTER, ids, times)
    return inserted


async def run_due(pool: asyncpg.Pool) -> int:
    """Enqueue the due occurrence of every due campaign; return how many occurrences were handled."""
    at = now()
    handled = 0
    async with pool.acquire() as conn, conn.transaction():
        for row in await conn.fetch(_DUE, at):
            try:
                schedule = Schedule(row["schedule"], row["local_time"])
            except ValueError as exc:  # a row written in SQL with a bad schedule: the others still go
                log.warning("campaign schedule invalid", extra={"campaign": row["key"], "error": str(exc)})
                continue
            occurrence = schedule.latest_due(row["next_occurrence"], at)
            if occurrence is None:  # next_run was set in SQL before its occurrence's time: put it right
                await conn.execute("UPDATE campaign SET next_run = $2 WHERE key = $1",
                                   row["key"], schedule.enqueue_time(row["next_occurrence"]))
                continue
            try:
                async with conn.transaction():  # a savepoint: one broken campaign does not stop the others
                    inserted = await enqueue_occurrence(conn, row, schedule, occurrence)
            except asyncpg.PostgresError as exc:
                log.warning("campaign occurrence not enqueued", extra={
                    "campaign": row["key"], "occurrence": occurrence.isoformat(), "error": str(exc)})
                continue  # retried on the next tick
            log.info("campaign occurrence enqueued", extra={
                "campaign": row["key"], "occurrence": occurrence.isoformat(), "rows": inserted})
            handled += 1
            nxt = schedule.next_after(occurrence)
            await conn.execute(
                _ADVANCE, row["key"], occurrence, inserted, nxt,
                schedule.enqueue_time(nxt) if nxt is not None else None,
            )
    return handled


async def run_scheduler(pool: asyncpg.Pool) -> None:
    """The daemon's campaign loop (a task of gateway/app.py): errors are logged and retried next tick."""
    while True:
        try:
            await run_due(pool)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("campaign scheduler tick failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        await asyncio.sleep(SCHEDULER_INTERVAL)
