"""The webhook sender: one task per configured endpoint delivers that endpoint's outbox rows (migration 0008)
as signed Standard Webhooks POSTs, at least once, in order per ordering key.

Rule of this module: an endpoint is isolated from everything else. Each one has its own task, its own
aiohttp session (connector limit = its concurrency, timeout = its timeout) and claims only its own rows, so a
slow or dead endpoint only delays its own deliveries, never the SMPP side or another endpoint. The database
is the only state that matters: a claim is a lease (`next_attempt_at` pushed past the timeout), results are
written in batches, and whatever this process loses (crash, kill, cancelled POST) comes due again by itself.
Secrets and URLs are never logged (a URL may carry a token): logs name the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import heapq
import importlib.metadata
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import asyncpg

from gateway import metrics
from gateway.settings import WebhookEndpointSettings, WebhookSettings
from gateway.webhooks import signing, sql

log = logging.getLogger(__name__)

def _version() -> str:
    try:
        return importlib.metadata.version("smsgw")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "dev"


USER_AGENT = f"smsgw/{_version()}"
LEASE_MARGIN = 10.0  # seconds past the endpoint timeout before a claim comes back (result flush, clock skew)
ERROR_MAX = 200  # characters of last_error
BODY_READ_MAX = 65536  # bytes of an answer read (so that the connection can be reused), the rest is dropped
_FLUSH_COALESCE = 0.003  # results arriving within this are written by one statement


async def sync_endpoints(pool: asyncpg.Pool, endpoints: Mapping[str, WebhookEndpointSettings]) -> None:
    """Make `webhook_endpoint` match the settings: upsert every configured endpoint, disable the others.

    The triggers fan events out only to enabled endpoints, so this must run before anything that sends.
    """
    names = list(endpoints)
    async with pool.acquire() as conn, conn.transaction():
        if not names and await conn.fetchval(sql.ENDPOINT_TABLE_MISSING):
            return  # a schema older than webhooks (/readyz says so) and nothing configured to sync
        if names:
            await conn.execute(
                sql.SYNC_ENDPOINTS,
                names,
                [",".join(e.events) for e in endpoints.values()],
                [",".join(e.short_codes) for e in endpoints.values()],
                [e.enabled for e in endpoints.values()],
            )
        await conn.execute(sql.DISABLE_UNLISTED, names)


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential back-off: uniform(0, min(cap, base * 2^(attempts-1))), `attempts` >= 1 being
    the attempts made so far (the first retry waits up to `base`)."""
    ceiling = min(cap, base * 2.0 ** min(max(attempts - 1, 0), 60))
    return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def short_error(text: str) -> str:
    """`last_error` text Postgres always accepts: no NUL, no lone surrogate, at most ERROR_MAX characters (an
    exception message may quote what a hostile server sent; a refused value would block the result batch)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:ERROR_MAX]


def failure_class(status: int) -> str:
    """The `class` label of a non-2xx answer."""
    if status == 429:
        return "429"
    return "4xx" if 400 <= status < 500 else "5xx"  # 1xx/3xx (redirects are not followed) count as 5xx


def event_body(event_id: int, event_type: str, created_at: datetime, data: str) -> bytes:
    """The JSON body of an event (schema version 1); `data` is the event's jsonb as text, inserted verbatim."""
    stamp = created_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    # Built as text: the data is already JSON from Postgres, parsing and re-serialising it would cost for nothing.
    return (
        f'{{"type":"{event_type}","version":1,"id":"evt_{event_id}","timestamp":"{stamp}","data":{data}}}'
    ).encode()


@dataclass(slots=True)
class _Result:
    id: int
    ok: bool
    http_status: int | None
    error: str | None
    delay: float


