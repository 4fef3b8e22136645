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
from collections.abc import Mapping
from datetime import UTC, datetime

import asyncpg

from gateway import metrics
from gateway.clean import error_text
from gateway.content import ContentResult, check_content
from gateway.db import outbound_sql
from gateway.frequency_caps import Allowed, ListCap, cap_decision, caps_from_keywords, number_keys, short_code_key
from gateway.message import ClaimedMessage, Rejection, consent_refusal, prepare
from gateway.quiet_hours import next_allowed
from gateway.response_outcome import PartGroup
from gateway.results import ResultWriter
from gateway.send_buffer import Item, Lease
from gateway.settings import DispatcherSettings, SmscSettings
from gateway.status import Reason, Status
from keywords import address
from keywords import sql as consent_sql
from keywords.config import ShortCodeKeywords

log = logging.getLogger(__name__)

# Characters of an exception kept in a row's `detail`.
DETAIL_CHARS = 500
# Seconds a capped row waits in the queue when its frequency cap could not be looked up.
_CAP_LOOKUP_RETRY_S = 1.0


class Admission:
    """Turns one SMSC's claimed rows into ready items; settles the rows that cannot be sent."""

    def __init__(
        self, name: str, smsc: SmscSettings, settings: DispatcherSettings, pool: asyncpg.Pool, writer: ResultWriter,
        *, keywords: Mapping[str, ShortCodeKeywords] | None = None,
    ) -> None:
        self.name = name
        self.smsc = smsc
        self.settings = settings
        self.pool = pool
        self.writer = writer
        self.keywords = keywords or {}
        # (short code, list) -> its frequency caps, for the lists that have any.
        self.caps: dict[tuple[str, str], ListCap] = caps_from_keywords(self.keywords)
        # Short codes with content checks (a [keywords."X".content] table), in their one form; gateway/content.py.
        self.content = {address.short_code_key(c): cfg for c, cfg in self.keywords.items() if cfg.content is not None}

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
                elif self._outside_quiet_hours(item, now, check["time_zone"]):
                    ready.append(item)
            except Exception as exc:
                self.invalid(item.msg.id, item.token, exc)
        if self.caps:
            ready = await self._frequency_caps(ready, [r["id"] for _, r in rows], now)
        return ready

    def _prepare_one(self, record: asyncpg.Record, lease: Lease, now: datetime) -> Item | None:
        try:
            msg = ClaimedMessage.model_validate(dict(record))
            result = prepare(msg, self.smsc, self.settings.default_region, now, self.settings.max_segments)
            content = self._check_content(msg) if not isinstance(result, Rejection) else None
            if content is not None and (failure := content.first_failure) is not None:
                metrics.REJECTED.labels(failure.rule.reason).inc()
                self.writer.settle(msg.id, lease.token, Status.REJECTED, reason=failure.rule.reason, smsc=self.name,
                                   detail=failure.detail[:DETAIL_CHARS])
                return None
            if content is not None and content.text != msg.body:  # the appended opt-out is what is sent
                msg = msg.model_copy(update={"body": content.text})
                result = prepare(msg, self.smsc, self.settings.default_region, now, self.settings.max_segments)
        except Exception as exc:
            self.invalid(lease.row_id, lease.token, exc)
            return None
        if isinstance(result, Rejection):
            self.reject(msg, lease.token, result)
            return None
        group = PartGroup(len(result)) if len(result) > 1 else None
        return Item(msg, lease, list(enumerate(result, 1)), group, admitted_at=0.0)

    def _check_content(self, msg: ClaimedMessage) -> ContentResult | None:
        """The short code's content rules applied to the row (None: no checks: no content table, or a reply)."""
        cfg = self.content.get(address.short_code_key(msg.source))
        if cfg is None or cfg.content is None or msg.inbound_message_id is not None:
            return None
        programs = [cfg.program]
        if msg.list_name is not None:
            programs += [pl.program for pl in cfg.lists if pl.name == msg.list_name]
        return check_content(
            msg.body, msg.message_class, cfg.content, programs,
            latin1=self.smsc.latin1, smart=self.smsc.smart_encoding, method=self.smsc.long_messages,
        )

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

    def _cap_of(self, item: Item) -> ListCap | None:
        msg = item.msg
        if msg.message_class != "marketing" or msg.list_name is None:
            return None  # transactional messages and replies are never capped
        return self.caps.get((short_code_key(msg.source), msg.list_name))

    async def _frequency_caps(self, items: list[Item], batch_ids: list[int], now: datetime) -> list[Item]:
        """Marketing over its list's cap waits (queued, attempt not counted) or is rejected; see frequency_caps.

        One lookup for the batch: what was sent in the last 7 days and what is in flight elsewhere; the rows of
        this batch that pass are counted in memory, in queue order (priority, then id).

        When the lookup fails (the database is down), the capped rows go back to the queue and the others go on:
        nothing is raised, so rows this batch already settled are not given back a second time.
        """
        # In queue order (the claim returns its rows in no particular order): the row written first goes first.
        capped = sorted(
            ((item, cap) for item in items if (cap := self._cap_of(item)) is not None),
            key=lambda ic: (-ic[0].msg.priority, ic[0].msg.id),
        )
        if not capped:
            return items
        idx: list[int] = []
        codes: list[str] = []
        lists: list[str] = []
        keys: list[str] = []
        for i, (item, _) in enumerate(capped):
            for key in number_keys(item.msg.destination, item.parts[0][1].destination_addr):
                idx.append(i)
                codes.append(short_code_key(item.msg.source))
                lists.append(item.msg.list_name or "")
                keys.append(key)
        try:
            found = await self.pool.fetch(
                outbound_sql.FREQUENCY_CAP_SENT, idx, codes, lists, keys, batch_ids, now, timeout=30
            )
        except Exception as exc:  # the database may be restarting: only the capped rows wait, the rest go
            log.warning("frequency cap lookup failed; capped rows go back to the queue",
                        extra={"smsc": self.name, "rows": len(capped), "error": error_text(exc, DETAIL_CHARS)})
            for item, _ in capped:
                self.writer.settle(item.msg.id, item.token, Status.QUEUED, delay=_CAP_LOOKUP_RETRY_S,
                                   reason=Reason.CLAIM_FAILED, attempts_delta=-1)
            held = {item.msg.id for item, _ in capped}
            return [item for item in items if item.msg.id not in held]
        sent: dict[int, list[datetime]] = {}
        for r in found:
            sent.setdefault(r["i"], []).append(now if r["submitted_at"] is None else r["submitted_at"])
        passed: dict[tuple[str, str, str], int] = {}  # rows of this batch that passed, per short code/list/number
        refused: set[int] = set()
        for i, (item, cap) in enumerate(capped):
            who = (short_code_key(item.msg.source), item.msg.list_name or "", item.parts[0][1].destination_addr)
            times = sent.get(i, []) + [now] * passed.get(who, 0)
            decision = cap_decision(times, now, cap.max_per_day, cap.max_per_week)
            if isinstance(decision, Allowed):
                passed[who] = passed.get(who, 0) + 1
                continue
            refused.add(item.msg.id)
            if cap.action == "reject":
                self.reject(item.msg, item.token, Rejection(Status.REJECTED, Reason.FREQUENCY_CAP))
            else:
                self.writer.settle(
                    item.msg.id, item.token, Status.QUEUED, delay=(decision.at - now).total_seconds(),
                    reason=Reason.FREQUENCY_CAP, attempts_delta=-1,
                )
        return [item for item in items if item.msg.id not in refused]

    def _outside_quiet_hours(self, item: Item, now: datetime, time_zone: str | None) -> bool:
        """Marketing to a recipient whose local time is in quiet hours waits (not fails) until it is not.
        `time_zone`: the subscriber's own zone attribute, if any (else the number's zones)."""
        s = self.settings
        if not s.quiet_hours or item.msg.message_class != "marketing":
            return True
        when = next_allowed(
            item.parts[0][1].destination_addr, now, start=s.quiet_hours_start, end=s.quiet_hours_end,
            default_tz=s.quiet_hours_default_tz, time_zone=time_zone,
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
