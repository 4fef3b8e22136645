"""Batch completer: submit results, receipts and MOs collected in memory, written with one `unnest`
statement per kind every `flush_interval` (or sooner when `flush_max_rows` pile up).

Rule of this module: deliver_sm is acknowledged only after the transaction that stored it has
committed (the `after_commit` callbacks). A failed flush keeps everything for the next try: nothing is
dropped, and unacknowledged deliver_sm are redelivered by the SMSC if we die.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from gateway import metrics
from gateway.db import outbound_sql as sql

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Batch:
    marks: list[tuple[int, str, str, str, str, str]] = field(default_factory=list)
    part_marks: list[tuple[int, str, str, int, int, str, str, str]] = field(default_factory=list)
    settles: list[tuple[int, str, str, float, int | None, str | None, int, str | None, str | None]] = field(
        default_factory=list
    )
    receipts: list[tuple[str, str, str, str, str, int | None, str]] = field(default_factory=list)
    inbound: list[tuple[str, str, str, str, int, int, bytes]] = field(default_factory=list)
    mo_parts: list[tuple[str, str, str, int, int, int, int, int, bytes]] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    def __len__(self) -> int:
        kinds = (self.marks, self.part_marks, self.settles, self.receipts, self.inbound, self.mo_parts)
        return sum(len(k) for k in kinds)


class ResultWriter:
    """Owns the buffers and the flush task. All `add_*` methods are cheap and never block."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        flush_interval: float = 0.015,
        flush_max_rows: int = 500,
        on_mo_committed: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._on_mo_committed = on_mo_committed
        self._interval = flush_interval
        self._max_rows = flush_max_rows
        self._batch = _Batch()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- producers -----------------------------------------------------------------------------------

    def mark_submitted(self, row_id: int, token: str, smsc: str, message_id: str, msgid_key: str, bind: str) -> None:
        self._batch.marks.append((row_id, token, smsc, message_id, msgid_key, bind))
        self._poke()

    def mark_parts_submitted(
        self, row_id: int, token: str, smsc: str, total: int, parts: list[tuple[int, str, str]], bind: str
    ) -> None:
        """Every part of a multi-part message accepted: `parts` is (seq, message id, key) per part."""
        for seq, message_id, key in parts:
            self._batch.part_marks.append((row_id, token, smsc, seq, total, message_id, key, bind))
        self._poke()

    def settle(
        self,
        row_id: int,
        token: str,
        status: str,
        *,
        delay: float = 0.0,
        error_code: int | None = None,
        reason: str | None = None,
        attempts_delta: int = 0,
        bind: str | None = None,
        smsc: str | None = None,
    ) -> None:
        """End a claim: `status` 'queued' (retry after `delay` s) or a final status with its reason."""
        self._batch.settles.append((row_id, token, status, delay, error_code, reason, attempts_delta, bind, smsc))
        self._poke()

    def receipt(
        self,
        smsc: str,
        msgid_key: str,
        message_id: str,
        status: str,
        stat: str,
        error_code: int | None,
        reason: str,
        ack: Callable[[], None],
    ) -> None:
        self._batch.receipts.append((smsc, msgid_key, message_id, status, stat, error_code, reason))
        self._batch.after_commit.append(ack)
        self._poke()

    def inbound(
        self,
        smsc: str,
        source: str,
        destination: str,
        body: str,
        data_coding: int,
        esm_class: int,
        raw: bytes,
        ack: Callable[[], None],
    ) -> None:
        self._batch.inbound.append((smsc, source, destination, body, data_coding, esm_class, raw))
        self._batch.after_commit.append(ack)
        self._poke()

    def mo_part(
        self,
        smsc: str,
        source: str,
        destination: str,
        ref: int,
        total: int,
        seq: int,
        data_coding: int,
        esm_class: int,
        payload: bytes,
        ack: Callable[[], None],
    ) -> None:
        """One part of an MO (a plain MO is part 1 of 1); the MO processor assembles and handles it."""
        self._batch.mo_parts.append((smsc, source, destination, ref, total, seq, data_coding, esm_class, payload))
        self._batch.after_commit.append(ack)
        self._poke()

    def _poke(self) -> None:
        self._idle.clear()
        if len(self._batch) >= self._max_rows:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._batch)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="result-writer")

    async def drain(self, timeout: float) -> bool:
        """Wait until everything buffered so far is committed; False on timeout."""
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float) -> None:
        """Flush what is left (bounded), then stop the task."""
        await self.drain(timeout)
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if len(self._batch):
            log.error("result writer stopped with unwritten results", extra={"rows": len(self._batch)})

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if not len(self._batch):
                self._idle.set()
                continue
            batch, self._batch = self._batch, _Batch()
            try:
                await self._write(batch)
            except Exception as exc:  # any failure: keep the batch and retry; this task must never die
                metrics.FLUSH_ERRORS.inc()
                log.warning(
                    "result flush failed; will retry",
                    extra={"error": f"{type(exc).__name__}: {exc}", "rows": len(batch)},
                )
                self._requeue(batch)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            if batch.mo_parts and self._on_mo_committed is not None:
                self._on_mo_committed()
            for ack in batch.after_commit:
                try:
                    ack()
                except Exception:
                    log.exception("ack callback failed")
            if not len(self._batch):
                self._idle.set()

    def _requeue(self, batch: _Batch) -> None:
        # Keep order: the failed batch goes before what arrived meanwhile.
        new = self._batch
        batch.marks += new.marks
        batch.part_marks += new.part_marks
        batch.settles += new.settles
        batch.receipts += new.receipts
        batch.inbound += new.inbound
        batch.mo_parts += new.mo_parts
        batch.after_commit += new.after_commit
        self._batch = batch

    async def _write(self, b: _Batch) -> None:
        async with self._pool.acquire(timeout=10) as conn:
            try:
                await self._write_on(conn, b)
            except Exception:
                # After a broken link asyncpg can leave the connection mid-operation; never reuse it.
                conn.terminate()
                raise

    async def _write_on(self, conn: asyncpg.Connection, b: _Batch) -> None:
        async with conn.transaction():
            # Marks first: a receipt in this same batch may be for a row marked here.
            if b.marks:
                await conn.execute(sql.MARK_SUBMITTED, *_columns(b.marks, 6), timeout=30)
            if b.part_marks:
                await conn.execute(sql.MARK_PARTS_SUBMITTED, *_columns(b.part_marks, 8), timeout=30)
            if b.settles:
                await conn.execute(sql.SETTLE, *_columns(b.settles, 9), timeout=30)
            if b.receipts:
                await conn.execute(sql.RECORD_RECEIPTS, *_columns(b.receipts, 7), timeout=30)
            if b.inbound:
                await conn.execute(sql.INSERT_INBOUND, *_columns(b.inbound, 7), timeout=30)
                await conn.execute("SELECT pg_notify($1, '')", sql.INBOUND_CHANNEL, timeout=30)
            if b.mo_parts:
                await conn.execute(sql.INSERT_MO_PARTS, *_columns(b.mo_parts, 9), timeout=30)


def _columns(rows: list[tuple], width: int) -> list[list]:  # type: ignore[type-arg]
    """Rows to the column arrays that `unnest` takes."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]
