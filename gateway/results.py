"""Batch completer: submit results, receipts and MOs collected in memory, written with one `unnest`
statement per kind every `flush_interval` (or sooner when `flush_max_rows` pile up).

Rule of this module: deliver_sm is acknowledged only after the transaction that stored it has
committed (each item's ack runs after its commit). A flush that fails because of the database (down,
restarting, locked, timed out) keeps everything for the next try, whole, with back-off: nothing is dropped,
and unacknowledged deliver_sm are redelivered by the SMSC if we die. A flush that fails because of a value
(a data error: `is_data_error`) is split in halves until the item Postgres refuses is alone; that item goes to
the `quarantine` table (kind, SMSC, raw bytes, fields as JSON text, error) and only then is it acknowledged,
while the rest commit: no batch is retried whole forever because of what is in it. A mark or settle that
cannot be written is quarantined and its row settled by `SETTLE_INVALID_RESULT` ('submitted' for a mark: the
SMSC has the message, so it is never sent again and ends 'expired' without a receipt; 'failed' for a settle),
reason `invalid_result`, the error in `detail`; when even that is refused, the lease reaper ends the claim.
Memory is bounded: above `max_pending` rows (buffered plus being written) `flow` pauses SMPP reading.
Rows are named tuples whose fields are, in order, the columns of their statement's `unnest(...) AS t(...)`
(a test parses the SQL to check it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from gateway import metrics, receipt_ids
from gateway.clean import ERROR_CHARS, clean_optional_text, clean_text, error_text, fields_json
from gateway.db import outbound_sql as sql
from gateway.flow_control import FlowControl
from gateway.status import Reason, Status

log = logging.getLogger(__name__)


Ack = Callable[[], None]


# -- rows: one per item, fields in the order of the statement's `unnest(...) AS t(...)` columns -------------


class MarkRow(NamedTuple):
    """An accepted single-part submit (MARK_SUBMITTED)."""

    id: int
    token: str
    smsc: str
    message_id: str
    msgid_key: str
    bind_name: str


class PartMarkRow(NamedTuple):
    """One accepted part of a multi-part message (MARK_PARTS_SUBMITTED)."""

    id: int
    token: str
    smsc: str
    seq: int
    total: int
    message_id: str
    msgid_key: str
    bind_name: str


class SettleRow(NamedTuple):
    """The end of a claim: back to the queue after `delay`, or a final status (SETTLE)."""

    id: int
    token: str
    status: str
    delay: float
    error_code: int | None
    reason: str | None
    attempts_delta: int
    bind_name: str | None
    smsc: str | None
    detail: str | None


class ReceiptRow(NamedTuple):
    """A final delivery receipt (RECORD_RECEIPTS): key0-key2 are its candidate keys, best first
    (gateway/smpp/receipt.py `receipt_keys`); `received_at` None means now (the sweeper keeps a parked one's)."""

    smsc: str
    key0: str
    key1: str | None
    key2: str | None
    message_id: str
    status: str
    receipt_stat: str
    error_code: int | None
    reason: str
    received_at: datetime | None = None


class InboundRow(NamedTuple):
    """A deliver_sm stored as it came (INSERT_INBOUND): an unparseable receipt."""

    smsc: str
    source: str
    destination: str
    body: str
    data_coding: int
    esm_class: int
    raw_short_message: bytes


class MoPartRow(NamedTuple):
    """One part of an MO (INSERT_MO_PARTS); a plain MO is part 1 of 1."""

    smsc: str
    source: str
    destination: str
    ref: int
    total: int
    seq: int
    data_coding: int
    esm_class: int
    payload: bytes


class QuarantineRow(NamedTuple):
    """Something Postgres refused, or a PDU that could not be turned into a row (INSERT_QUARANTINE)."""

    kind: str
    smsc: str | None
    raw: bytes | None
    fields: str  # a JSON object of text values (jsonb cannot hold U+0000: cleaned)
    error: str


Row = MarkRow | PartMarkRow | SettleRow | ReceiptRow | InboundRow | MoPartRow | QuarantineRow


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of batched write: its name (the quarantine `kind`), statement and row type."""

    name: str
    sql: str
    row: type[Row]


# Write order inside one transaction: marks first, since a receipt in the same batch may be for a row marked there.
KINDS: tuple[Kind, ...] = (
    Kind("mark", sql.MARK_SUBMITTED, MarkRow),
    Kind("part_mark", sql.MARK_PARTS_SUBMITTED, PartMarkRow),
    Kind("settle", sql.SETTLE, SettleRow),
    Kind("receipt", sql.RECORD_RECEIPTS, ReceiptRow),
    Kind("inbound", sql.INSERT_INBOUND, InboundRow),
    Kind("mo_part", sql.INSERT_MO_PARTS, MoPartRow),
    Kind("quarantine", sql.INSERT_QUARANTINE, QuarantineRow),
)
_MARK, _PART_MARK, _SETTLE, _RECEIPT, _INBOUND, _MO_PART, _QUARANTINE = range(len(KINDS))
_CLAIM_KINDS = frozenset({_MARK, _PART_MARK, _SETTLE})


class _Extra(NamedTuple):
    """What an item carries besides its row: the ack to send after commit, the raw bytes for a quarantine."""

    ack: Ack | None
    raw: bytes | None


_NO_EXTRA = _Extra(None, None)


@dataclass(slots=True)
class _Batch:
    """Items by kind (rows and their extras side by side), in arrival order within a kind."""

    rows: list[list[Any]] = field(default_factory=lambda: [[] for _ in KINDS])
    extras: list[list[_Extra]] = field(default_factory=lambda: [[] for _ in KINDS])
    size: int = 0

    def __len__(self) -> int:
        return self.size

    def add(self, kind: int, row: Row, extra: _Extra = _NO_EXTRA) -> None:
        self.rows[kind].append(row)
        self.extras[kind].append(extra)
        self.size += 1

    def extend(self, other: _Batch) -> None:
        """Append `other`'s items after this batch's own (order kept within each kind)."""
        for kind in range(len(KINDS)):
            self.rows[kind] += other.rows[kind]
            self.extras[kind] += other.extras[kind]
        self.size += other.size

    def entries(self) -> list[tuple[int, Row, _Extra]]:
        """Every item as (kind, row, extra), in write order."""
        return [
            (kind, row, extra)
            for kind in range(len(KINDS))
            for row, extra in zip(self.rows[kind], self.extras[kind], strict=True)
        ]

    def split(self) -> tuple[_Batch, _Batch]:
        """Two halves (by item count, write order kept); only for a batch of two items or more."""
        items = self.entries()
        half = len(items) // 2
        return _batch_of(items[:half]), _batch_of(items[half:])

    @property
    def has_mo(self) -> bool:
        return bool(self.rows[_MO_PART])

    def acks(self) -> list[Ack]:
        return [e.ack for extras in self.extras for e in extras if e.ack is not None]


def _batch_of(items: Iterable[tuple[int, Row, _Extra]]) -> _Batch:
    b = _Batch()
    for kind, row, extra in items:
        b.add(kind, row, extra)
    return b


_DATA_ERROR_CLASSES = frozenset({"21", "22", "23", "2F", "38", "39", "54", "P0"})


def is_data_error(exc: BaseException) -> bool:
    """True when `exc` was caused by a value in the batch, so that splitting the batch can isolate it.

    SQLSTATE classes 21 (cardinality: ON CONFLICT hit twice), 22 (data exception: NUL in text, out of range,
    and asyncpg's own "invalid input for query argument"), 23 (integrity), 54 (program limit: a value too big
    to index), P0/2F/38/39 (raised by a trigger or function). False for the database itself being the problem
    (connection lost, shutting down, locked, timed out, out of space, a missing table or privilege): splitting
    would then quarantine good items, so the whole batch waits and is retried with back-off instead.
    """
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in _DATA_ERROR_CLASSES
    if isinstance(exc, asyncpg.InterfaceError | OSError | TimeoutError):
        return False
    # Argument conversion in Python, before anything reached the server.
    return isinstance(exc, ValueError | TypeError | OverflowError)


class ResultWriter:
    """Owns the buffers and the flush task. All `add_*` methods are cheap and never block."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        flush_interval: float = 0.015,
        flush_max_rows: int = 500,
        on_mo_committed: Callable[[], None] | None = None,
        max_pending: int = 20000,
        receipt_timeout: float = 72 * 3600.0,
        parked_match_seconds: float = 300.0,
    ) -> None:
        self._pool = pool
        # Parameters after the row columns: receipts match only messages submitted within `receipt_timeout`;
        # a mark takes a parked receipt only within `parked_match_seconds` of its arrival (outbound_sql).
        self._trailing_args: dict[int, tuple[float, ...]] = {
            _MARK: (parked_match_seconds,),
            _PART_MARK: (parked_match_seconds,),
            _RECEIPT: (receipt_timeout,),
        }
        self._on_mo_committed = on_mo_committed
        self._interval = flush_interval
        self._max_rows = flush_max_rows
        self._batch = _Batch()
        self._writing = 0  # rows taken out of `_batch` for the flush under way, not yet committed
        # SMPP connections register here; reading pauses above `max_pending` rows and resumes at half of it.
        self.flow = FlowControl(max_pending)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- producers -----------------------------------------------------------------------------------

    def mark_submitted(self, row_id: int, token: str, smsc: str, message_id: str, msgid_key: str, bind: str) -> None:
        self._batch.add(_MARK, MarkRow(row_id, token, smsc, message_id, msgid_key, bind))
        self._poke()

    def mark_parts_submitted(
        self, row_id: int, token: str, smsc: str, total: int, parts: list[tuple[int, str, str]], bind: str
    ) -> None:
        """Every part of a multi-part message accepted: `parts` is (seq, message id, key) per part."""
        for seq, message_id, key in parts:
            self._batch.add(_PART_MARK, PartMarkRow(row_id, token, smsc, seq, total, message_id, key, bind))
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
        detail: str | None = None,
    ) -> None:
        """End a claim: `status` 'queued' (retry after `delay` s) or a final status with its reason;
        `detail` (the error behind the reason, for people) goes to `outbound_message.detail`."""
        row = SettleRow(row_id, token, status, delay, error_code, clean_optional_text(reason), attempts_delta, bind,
                        smsc, clean_optional_text(detail))
        self._batch.add(_SETTLE, row)
        self._poke()

    def receipt(
        self,
        smsc: str,
        keys: tuple[str, str | None, str | None],
        message_id: str,
        status: str,
        stat: str,
        error_code: int | None,
        reason: str,
        ack: Callable[[], None],
        raw: bytes | None = None,
    ) -> None:
        """A final receipt; `keys` are its candidate keys, best first (gateway/smpp/receipt.py `receipt_keys`);
        `raw` (the receipt's user data) is kept if Postgres refuses the row. Text an SMSC wrote is cleaned here
        (a NUL inside the id becomes U+FFFD: it then matches nothing and is parked)."""
        key0, key1, key2 = keys
        row = ReceiptRow(smsc, clean_text(key0), clean_optional_text(key1), clean_optional_text(key2),
                         clean_text(message_id), status, clean_text(stat), error_code, clean_text(reason))
        self._batch.add(_RECEIPT, row, _Extra(ack, raw))
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
        self._batch.add(
            _INBOUND, InboundRow(smsc, source, destination, body, data_coding, esm_class, raw), _Extra(ack, raw)
        )
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
        row = MoPartRow(smsc, source, destination, ref, total, seq, data_coding, esm_class, payload)
        self._batch.add(_MO_PART, row, _Extra(ack, payload))
        self._poke()

    def quarantine(
        self, kind: str, smsc: str | None, raw: bytes | None, fields: Mapping[str, object], error: str, ack: Ack
    ) -> None:
        """Store what could not be turned into a row (e.g. a PDU whose handling raised) with its error; `ack`
        runs after that commit."""
        metrics.QUARANTINED.labels(kind).inc()
        row = QuarantineRow(kind, clean_optional_text(smsc), raw, fields_json(fields), clean_text(error)[:ERROR_CHARS])
        self._batch.add(_QUARANTINE, row, _Extra(ack, raw))
        self._poke()

    def _poke(self) -> None:
        self._idle.clear()
        size = len(self._batch)
        if size >= self._max_rows:
            self._wake.set()
        level = size + self._writing
        if level > self.flow.high and not self.flow.paused:
            self.flow.update(level)
        if not size % 256:  # here too (not per item: a locked gauge): during a stall the flush loop waits
            metrics.WRITER_PENDING.set(level)

    @property
    def pending(self) -> int:
        """Rows not yet committed: buffered, plus those of the flush under way."""
        return len(self._batch) + self._writing

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
                metrics.WRITER_PENDING.set(self._writing)
                self._idle.set()
                continue
            batch, self._batch = self._batch, _Batch()
            self._writing = len(batch)
            metrics.WRITER_PENDING.set(self.pending)
            started = time.perf_counter()
            try:
                await self._write_isolating(batch)
            except Exception as exc:  # the database, not the data: all unwritten items are back; this task never dies
                metrics.FLUSH_ERRORS.inc()
                log.warning(
                    "result flush failed; will retry",
                    extra={"error": f"{type(exc).__name__}: {exc}", "rows": len(self._batch)},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            finally:
                self._writing = 0
                metrics.WRITER_PENDING.set(len(self._batch))
            backoff = 0.05
            metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
            metrics.FLUSH_ROWS.observe(len(batch))
            if not len(self._batch):
                self._idle.set()

    async def _write_isolating(self, batch: _Batch) -> None:
        """Commit `batch`. On a data error, split it in halves (each half its own transaction, the left one
        first) until the refused item is alone, then quarantine that item; each part's acks run after its commit.

        Raises:
            Exception: the first error that is not caused by the data (`is_data_error` false), after every item
                not yet committed has been put back at the front of the buffer, in order.
        """
        todo = [batch]  # a stack: the next part to write is last
        while todo:
            part = todo[-1]
            try:
                error = await self._try_write(part)
                if error is not None and len(part) == 1:
                    await self._quarantine_item(part, error)
                    error = None
            except BaseException:
                unwritten = _Batch()
                for rest in reversed(todo):
                    unwritten.extend(rest)
                self._requeue(unwritten)
                raise
            todo.pop()
            if error is None:
                self._committed(part)
            else:
                left, right = part.split()
                todo += [right, left]

    def _committed(self, part: _Batch) -> None:
        self._writing -= len(part)
        for row in part.rows[_SETTLE]:
            if row.status != Status.QUEUED:  # a final status (failed, rejected, expired)
                metrics.FINAL.labels(row.status, metrics.reason_label(row.reason)).inc()
        if part.has_mo and self._on_mo_committed is not None:
            self._on_mo_committed()
        for ack in part.acks():
            try:
                ack()
            except Exception:
                log.exception("ack callback failed")
        if self.flow.paused:
            self.flow.update(self.pending)

    def _requeue(self, batch: _Batch) -> None:
        # Keep order: the failed batch goes before what arrived meanwhile.
        batch.extend(self._batch)
        self._batch = batch
        self._writing = 0

    async def _try_write(self, b: _Batch) -> BaseException | None:
        """Write `b` in one transaction: None when committed, the error when a value was refused.

        Raises:
            Exception: any error that is not a data error (the database is down, slow, misconfigured).
        """
        async with self._pool.acquire(timeout=10) as conn:
            try:
                await self._write_on(conn, b)
            except Exception as exc:
                if is_data_error(exc):
                    return exc  # rolled back; the connection is fine
                # After a broken link asyncpg can leave the connection mid-operation; never reuse it.
                conn.terminate()
                raise
        return None

    async def _write_on(self, conn: asyncpg.Connection, b: _Batch) -> None:
        matches: list[asyncpg.Record] = []
        async with conn.transaction():
            for index, (kind, rows) in enumerate(zip(KINDS, b.rows, strict=True)):
                if not rows:
                    continue
                args = (*_columns(rows, len(kind.row._fields)), *self._trailing_args.get(index, ()))
                if index == _RECEIPT:
                    # Which candidate key matched, per SMSC (and how many were parked): for the id mapping.
                    matches = await conn.fetch(kind.sql, *args, timeout=30)
                else:
                    await conn.execute(kind.sql, *args, timeout=30)
                if index == _INBOUND:
                    await conn.execute("SELECT pg_notify($1, '')", sql.INBOUND_CHANNEL, timeout=30)
        # After the commit: an attempt rolled back (retried, or split to isolate a value) must not count twice.
        receipt_ids.observe_matches(matches)

    async def _quarantine_item(self, part: _Batch, error: BaseException) -> None:
        """Store the one item of `part` in the quarantine table (and settle its claim, for a mark or settle);
        the caller then treats `part` as committed (its ack runs).

        When even the quarantine row is refused, a bare one (no fields) is tried; when that fails too, the
        item is dropped unacknowledged (an SMSC sends it again) and logged.

        Raises:
            Exception: an error that is not a data error; nothing was committed.
        """
        ((kind, row, extra),) = part.entries()
        name = KINDS[kind].name
        text = error_text(error)
        smsc = clean_optional_text(getattr(row, "smsc", None))
        candidates = [
            QuarantineRow(name, smsc, extra.raw, fields_json(row._asdict()), text),
            QuarantineRow(name, None, extra.raw, "{}", ascii(text)[:2000]),
        ]
        for qrow in candidates:
            async with self._pool.acquire(timeout=10) as conn:
                try:
                    async with conn.transaction():
                        await conn.execute(sql.INSERT_QUARANTINE, *_columns([qrow], 5), timeout=30)
                        if kind in _CLAIM_KINDS:
                            await self._settle_invalid(conn, kind, row, text)
                except Exception as exc:
                    if not is_data_error(exc):
                        conn.terminate()
                        raise
                    error = exc
                    continue
            metrics.QUARANTINED.labels(name).inc()
            log.warning("result refused by Postgres; quarantined", extra={"kind": name, "smsc": smsc, "error": text})
            return
        log.error(
            "result refused by Postgres and by the quarantine; dropped unacknowledged",
            extra={"kind": name, "error": error_text(error)},
        )
        part.extras[kind][0] = _NO_EXTRA  # no ack: what an SMSC sent comes again

    @staticmethod
    async def _settle_invalid(conn: asyncpg.Connection, kind: int, row: Row, text: str) -> None:
        """End the claim of a mark or settle that could not be written, in a savepoint: when this is refused
        too, the quarantine row stays and the lease reaper ends the claim."""
        status = Status.FAILED if kind == _SETTLE else Status.SUBMITTED
        assert isinstance(row, MarkRow | PartMarkRow | SettleRow)
        try:
            async with conn.transaction():
                await conn.execute(
                    sql.SETTLE_INVALID_RESULT, row.id, row.token, status.value, text,
                    clean_optional_text(row.smsc), timeout=30,
                )
        except Exception as exc:
            if not is_data_error(exc):
                raise
            log.error("claim of a refused result left to the lease reaper",
                      extra={"row": row.id, "error": error_text(exc), "reason": Reason.INVALID_RESULT.value})


def _columns(rows: list[Any], width: int) -> list[list[Any]]:
    """Rows (named tuples) to the column arrays that `unnest` takes."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]
