"""The claimer and router: claims as many queued rows as the SMSCs that are up can take, and gives each row
to an SMSC by the configured routes (source / short code, destination prefix, message class, weights).

Rule of this module: a row whose routes all point at SMSCs that are down goes back to the queue to wait (not
fail) until one is back or it expires; the next matching route is the failover. A row no route matches is
rejected with reason `no_route`. Without configured routes every SMSC serves every row, equally weighted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import defaultdict

import asyncpg

from gateway.db import outbound_sql as sql
from gateway.dispatcher import SmscDispatcher
from gateway.message import normalise_number
from gateway.results import ResultWriter
from gateway.settings import DispatcherSettings, RouteSettings

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
        self._queue_maybe_empty = False
        self._tokens = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._rng = random.Random()
        for d in dispatchers:
            d.wake_router = self.wake

    def wake(self) -> None:
        """Rows may be waiting (NOTIFY), a bind came up, or a dispatcher has room again."""
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
        while not self._stopping:
            want = self._capacity()
            if want <= 0 or self._queue_maybe_empty:
                await self._wait(self.settings.poll_interval)
                continue
            rows: list[tuple[str, asyncpg.Record]] = []
            unhanded: dict[int, tuple[str, asyncpg.Record]] = {}
            try:
                rows = await self._claim(want)
                unhanded = {record["id"]: (token, record) for token, record in rows}
                if rows:
                    await self._route(unhanded)
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
            if len(rows) < want:
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

    async def _claim(self, limit: int) -> list[tuple[str, asyncpg.Record]]:
        token = f"{self.settings.instance}:{next(self._tokens)}"
        rows = await self.pool.fetch(sql.CLAIM, token, self.settings.lease_seconds, limit, timeout=30)
        return [(token, r) for r in rows]

    async def _route(self, rows: dict[int, tuple[str, asyncpg.Record]]) -> None:
        """Hand each row to its SMSC's dispatcher (or settle it); handed rows are removed from `rows`."""
        by_smsc: dict[str, list[tuple[str, asyncpg.Record]]] = defaultdict(list)
        for token, record in list(rows.values()):
            choice = self.pick(record["source"], record["destination"], record["message_class"])
            if isinstance(choice, SmscDispatcher):
                by_smsc[choice.name].append((token, record))
                continue
            del rows[record["id"]]
            if choice == "no_route":
                self.writer.settle(record["id"], token, "rejected", reason="no_route")
            else:
                self.writer.settle(
                    record["id"], token, "queued", delay=_NO_SMSC_RETRY_S, reason="no_smsc_available",
                    attempts_delta=-1,
                )
        for name, batch in by_smsc.items():
            await self.dispatchers[name].accept(batch)
            for _, record in batch:
                del rows[record["id"]]

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
