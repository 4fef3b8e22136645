"""MO processor: assembles stored MO parts, stores each message once, runs its keyword, records consent and
enqueues the reply, all in one transaction per batch.

Rule of this module: the parts were acknowledged to the SMSC when they were committed (`mo_part`); from
there on nothing is lost: a failed batch rolls back and its parts are taken again. A message the SMSC sent
twice (our ack was lost) is stored as a duplicate and handled once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter

from gateway.message import normalise_number
from gateway.settings import InboundSettings
from gateway.smpp.gsm import decode_short_message
from keywords import sql
from keywords.config import ShortCodeKeywords
from keywords.matcher import Intent, KeywordMatcher, Match
from keywords.templates import reply_for

log = logging.getLogger(__name__)

MO_HANDLED = Counter("smsgw_mo_handled", "MOs stored and handled, by intent", ["intent"])


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
    received_at: object


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
        short_code=first["destination"],
        text=decode_short_message(raw, first["data_coding"]).replace("\x00", "\ufffd"),
        data_coding=first["data_coding"],
        esm_class=first["esm_class"],
        raw=raw,
        parts=len(ordered),
        incomplete=len(ordered) < first["total"],
        received_at=min(p["received_at"] for p in ordered),
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
                    await conn.execute(sql.SYNC_LIST, short_code, pl.name, pl.program, pl.frequency, pl.marketing)

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
            except Exception as exc:  # the parts stay stored; try again after a pause
                log.warning("MO batch failed; will retry", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def process_batch(self) -> int:
        """Handle the MOs whose parts are complete (or timed out); return how many were handled."""
        handled: list[str] = []
        async with self._pool.acquire(timeout=10) as conn, conn.transaction():
            rows = await conn.fetch(
                sql.TAKE_GROUPS, self._settings.reassembly_timeout, self._settings.batch, timeout=30
            )
            if not rows:
                return 0
            groups: dict[tuple[str, str, str, int, int], list[asyncpg.Record]] = defaultdict(list)
            for r in rows:
                groups[(r["smsc"], r["source"], r["destination"], r["ref"], r["total"])].append(r)
            for parts in groups.values():
                handled.append(await self._handle(conn, assemble(parts)))
            await conn.execute("SELECT pg_notify('smsgw_inbound', '')")
        for intent in handled:
            MO_HANDLED.labels(intent).inc()
        return len(handled)

    async def _handle(self, conn: asyncpg.Connection, mo: AssembledMo) -> str:
        msisdn = normalise_number(mo.source, self._region)
        dup = await conn.fetchval(
            sql.FIND_DUPLICATE, mo.smsc, mo.source, mo.short_code, mo.text, self._settings.dedup_window
        )
        if dup is not None:
            await self._store(conn, mo, msisdn, "duplicate", None, None, f"duplicate of inbound_message {dup}")
            return "duplicate"
        if msisdn is None or mo.incomplete:
            # Not acted on: an invalid sender cannot be opted in or out; a partial text may not mean what the
            # whole did. Both are stored and announced for a person or another service to look at.
            note = "invalid_sender" if msisdn is None else "incomplete"
            await self._store(conn, mo, msisdn, Intent.OTHER.value, None, None, note)
            return Intent.OTHER.value
        match = self._matcher.match(mo.short_code, mo.text)
        cfg = self._matcher.config_for(mo.short_code)
        mo_id = await self._store(conn, mo, msisdn, match.intent.value, match.keyword, match.list_name, None)
        reply = await self._apply(conn, mo, msisdn, mo_id, match, cfg)
        if reply:
            await conn.execute(
                sql.ENQUEUE_REPLY, mo.short_code, "+" + msisdn, reply, self._settings.reply_priority, mo_id,
                match.intent is Intent.OPT_OUT,
            )
        return match.intent.value

    async def _apply(
        self, conn: asyncpg.Connection, mo: AssembledMo, msisdn: str, mo_id: int, match: Match, cfg: ShortCodeKeywords
    ) -> str | None:
        """Record the consent effect of the keyword; return the reply text (None: no reply)."""
        sc, kw, text = mo.short_code, match.keyword, mo.text
        if match.intent is Intent.OPT_OUT:
            newly_out = await conn.fetchval(sql.OPT_OUT, sc, msisdn, kw, text, mo_id)
            # One confirmation only: a STOP from a number already opted out gets none (unless configured).
            return reply_for(cfg, match, already_opted_out=not newly_out)
        if match.intent is Intent.HELP:
            await conn.execute(sql.HELP_EVENT, msisdn, sc, kw, text, mo_id)
        elif match.intent in (Intent.OPT_IN, Intent.JOIN):
            await conn.fetchval(sql.OPT_IN, sc, msisdn, match.list_name, kw, text, mo_id)
        elif match.intent is Intent.CUSTOM and match.custom is not None:
            if match.custom.join:
                await conn.fetchval(sql.OPT_IN, sc, msisdn, match.custom.join, kw, text, mo_id)
            if match.custom.leave:
                await conn.fetchval(sql.LEAVE_LIST, sc, msisdn, match.custom.leave, kw, text, mo_id)
            if match.custom.forward_only:
                return None
        return reply_for(cfg, match)

    async def _store(
        self,
        conn: asyncpg.Connection,
        mo: AssembledMo,
        msisdn: str | None,
        intent: str,
        keyword: str | None,
        list_name: str | None,
        note: str | None,
    ) -> int:
        mo_id: int = await conn.fetchval(
            sql.INSERT_MO, mo.smsc, mo.source, mo.short_code, mo.text, mo.data_coding, mo.esm_class, mo.raw,
            mo.received_at, msisdn, mo.parts, mo.incomplete, intent, keyword, list_name, note,
        )
        return mo_id
