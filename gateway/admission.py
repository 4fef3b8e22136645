"""Admission: claimed rows become items ready to send, or end with a reason: validation, consent, quiet hours.

Rule of this module: one row never holds up the others. Each row is prepared on its own; any exception while
preparing it (a value no one foresaw, a bug) ends that row `rejected / invalid_row` with the error in `detail`,
and the rest of the batch goes on. Consent is looked up once per batch (one indexed statement); when Postgres
refuses the batch because of one row's values, the rows are looked up one by one and only the offending row is
rejected. The loop time just before the lookup is each item's `admitted_at`, so that a consent change
announced later is caught again just before submit_sm (keywords.consent_watch).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg

from gateway import metrics
from gateway.clean import error_text
from gateway.message import ClaimedMessage, Rejection, consent_refusal, prepare
from gateway.quiet_hours import next_allowed
from gateway.response_outcome import PartGroup
from gateway.results import ResultWriter
from gateway.send_buffer import Item, Lease
from gateway.settings import DispatcherSettings, SmscSettings
from gateway.status import Reason, Status
from keywords import sql as consent_sql

log = logging.getLogger(__name__)

# Characters of an exception kept in a row's `detail`.
DETAIL_CHARS = 500


class Admission:
    """Turns one SMSC's claimed rows into ready items; settles the rows that cannot be sent."""

    def __init__(
        self, name: str, smsc: SmscSettings, settings: DispatcherSettings, pool: asyncpg.Pool, writer: ResultWriter
    ) -> None:
        self.name = name
        self.smsc = smsc
        self.settings = settings
        self.pool = pool
        self.writer = writer

    async def admit(self, rows: list[tuple[str, asyncpg.Record]], lease_until: float) -> list[Item]:
        """Prepare each row, enforce consent and quiet hours; return the items to send, in claim order.

        Raises:
            asyncpg.PostgresError, OSError, TimeoutError: the consent lookup failed for a reason that is not
                one row's values (the database is down); the caller gives the rows back.
        """
        now = datetime.now(UTC)
        prepared: list[Item] = []
        for token, record in rows:
            lease = Lease(record["id"], token, lease_until)
            item = self._prepare_one(record, lease, now)
            if item is not None:
                prepared.append(item)
        if not prepared:
            return []
        admitted_at = asyncio.get_running_loop().time()  # before the lookup: later changes are caught at send
        checks = await self._consent(prepared)
        ready: list[Item] = []
        for item, check in zip(prepared, checks, strict=True):
            item.admitted_at = admitted_at
            try:
                if isinstance(check, BaseException):
                    raise check
                refusal = consent_refusal(
                    item.msg, opted_out=check["opted_out"], subscribed=check["subscribed"],
                    exempt=check["exempt"],
                )
                if refusal is not None:
                    self.reject(item.msg, item.token, refusal)
                elif self._outside_quiet_hours(item, now):
                    ready.append(item)
            except Exception as exc:
                self.invalid(item.msg.id, item.token, exc)
        return ready

    def _prepare_one(self, record: asyncpg.Record, lease: Lease, now: datetime) -> Item | None:
        try:
            msg = ClaimedMessage.model_validate(dict(record))
            result = prepare(msg, self.smsc, self.settings.default_region, now, self.settings.max_segments)
        except Exception as exc:
            self.invalid(lease.row_id, lease.token, exc)
            return None
        if isinstance(result, Rejection):
            self.reject(msg, lease.token, result)
            return None
        group = PartGroup(len(result)) if len(result) > 1 else None
        return Item(msg, lease, list(enumerate(result, 1)), group, admitted_at=0.0)

    async def _consent(self, items: list[Item]) -> list[asyncpg.Record | BaseException]:
        """One lookup for the batch; if Postgres refuses a value (a data error), one lookup per row."""
        try:
            checks = await self._consent_fetch(items)
        except asyncpg.DataError:
            pass
        else:
            by_i = {c["i"]: c for c in checks}
            return [by_i.get(i, LookupError("no consent row")) for i in range(1, len(items) + 1)]
        results: list[asyncpg.Record | BaseException] = []
        for item in items:
            try:
                (check,) = await self._consent_fetch([item])
                results.append(check)
            except asyncpg.DataError as exc:
                results.append(exc)
        return results

    async def _consent_fetch(self, items: list[Item]) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            consent_sql.CONSENT_CHECK,
            [it.msg.source.strip() for it in items],
            [it.parts[0][1].destination_addr for it in items],
            [it.msg.list_name for it in items],
            [it.msg.inbound_message_id for it in items],
            timeout=30,
        )

    def _outside_quiet_hours(self, item: Item, now: datetime) -> bool:
        """Marketing to a recipient whose local time is in quiet hours waits (not fails) until it is not."""
        s = self.settings
        if not s.quiet_hours or item.msg.message_class != "marketing":
            return True
        when = next_allowed(
            item.parts[0][1].destination_addr, now, start=s.quiet_hours_start, end=s.quiet_hours_end,
            default_tz=s.quiet_hours_default_tz,
        )
        if when is None:
            return True
        self.writer.settle(
            item.msg.id, item.token, Status.QUEUED, delay=(when - now).total_seconds(), reason=Reason.QUIET_HOURS,
            attempts_delta=-1,
        )
        return False

    def reject(self, msg: ClaimedMessage, token: str, rejection: Rejection) -> None:
        metrics.REJECTED.labels(rejection.reason).inc()
        self.writer.settle(msg.id, token, rejection.status, reason=rejection.reason, smsc=self.name)

    def invalid(self, row_id: int, token: str, exc: BaseException) -> None:
        """A row that could not be prepared: rejected alone, with the error for people to read."""
        metrics.REJECTED.labels(Reason.INVALID_ROW).inc()
        detail = error_text(exc, DETAIL_CHARS)
        log.warning("row cannot be prepared; rejected", extra={"row": row_id, "smsc": self.name, "error": detail})
        self.writer.settle(row_id, token, Status.REJECTED, reason=Reason.INVALID_ROW, smsc=self.name, detail=detail)