class WebhookSender:
    """Delivers one endpoint's pending deliveries. `start()`, `wake()` on NOTIFY, `stop(timeout)` at the end."""

    def __init__(
        self, name: str, endpoint: WebhookEndpointSettings, settings: WebhookSettings, pool: asyncpg.Pool
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.settings = settings
        self._pool = pool
        self._keys = endpoint.signing_keys()  # read once: a bad secret file fails at start
        self._lease = endpoint.timeout + LEASE_MARGIN
        self._max_age = settings.max_retry_hours * 3600.0
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._results: list[_Result] = []
        self._due: list[float] = []  # loop times at which a back-off of ours comes due (heap)
        self._sent = metrics.WEBHOOK_SENT.labels(name)
        self._dead = metrics.WEBHOOK_DEAD.labels(name)
        self._latency = metrics.WEBHOOK_LATENCY.labels(name)
        self._failed = {c: metrics.WEBHOOK_FAILED.labels(name, c) for c in metrics.WEBHOOK_FAILURE_CLASSES}

    @property
    def in_flight(self) -> int:
        """POSTs under way."""
        return len(self._in_flight)

    def start(self) -> None:
        """Open the HTTP session and start the claim loop."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.endpoint.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.endpoint.timeout),
            headers={"user-agent": USER_AGENT},
            # The body is signed as sent: no automatic compression or cookie state between events.
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._task = asyncio.create_task(self._run(), name=f"webhook-{self.name}")

    def wake(self) -> None:
        """New deliveries may be due (NOTIFY, a result that frees an ordering key, a slot that freed)."""
        self._wake.set()

    async def stop(self, timeout: float) -> None:
        """Stop claiming, let the POSTs in flight finish within `timeout`, write their results, close.

        POSTs still running then are cancelled: their claims come due again after the lease (at least once).
        """
        self._stopping = True
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:  # wait_for cancelled the loop; what it claimed is in flight or comes back
                pass
            except Exception as exc:
                log.warning("webhook sender ended with an error", extra={"endpoint": self.name, "error": repr(exc)})
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=max(0.0, deadline - loop.time()))
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._results:
            try:
                await asyncio.wait_for(self._flush(), max(1.0, deadline - loop.time()))
            except Exception as exc:  # the leases bring them back: delivered ones are sent again, that is all
                log.warning(
                    "webhook results not written at stop; those deliveries will be retried",
                    extra={"endpoint": self.name, "count": len(self._results), "error": repr(exc)},
                )
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the loop ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        retry = 0.1
        concurrency = self.endpoint.concurrency
        while not self._stopping:
            self._wake.clear()
            more = False
            try:
                free = concurrency - len(self._in_flight)
                limit = min(self.settings.batch, free) if not self._stopping else 0
                rows = await self._flush(claim=limit) if self._results or limit > 0 else []
                if limit > 0:
                    for row in rows:
                        task = asyncio.create_task(self._deliver(row), name=f"webhook-{self.name}-post")
                        self._in_flight.add(task)
                        task.add_done_callback(self._post_done)
                    # A full claim with slots left: more may be due right now.
                    more = len(rows) == limit and len(self._in_flight) < concurrency
                retry = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database trouble: keep results, try again with back-off
                log.warning(
                    "webhook claim or result write failed",
                    extra={"endpoint": self.name, "error": f"{type(exc).__name__}: {exc}", "retry_s": retry},
                )
                await asyncio.sleep(retry)
                retry = min(retry * 2, 5.0)
                continue
            if more:
                continue
            now = loop.time()
            while self._due and self._due[0] <= now:
                heapq.heappop(self._due)
            wait = self.settings.poll_interval
            if self._due:
                wait = min(wait, self._due[0] - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.001))
            if self._results and self._in_flight and not self._stopping:
                await asyncio.sleep(_FLUSH_COALESCE)  # let results that finish together share one UPDATE

    def _post_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery task failed", extra={"endpoint": self.name, "error": repr(task.exception())})
        self._wake.set()

    async def _flush(self, claim: int = 0) -> list[asyncpg.Record]:
        """Write the results gathered so far, then claim up to `claim` deliveries: one transaction, one commit.

        The claim follows the results so that an ordering key whose head was just delivered moves on at once.
        `synchronous_commit = off` for this transaction only: a commit lost to a Postgres crash costs a
        resend (a result) or nothing (a claim, the row is still due), both within at least once; it halves
        the time of a cycle when batches are as small as an endpoint's concurrency (measured: see the report).
        """
        results, self._results = self._results, []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SET LOCAL synchronous_commit = off")
                statuses = await conn.fetch(
                    sql.RECORD_RESULTS,
                    [r.id for r in results],
                    [r.ok for r in results],
                    [r.http_status for r in results],
                    [r.error for r in results],
                    [r.delay for r in results],
                    self._max_age,
                ) if results else []
                rows = await conn.fetch(sql.CLAIM, self.name, claim, self._lease) if claim > 0 else []
        except BaseException:
            self._results = results + self._results  # written next time, whole
            raise
        dead = sum(1 for s in statuses if s["status"] == "dead")
        if dead:
            self._dead.inc(dead)
            log.warning("webhook deliveries dead after max_retry_hours", extra={"endpoint": self.name, "count": dead})
        return rows

    async def _deliver(self, row: asyncpg.Record) -> None:
        """One attempt; the result is queued for the next flush (never raises but for cancellation)."""
        assert self._session is not None
        loop = asyncio.get_running_loop()
        msg_id = f"evt_{row['event_id']}"
        body = event_body(row["event_id"], row["type"], row["created_at"], row["data"])
        headers = signing.headers(self._keys, msg_id, int(time.time()), body)
        headers["content-type"] = "application/json"
        status: int | None = None
        retry_after: float | None = None
        error: str | None = None
        kind: str | None = None
        started = loop.time()
        try:
            async with self._session.post(self.endpoint.url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                if status in (429, 503):
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
                await resp.content.read(BODY_READ_MAX)
            self._latency.observe(loop.time() - started)
        except TimeoutError:
            kind, error = "timeout", f"timeout after {self.endpoint.timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            # The class and message of a connection error name the host and port, never the path or a secret.
            kind, error = "connection", short_error(f"{type(exc).__name__}: {exc}")
        if status is not None and 200 <= status < 300:
            self._sent.inc()
            self._results.append(_Result(row["id"], True, status, None, 0.0))
        else:
            if status is not None:
                kind, error = failure_class(status), f"HTTP {status}"
            assert kind is not None
            self._failed[kind].inc()
            delay = backoff_delay(row["attempts"], self.settings.retry_base, self.settings.retry_max)
            if retry_after is not None:
                # The receiver said when: not earlier, but never later than retry_max (a "Retry-After: 1 year"
                # would otherwise park the event beyond max_retry_hours without ever marking it dead).
                delay = min(max(retry_after, delay), self.settings.retry_max)
            heapq.heappush(self._due, loop.time() + delay + 0.005)
            self._results.append(_Result(row["id"], False, status, error, delay))
        self._wake.set()


def start_senders(
    pool: asyncpg.Pool, endpoints: Mapping[str, WebhookEndpointSettings], settings: WebhookSettings
) -> list[WebhookSender]:
    """One started sender per enabled endpoint."""
    senders = [WebhookSender(name, ep, settings, pool) for name, ep in endpoints.items() if ep.enabled]
    for sender in senders:
        sender.start()
    return senders

