"""The rows one SMSC holds between admission and their last submit_sm_resp: the ready buffer, its cap, leases.

Rule of this module: a buffer never holds more than its binds can send within a fraction of the lease
(`buffer_cap`), throttled rows waiting to be sent again count against it, and no row is sent on a lease that
may have run out. Every held row (buffered, being sent, or awaiting its response) has its claim renewed by
one batched, token-fenced UPDATE before it gets close to expiry; a row whose renewal found it no longer ours
is dropped from the buffer unsent, and a row that reaches the send margin anyway (the database was slow) is
handed back instead of sent.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from gateway.db import outbound_sql as sql
from gateway.message import ClaimedMessage
from gateway.response_outcome import PartGroup
from gateway.smpp.pdu import SubmitSm

log = logging.getLogger(__name__)

# A row is renewed when less than this share of the lease is left, and the renewer looks this often (share
# of the lease). A row is not sent with less than SEND_MARGIN of the lease left (renewals failed meanwhile).
RENEW_BELOW = 0.5
RENEW_EVERY = 0.25
SEND_MARGIN = 0.15


@dataclass(slots=True)
class Lease:
    """One claimed row's lease as this process sees it (loop time, conservative: taken before the claim)."""

    row_id: int
    token: str
    until: float
    lost: bool = False  # a renewal found the row no longer claimed by us (reaped, or settled elsewhere)


@dataclass(slots=True)
class Item:
    """A claimed, admitted row: its parts still to send (seq, pdu), in order, on one bind."""

    msg: ClaimedMessage
    lease: Lease
    parts: list[tuple[int, SubmitSm]]
    group: PartGroup | None  # None: a single-part message
    admitted_at: float  # loop time just before its consent was looked up

    @property
    def token(self) -> str:
        return self.lease.token

    def rest(self) -> Item:
        """The same message without its first remaining part (the next parts go next on the same bind)."""
        return Item(self.msg, self.lease, self.parts[1:], self.group, self.admitted_at)

    def only(self, seq: int, pdu: SubmitSm) -> Item:
        """The same message reduced to one part (a throttled part sent again)."""
        return Item(self.msg, self.lease, [(seq, pdu)], self.group, self.admitted_at)


def buffer_cap(windows: int, rate: float, lease_seconds: float, fraction: float) -> int:
    """How many rows one SMSC may hold ready: its free windows' worth, at most one second of its rate, and
    never more than it can send within `fraction` of the lease (so no row outlives its lease waiting)."""
    if windows <= 0:
        return 0
    if rate <= 0:
        return windows
    return max(1, min(windows, int(rate), int(rate * lease_seconds * fraction)))


class SendBuffer:
    """Ready rows (FIFO, throttled parts in front) and the leases of every row this SMSC holds."""

    def __init__(self, lease_seconds: float, give_back: Callable[[Item, str], None]) -> None:
        self.lease_seconds = lease_seconds
        self._give_back = give_back  # settles a row back to the queue (attempt not counted) with a reason
        self._ready: collections.deque[Item] = collections.deque()
        self._event = asyncio.Event()
        self._held: dict[int, Lease] = {}

    # -- the ready buffer ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, items: list[Item]) -> None:
        for item in items:
            self._held[item.lease.row_id] = item.lease
        self._ready.extend(items)
        if self._ready:
            self._event.set()

    def push_front(self, item: Item) -> None:
        """A part to send again first (throttled, or the window was full); it counts against the cap."""
        self._ready.appendleft(item)
        self._event.set()

    def take(self, now: float) -> Item | None:
        """The next row to send whose lease leaves room for its response; stale rows leave on the way."""
        margin = self.lease_seconds * SEND_MARGIN
        while self._ready:
            item = self._ready.popleft()
            if item.lease.lost:
                self._held.pop(item.lease.row_id, None)  # another claim owns it now: never send it
                continue
            if item.lease.until - now < margin:
                self.release(item)
                self._give_back(item, "lease_renewal")
                continue
            return item
        self._event.clear()
        return None

    def drain(self) -> list[Item]:
        """Everything still waiting to be sent (shutdown, all binds down); the caller settles them."""
        items = list(self._ready)
        self._ready.clear()
        return items

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass

    # -- leases --------------------------------------------------------------------------------------

    def release(self, item: Item) -> None:
        """The row's claim has ended (marked or settled): stop renewing it."""
        self._held.pop(item.lease.row_id, None)

    @property
    def held(self) -> int:
        return len(self._held)

    def due(self, now: float) -> list[Lease]:
        """Leases to renew now: less than RENEW_BELOW of the lease left."""
        limit = now + self.lease_seconds * RENEW_BELOW
        return [lease for lease in self._held.values() if lease.until < limit and not lease.lost]

    async def renew(self, pool: asyncpg.Pool, now: float) -> int:
        """Renew the due leases with one UPDATE fenced by token; rows no longer ours are marked lost.

        Raises:
            asyncpg.PostgresError, OSError, TimeoutError: the caller logs and tries again next period.
        """
        due = self.due(now)
        if not due:
            return 0
        rows = await pool.fetch(
            sql.RENEW_LEASES, [lease.row_id for lease in due], [lease.token for lease in due], self.lease_seconds,
            timeout=max(1.0, self.lease_seconds * RENEW_BELOW / 2),
        )
        kept = {r["id"] for r in rows}
        until = now + self.lease_seconds  # `now` was taken before the statement: conservative
        for lease in due:
            if lease.row_id in kept:
                lease.until = until
            elif self._held.get(lease.row_id) is lease:
                # Settled meanwhile by our own writer (not in `held` any more), or truly lost to the reaper.
                lease.lost = True
                self._held.pop(lease.row_id, None)
        return len(kept)
