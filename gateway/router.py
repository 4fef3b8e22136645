"""The claimer and router: claims as many queued rows as the SMSCs that are up can take, and gives each row
to an SMSC by the configured routes (source / short code, destination prefix, message class, weights).

Rule of this module: a row whose routes all point at SMSCs that are down goes back to the queue to wait (not
fail) until one is back or it expires; the next matching route is the failover. A row no route matches is
rejected with reason `no_route`. Without configured routes every SMSC serves every row, equally weighted.
No SMSC is handed more rows than its buffer has room for (what its binds send within a fraction of the
lease): rows of an SMSC whose buffer is full are not claimed when the claim can tell them apart (prefix
routes, `blocked_rules`), else handed back at once (attempt not counted) to wait in the queue for about the
time that SMSC needs to make room. A slow SMSC thus never holds rows past their lease, and never holds up the
rows of a fast one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import defaultdict

import asyncpg

from gateway.admission import DETAIL_CHARS
from gateway.clean import error_text
from gateway.db import outbound_sql as sql
from gateway.dispatcher import SmscDispatcher
from gateway.message import normalise_number
from gateway.results import ResultWriter
from gateway.settings import DispatcherSettings, RouteSettings
from gateway.status import Reason, Status

log = logging.getLogger(__name__)

# Where rows wait when every SMSC of their routes is down: the claimer looks again after this.
_NO_SMSC_RETRY_S = 1.0


class Router:
    """Owns the claim loop for all SMSCs of this instance."""

    def __init__(
        self,
        dispatchers: list[SmscDispatcher],
        routes: list[RouteSettings],
        settings: DispatcherSettings,
        pool: asyncpg.Pool,
        writer: ResultWriter,
    ) -> None:
        self.dispatchers = {d.name: d for d in dispatchers}
        self.routes = routes or [RouteSettings(smsc=list(self.dispatchers))]
        self.settings = settings
        self.pool = pool
        self.writer = writer
        self._wake = asyncio.Event()
        # Counts wake-ups: one that arrives while a claim is in flight must not be forgotten when that claim
        # then comes back short (the rows it announces were inserted after the claim's snapshot).
        self._wakes = 0
        self._queue_maybe_empty = False
        self._tokens = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._rng = random.Random()
        for d in dispatchers:
            d.wake_router = self.wake

    def wake(self) -> None:
        """Rows may be waiting (NOTIFY), a bind came up, or a dispatcher has room again."""
        self._wakes += 1
        self._queue_maybe_empty = False
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._claim_loop(), name="claimer")

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the claim in progress (its rows reach a dispatcher or go back), then stop claiming."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def _capacity(self) -> int:
        return min(sum(d.free_capacity for d in self.dispatchers.values() if d.is_up), self.settings.max_claim)

    async def _claim_loop(self) -> None:
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while not self._stopping:
            want = self._capacity()
            if want <= 0 or self._queue_maybe_empty:
                await self._wait(self.settings.poll_interval)
                continue
            rows: list[tuple[str, asyncpg.Record]] = []
            unhanded: dict[int, tuple[str, asyncpg.Record]] = {}
            placed = 0
            wakes_before = self._wakes
            try:
                lease_until = loop.time() + self.settings.lease_seconds  # before the claim: conservative
                rows = await self._claim(want, self.blocked_rules())
                unhanded = {record["id"]: (token, record) for token, record in rows}
                if rows:
                    placed = await self._route(unhanded, lease_until)
            except asyncio.CancelledError:
                self._give_back(unhanded, "claim_cancelled")
                raise
            except Exception as exc:  # the database may be restarting; the claimer must outlive it
                log.warning("claim failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                self._give_back(unhanded, "claim_failed")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if (len(rows) < want or (rows and not placed)) and self._wakes == wakes_before:
                # Fewer rows than wanted: the queue is drained for now. None placed: every row claimed was for
                # a full SMSC (handed back to wait); claim again when a buffer makes room (wake) or at the
                # poll, rather than walking the whole backlog of that SMSC now. A wake-up during the claim
                # (NOTIFY of rows committed after its snapshot) means: claim again at once.
                self._queue_maybe_empty = True

    def _give_back(self, rows: dict[int, tuple[str, asyncpg.Record]], reason: str) -> None:
        """Claimed rows not yet handed to a dispatcher go back untouched."""
        for token, record in rows.values():
            self.writer.settle(record["id"], token, "queued", reason=reason, attempts_delta=-1)

    async def _wait(self, timeout: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout * random.uniform(0.8, 1.2))
        except TimeoutError:
            self._queue_maybe_empty = False  # the fallback poll: a NOTIFY may have been missed

    async def _claim(
        self, limit: int, blocked: list[tuple[str, str | None, str | None]]
    ) -> list[tuple[str, asyncpg.Record]]:
        token = f"{self.settings.instance}:{next(self._tokens)}"
        if blocked:
            prefixes, sources, classes = (list(col) for col in zip(*blocked, strict=True))
            rows = await self.pool.fetch(
                sql.CLAIM_EXCLUDING, token, self.settings.lease_seconds, limit, prefixes, sources, classes,
                timeout=30,
            )
        else:
            rows = await self.pool.fetch(sql.CLAIM, token, self.settings.lease_seconds, limit, timeout=30)
        return [(token, r) for r in rows]

    def blocked_rules(self) -> list[tuple[str, str | None, str | None]]:
        """(prefix, source, message_class) of rows that would surely go to an SMSC whose buffer is full now.

        Only prefix routes can be told apart in SQL, and only for prefixes no earlier usable route can match
        (an earlier route takes a row first). A row the filter misses is claimed and handed back
        (`_route`); the filter only saves that round trip.
        """
        rules: list[tuple[str, str | None, str | None]] = []
        earlier: list[str] = []  # prefixes of earlier routes with an SMSC up
        for route in self.routes:
            up = [self.dispatchers[n] for n in route.smsc if self.dispatchers[n].is_up]
            if not up:
                continue  # skipped by `pick` (failover): it takes no row first
            if not route.destination_prefix:
                break  # this route takes every row that gets this far: nothing after it is sure
            if all(d.free_capacity == 0 for d in up):
                for prefix in route.destination_prefix:
                    if any(prefix.startswith(e) or e.startswith(prefix) for e in earlier):
                        continue
                    for source in route.source or [None]:
                        rules.append((prefix, source, route.message_class))
            earlier.extend(route.destination_prefix)
        return rules

    async def _route(self, rows: dict[int, tuple[str, asyncpg.Record]], lease_until: float) -> int:
        """Hand each row to its SMSC's dispatcher within its free room (or settle it); handed rows are removed
        from `rows`. Returns how many rows went to a dispatcher."""
        by_smsc: dict[str, list[tuple[str, asyncpg.Record]]] = defaultdict(list)
        room = {name: d.free_capacity for name, d in self.dispatchers.items()}
        for token, record in list(rows.values()):
            row_id = record["id"]
            try:
                choice = self.pick(record["source"], record["destination"], record["message_class"])
            except Exception as exc:  # one row's values must not stop the batch (admission.py's rule)
                del rows[row_id]
                self.writer.settle(
                    row_id, token, Status.REJECTED, reason=Reason.INVALID_ROW,
                    detail=error_text(exc, DETAIL_CHARS),
                )
                continue
            if isinstance(choice, SmscDispatcher):
                if room[choice.name] > 0:
                    room[choice.name] -= 1
                    by_smsc[choice.name].append((token, record))
                else:
                    # Its SMSC's buffer is full: the row waits in the queue, not in memory past its lease.
                    del rows[row_id]
                    self.writer.settle(
                        row_id, token, Status.QUEUED, delay=choice.busy_delay(), reason=Reason.SMSC_BUSY,
                        attempts_delta=-1,
                    )
                continue
            del rows[row_id]
            if choice == "no_route":
                self.writer.settle(row_id, token, Status.REJECTED, reason=Reason.NO_ROUTE)
            else:
                self.writer.settle(
                    row_id, token, Status.QUEUED, delay=_NO_SMSC_RETRY_S, reason=Reason.NO_SMSC_AVAILABLE,
                    attempts_delta=-1,
                )
        placed = 0
        for name, batch in by_smsc.items():
            await self.dispatchers[name].accept(batch, lease_until)
            for _, record in batch:
                del rows[record["id"]]
            placed += len(batch)
        return placed

    def pick(self, source: str, destination: str, message_class: str) -> SmscDispatcher | str:
        """The SMSC for a row, or 'no_route' (nothing matches) / 'wait' (every matching SMSC is down)."""
        number = normalise_number(destination, self.settings.default_region) or ""
        matched = False
        for route in self.routes:
            if not route.matches(source.strip(), number, message_class):
                continue
            matched = True
            up = [(self.dispatchers[n], w) for n, w in route.weighted() if self.dispatchers[n].is_up]
            if up:
                return self._rng.choices([d for d, _ in up], [w for _, w in up])[0]
        return "wait" if matched else "no_route"
