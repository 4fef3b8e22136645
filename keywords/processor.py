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
from datetime import datetime

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
        short_code=first["destination"],
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
            plans = await self._plan(conn, mos)
            await self._store(conn, plans)
            await self._apply(conn, plans)
            await conn.execute("SELECT pg_notify('smsgw_inbound', '')")
        for plan in plans:
            MO_HANDLED.labels(plan.intent).inc()
        return len(plans)

    async def _plan(self, conn: asyncpg.Connection, mos: list[AssembledMo]) -> list[_Plan]:
        """Decide what each MO is (duplicate, not actionable, or a keyword), with one duplicate lookup."""
        originals = await conn.fetch(
            sql.FIND_DUPLICATES,
            [m.smsc for m in mos],
            [m.source for m in mos],
            [m.short_code for m in mos],
            [m.text for m in mos],
            self._settings.dedup_window,
        )
        ids = [r[0] for r in await conn.fetch(sql.NEXT_INBOUND_IDS, len(mos))]
        seen: dict[tuple[str, str, str, str], int] = {}
        plans: list[_Plan] = []
        for mo, original, mo_id in zip(mos, originals, ids, strict=True):
            msisdn = normalise_number(mo.source, self._region)
            key = (mo.smsc, mo.source, mo.short_code, mo.text)
            dup_of = original["original"] or seen.get(key)
            seen.setdefault(key, mo_id)
            if dup_of is not None:
                plans.append(_Plan(mo, mo_id, msisdn, "duplicate", note=f"duplicate of inbound_message {dup_of}"))
            elif msisdn is None or mo.incomplete:
                # Not acted on: an invalid sender cannot be opted in or out; a partial text may not mean what
                # the whole did. Both are stored and announced for a person or another service to look at.
                note = "invalid_sender" if msisdn is None else "incomplete"
                plans.append(_Plan(mo, mo_id, msisdn, Intent.OTHER.value, note=note))
            else:
                match = self._matcher.match(mo.short_code, mo.text)
                plans.append(_Plan(mo, mo_id, msisdn, match.intent.value, match=match))
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
        opt_outs = [p for p in plans if p.intent == Intent.OPT_OUT]
        helps = [p for p in plans if p.intent == Intent.HELP]
        joins = [(p, p.match.list_name) for p in plans if p.intent in (Intent.OPT_IN, Intent.JOIN) and p.match]
        leaves: list[tuple[_Plan, str]] = []
        for p in plans:
            custom = p.match.custom if p.match is not None and p.intent == Intent.CUSTOM else None
            if custom is not None and custom.join:
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
        for p in plans:
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
