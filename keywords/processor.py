"""MO processor: assembles stored MO parts, stores each message once, runs its keyword, records consent and
enqueues the reply, all in one transaction per batch.

Rules of this module:

* Nothing is lost. The parts were acknowledged to the SMSC when they were committed (`mo_part`); they are deleted
  in the transaction that stores their message, so a rollback keeps them for the next batch.
* One bad MO never holds up the others. The batch runs inside a savepoint; when it fails with an error that is not
  about the connection (a value Postgres refuses, a bug on one input), it is run again one MO per savepoint, in
  arrival order. An MO that fails on its own is quarantined: a `quarantine` row (kind 'mo', its user data, its
  fields as NUL-free text, the error) and an `inbound_message` row with intent 'other' and a note naming the
  error, so it is still announced; its parts are deleted with the batch. Connection-level errors (link lost,
  timeout, serialization failure) roll the whole batch back for a later try: they say nothing about the data.
* Duplicates: an MO is a duplicate (the SMSC sent it again because our ack was lost) only when it is identical
  (same SMSC, sender, short code and text) to the *most recent* earlier MO from that sender to that short code,
  received within `inbound.dedup_window` before it. So STOP, START, STOP from one phone are three messages and
  each takes effect; STOP, STOP is one message and a duplicate. A duplicate is stored with intent 'duplicate'
  and gets no reply, but a revocation in it (an opt-out word, or a custom keyword that leaves a list) is applied
  again and recorded in the ledger: a re-delivery cannot be told apart from a person sending STOP twice, every
  revocation counts, and the SQL is idempotent. A duplicate opt-in, JOIN or HELP is not applied again: its
  original was, and a change made meanwhile through another channel (a CRM opt-out) must not be undone by a
  re-delivered old START.
* One confirmation: a STOP from a number already opted out is recorded (consent_event) and answered only with
  `templates.already_opted_out` (silence by default).
* A sender is a number only when Python and SQL agree: `normalise_number` must give digits that
  `smsgw_msisdn` accepts (`^[1-9][0-9]{6,14}$`); otherwise the MO is stored as 'other' / invalid_sender.
* Short codes are compared in the one form of `short_code_key` (matcher, consent tables, replies).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import asyncpg
from prometheus_client import Counter

from gateway import metrics
from gateway.clean import clean_text, error_text, fields_json
from gateway.message import normalise_number
from gateway.settings import InboundSettings
from gateway.smpp.gsm import decode_short_message
from keywords import sql
from keywords.config import ShortCodeKeywords
from keywords.consent_watch import short_code_key
from keywords.matcher import Intent, KeywordMatcher, Match
from keywords.templates import reply_for

log = logging.getLogger(__name__)

MO_HANDLED = Counter("smsgw_mo_handled", "MOs stored and handled, by intent", ["intent"])
MO_QUARANTINED = Counter("smsgw_mo_quarantined", "MOs Postgres refused, kept in the quarantine table")

DUPLICATE: Final = "duplicate"
# What smsgw_msisdn (migration 0002) accepts; a sender Python reads as a number but SQL refuses is invalid.
_SQL_MSISDN: Final = re.compile(r"[1-9][0-9]{6,14}")
# Errors that say nothing about the MOs: the whole batch is tried again later, its parts still stored. Not
# asyncpg.InterfaceError: its DataError subclass is a value that cannot be encoded, i.e. about one MO; a closed
# link is caught by `conn.is_closed()` instead.
_TRANSIENT: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.TransactionRollbackError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.LockNotAvailableError,
)


@dataclass(frozen=True, slots=True)
class AssembledMo:
    smsc: str
    source: str
    short_code: str
    text: str
    data_coding: int
    esm_class: int
    raw: bytes
    parts: int
    incomplete: bool
    received_at: datetime
    first_part_id: int  # arrival order: parts committed in one flush share received_at


def assemble(parts: list[asyncpg.Record]) -> AssembledMo:
    """Join the parts of one MO in sequence order (duplicates of a part count once)."""
    by_seq = {p["seq"]: p for p in parts}
    ordered = [by_seq[s] for s in sorted(by_seq)]
    first = ordered[0]
    raw = b"".join(p["payload"] for p in ordered)
    # Decode the joined octets, not each part: a UCS-2 surrogate pair may straddle two parts.
    return AssembledMo(
        smsc=first["smsc"],
        source=first["source"],
        short_code=short_code_key(first["destination"]),  # parts stored before 0005 may carry a '+'
        text=decode_short_message(raw, first["data_coding"]).replace("\x00", "\ufffd"),
        data_coding=first["data_coding"],
        esm_class=first["esm_class"],
        raw=raw,
        parts=len(ordered),
        incomplete=len(ordered) < first["total"],
        received_at=min(p["received_at"] for p in ordered),
        first_part_id=min(p["id"] for p in ordered),
    )


class MoProcessor:
    """Owns one task; `wake()` after MO parts were committed, plus a fallback poll."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        matcher: KeywordMatcher,
        settings: InboundSettings,
        *,
        default_region: str,
    ) -> None:
        self._pool = pool
        self._matcher = matcher
        self._settings = settings
        self._region = default_region
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mo-processor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def sync_lists(self, configs: dict[str, ShortCodeKeywords]) -> None:
        """Make `subscriber_list` hold every configured list (lists are never deleted: evidence refers to them)."""
        async with self._pool.acquire() as conn, conn.transaction():
            for short_code, cfg in configs.items():
                for pl in cfg.lists:
                    await conn.execute(
                        sql.SYNC_LIST, short_code_key(short_code), pl.name, pl.program, pl.frequency, pl.marketing
                    )

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                while await self.process_batch() >= self._settings.batch:
                    pass  # a full batch: more may be waiting
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # only connection-level errors get here; the parts stay stored
                log.warning("MO batch failed; will retry", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def process_batch(self) -> int:
        """Handle the MOs whose parts are complete (or timed out); return how many were handled or quarantined.

        Raises:
            asyncpg.PostgresError, OSError, TimeoutError: only errors of the connection or the server (see
                `_TRANSIENT`); the batch is rolled back and its parts stay stored.
        """
        async with self._pool.acquire(timeout=10) as conn, conn.transaction():
            rows = await conn.fetch(
                sql.TAKE_GROUPS, self._settings.reassembly_timeout, self._settings.batch, timeout=30
            )
            if not rows:
                return 0
            groups: dict[tuple[str, str, str, int, int, int], list[asyncpg.Record]] = defaultdict(list)
            for r in rows:
                single = r["id"] if r["total"] == 1 else 0
                groups[(r["smsc"], r["source"], r["destination"], r["ref"], r["total"], single)].append(r)
            mos = sorted((assemble(parts) for parts in groups.values()), key=lambda m: (m.received_at, m.first_part_id))
            try:
                async with conn.transaction():  # a savepoint: a failure leaves the parts taken above in place
                    plans = await self._handle(conn, mos)
            except Exception as exc:
                if _is_transient(exc, conn):
                    raise
                log.warning(
                    "MO batch refused; handling its MOs one by one",
                    extra={"mos": len(mos), "error": error_text(exc)},
                )
                plans = await self._handle_one_by_one(conn, mos)
            await conn.execute("SELECT pg_notify('smsgw_inbound', '')")
        for plan in plans:
            MO_HANDLED.labels(plan.intent).inc()
            _count_consent(plan)
        return len(plans)

    async def _handle(self, conn: asyncpg.Connection, mos: list[AssembledMo]) -> list[_Plan]:
        plans = await self._plan(conn, mos)
        await self._store(conn, plans)
        await self._apply(conn, plans)
        return plans

    async def _handle_one_by_one(self, conn: asyncpg.Connection, mos: list[AssembledMo]) -> list[_Plan]:
        """Each MO in its own savepoint, in arrival order (so each sees the ones before it for dedup); an MO that
        still fails is quarantined."""
        plans: list[_Plan] = []
        for mo in mos:
            try:
                async with conn.transaction():
                    plans += await self._handle(conn, [mo])
            except Exception as exc:
                if _is_transient(exc, conn):
                    raise
                plans.append(await self._quarantine(conn, mo, exc))
        return plans

    async def _quarantine(self, conn: asyncpg.Connection, mo: AssembledMo, exc: BaseException) -> _Plan:
        """Keep an MO that Postgres refused: in `quarantine` always, and in `inbound_message` (intent 'other',
        the error in `note`) when that row can be written, so that followers still see it."""
        error = error_text(exc)
        MO_QUARANTINED.inc()
        log.error(
            "MO quarantined",
            extra={"smsc": mo.smsc, "msisdn": clean_text(mo.source), "short_code": clean_text(mo.short_code),
                   "error": error},
        )
        fields = {
            "source": mo.source,
            "short_code": mo.short_code,
            "text": mo.text,
            "data_coding": mo.data_coding,
            "esm_class": mo.esm_class,
            "parts": mo.parts,
            "incomplete": mo.incomplete,
            "received_at": mo.received_at.isoformat(),
        }
        as_text = fields_json(fields)
        try:
            async with conn.transaction():
                await conn.execute(sql.QUARANTINE_MO, clean_text(mo.smsc), mo.raw, as_text, error)
        except Exception as again:
            if _is_transient(again, conn):
                raise
            # The decoded fields themselves were refused: the raw octets and the error are enough to look at.
            async with conn.transaction():
                await conn.execute(sql.QUARANTINE_MO, None, mo.raw, "{}", error)
        note = f"quarantined: {error}"
        try:
            async with conn.transaction():
                mo_id = (await conn.fetch(sql.NEXT_INBOUND_IDS, 1))[0][0]
                await self._store(conn, [_Plan(mo, mo_id, None, Intent.OTHER.value, note=note)])
        except Exception as again:
            if _is_transient(again, conn):
                raise
            log.error("quarantined MO kept in quarantine only", extra={"error": error_text(again)})
        return _Plan(mo, 0, None, "quarantined", note=note)  # for the metrics of the batch

    def _msisdn(self, source: str) -> str | None:
        """E.164 digits of a sender, or None when Python or SQL (smsgw_msisdn) would not take it as a number."""
        msisdn = normalise_number(source, self._region)
        if msisdn is None or not _SQL_MSISDN.fullmatch(msisdn):
            return None
        return msisdn

    async def _plan(self, conn: asyncpg.Connection, mos: list[AssembledMo]) -> list[_Plan]:
        """Decide what each MO is (duplicate, not actionable, or a keyword), with one duplicate lookup."""
        window = self._settings.dedup_window
        lasts = await conn.fetch(
            sql.LAST_MOS,
            [m.smsc for m in mos],
            [m.source for m in mos],
            [m.short_code for m in mos],
            [m.received_at for m in mos],
            window,
        )
        ids = [r[0] for r in await conn.fetch(sql.NEXT_INBOUND_IDS, len(mos))]
        # The most recent MO of each (smsc, sender, short code) so far in this batch: newer than anything stored.
        latest: dict[tuple[str, str, str], tuple[int, str, datetime]] = {}
        plans: list[_Plan] = []
        for mo, last, mo_id in zip(mos, lasts, ids, strict=True):
            key = (mo.smsc, mo.source, mo.short_code)
            previous = latest.get(key)
            if previous is None and last["id"] is not None:
                previous = (last["id"], last["body"], last["received_at"])
            latest[key] = (mo_id, mo.text, mo.received_at)
            dup_of = None
            if (
                previous is not None
                and previous[1] == mo.text
                and mo.received_at - previous[2] < timedelta(seconds=window)
            ):
                dup_of = previous[0]
            msisdn = self._msisdn(mo.source)
            if msisdn is None or mo.incomplete:
                # Not acted on: an invalid sender cannot be opted in or out; a partial text may not mean what
                # the whole did. Both are stored and announced for a person or another service to look at.
                note = "invalid_sender" if msisdn is None else "incomplete"
                if dup_of is not None:
                    plans.append(_Plan(mo, mo_id, msisdn, DUPLICATE, note=f"duplicate of inbound_message {dup_of}"))
                else:
                    plans.append(_Plan(mo, mo_id, msisdn, Intent.OTHER.value, note=note))
                continue
            match = self._matcher.match(mo.short_code, mo.text)
            if dup_of is None:
                plans.append(_Plan(mo, mo_id, msisdn, match.intent.value, match=match))
            elif _revokes(match):
                note = f"duplicate of inbound_message {dup_of}; opt-out applied again, not answered"
                plans.append(_Plan(mo, mo_id, msisdn, DUPLICATE, match=match, note=note))
            else:
                plans.append(_Plan(mo, mo_id, msisdn, DUPLICATE, note=f"duplicate of inbound_message {dup_of}"))
        return plans

    async def _store(self, conn: asyncpg.Connection, plans: list[_Plan]) -> None:
        await conn.execute(
            sql.INSERT_MOS,
            [p.mo_id for p in plans],
            [p.mo.smsc for p in plans],
            [p.mo.source for p in plans],
            [p.mo.short_code for p in plans],
            [p.mo.text for p in plans],
            [p.mo.data_coding for p in plans],
            [p.mo.esm_class for p in plans],
            [p.mo.raw for p in plans],
            [p.mo.received_at for p in plans],
            [p.msisdn for p in plans],
            [p.mo.parts for p in plans],
            [p.mo.incomplete for p in plans],
            [p.intent for p in plans],
            [p.match.keyword if p.match else None for p in plans],
            [p.match.list_name if p.match else None for p in plans],
            [p.note for p in plans],
        )

    async def _apply(self, conn: asyncpg.Connection, plans: list[_Plan]) -> None:
        """Record consent effects and enqueue replies, in rounds that keep each number's messages in order."""
        actionable = [p for p in plans if p.match is not None]
        rounds: list[list[_Plan]] = []
        depth: dict[str, int] = {}
        for p in actionable:
            k = depth.get(p.msisdn or "", 0)
            depth[p.msisdn or ""] = k + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(p)
        for batch in rounds:
            await self._apply_round(conn, batch)

    async def _apply_round(self, conn: asyncpg.Connection, plans: list[_Plan]) -> None:
        # A duplicate carries a match only when it revokes (see the module rules): its opt-out / leave is applied,
        # nothing else is, and it is never answered.
        fresh = [p for p in plans if p.intent != DUPLICATE]
        opt_outs = [p for p in plans if p.match is not None and p.match.intent == Intent.OPT_OUT]
        helps = [p for p in fresh if p.intent == Intent.HELP]
        joins = [(p, p.match.list_name) for p in fresh if p.intent in (Intent.OPT_IN, Intent.JOIN) and p.match]
        leaves: list[tuple[_Plan, str]] = []
        for p in plans:
            custom = p.match.custom if p.match is not None and p.match.intent == Intent.CUSTOM else None
            if custom is not None and custom.join and p.intent != DUPLICATE:
                joins.append((p, custom.join))
            if custom is not None and custom.leave:
                leaves.append((p, custom.leave))
        newly_out: dict[int, bool] = {}
        if opt_outs:
            for r in await conn.fetch(sql.OPT_OUT_MANY, *_consent_columns(opt_outs)):
                newly_out[opt_outs[r["i"] - 1].mo_id] = r["changed"]
        if helps:
            await conn.execute(sql.HELP_MANY, *_consent_columns(helps))
        if joins:
            await conn.execute(sql.OPT_IN_MANY, *_list_columns(joins))
        if leaves:
            await conn.execute(sql.LEAVE_MANY, *_list_columns(leaves))
        replies: list[tuple[_Plan, str]] = []
        for p in fresh:
            assert p.match is not None
            if p.match.custom is not None and p.match.custom.forward_only:
                continue
            cfg = self._matcher.config_for(p.mo.short_code)
            # One confirmation only: a STOP from a number already opted out gets none (unless configured).
            text = reply_for(cfg, p.match, already_opted_out=not newly_out.get(p.mo_id, True))
            if text:
                replies.append((p, text))
        if replies:
            await conn.execute(
                sql.ENQUEUE_REPLIES,
                [p.mo.short_code for p, _ in replies],
                ["+" + (p.msisdn or "") for p, _ in replies],
                [text for _, text in replies],
                self._settings.reply_priority,
                [p.mo_id for p, _ in replies],
                [p.intent == Intent.OPT_OUT for p, _ in replies],
            )


@dataclass(slots=True)
class _Plan:
    mo: AssembledMo
    mo_id: int
    msisdn: str | None
    intent: str
    match: Match | None = None
    note: str | None = None


def _count_consent(plan: _Plan) -> None:
    """Opt-in / opt-out counters, after the commit: what `_apply_round` recorded for this MO."""
    match = plan.match
    if match is None:
        return
    if _revokes(match):
        metrics.OPT_OUTS.inc()
    if plan.intent != DUPLICATE and (
        match.intent in (Intent.OPT_IN, Intent.JOIN)
        or (match.intent == Intent.CUSTOM and match.custom is not None and bool(match.custom.join))
    ):
        metrics.OPT_INS.inc()


def _revokes(match: Match) -> bool:
    """An opt-out, or a custom keyword that leaves a list: applied even when the MO is a duplicate."""
    return match.intent == Intent.OPT_OUT or (
        match.intent == Intent.CUSTOM and match.custom is not None and bool(match.custom.leave)
    )


def _is_transient(exc: BaseException, conn: asyncpg.Connection) -> bool:
    """True for errors of the link or the server, which say nothing about the MOs being handled."""
    return isinstance(exc, _TRANSIENT) or conn.is_closed()


def _consent_columns(plans: list[_Plan]) -> list[list[object]]:
    return [
        [p.mo.short_code for p in plans],
        [p.msisdn for p in plans],
        [p.match.keyword if p.match else None for p in plans],
        [p.mo.text for p in plans],
        [p.mo_id for p in plans],
    ]


def _list_columns(items: list[tuple[_Plan, str | None]]) -> list[list[object]]:
    return [
        [p.mo.short_code for p, _ in items],
        [p.msisdn for p, _ in items],
        [list_name for _, list_name in items],
        [p.match.keyword if p.match else None for p, _ in items],
        [p.mo.text for p, _ in items],
        [p.mo_id for p, _ in items],
    ]
