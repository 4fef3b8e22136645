"""The daemon: wires the pool, the writer, one dispatcher per SMSC, the NOTIFY listener, maintenance
and metrics together, and owns every task so that shutdown is orderly.

Shutdown order (SIGTERM): stop claiming and sending, give back unsent claims, wait (bounded) for the
in-flight submit_sm responses, flush results, unbind, flush again, close the pool.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import asyncpg

from gateway import campaigns, maintenance, metrics
from gateway.db import outbound_sql as sql
from gateway.db.migrate import migrate
from gateway.dispatcher import SmscDispatcher
from gateway.http_server import HttpServer
from gateway.results import ResultWriter
from gateway.router import Router
from gateway.settings import Settings
from gateway.webhooks import sender as webhook_sender
from gateway.webhooks import sql as webhook_sql
from keywords.consent_watch import CONSENT_CHANNEL, ConsentWatch
from keywords.matcher import KeywordMatcher
from keywords.processor import MoProcessor

log = logging.getLogger(__name__)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # A long-lived snapshot stops vacuum on the queue (postgres-queue.md trap 4).
    await conn.execute("SET idle_in_transaction_session_timeout = '60s'")


class Gateway:
    """One gateway instance. `start()` then `run_until(stop_event)`, or `stop()` directly."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.writer: ResultWriter | None = None
        self.dispatchers: list[SmscDispatcher] = []
        self.mo_processor: MoProcessor | None = None
        self.router: Router | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        # Membership and rate share (gateway/rate_share.py); ended apart from the others, before deregistering.
        self._heartbeat: asyncio.Task[None] | None = None
        self._http: HttpServer | None = None  # /metrics, /healthz, /readyz and the status page
        self.consent_watch: ConsentWatch | None = None
        self._listener_ready = asyncio.Event()
        # One sender per enabled webhook endpoint (gateway/webhooks/sender.py), each with its own task and session.
        self.webhook_senders: list[webhook_sender.WebhookSender] = []

    async def start(self, *, apply_migrations: bool = True) -> None:
        """Connect, migrate, bind and start dispatching.

        Raises:
            OSError, asyncpg.PostgresError: the database is unreachable at start (fail fast).
        """
        s = self.settings
        dsn = s.database.resolved_url()
        if apply_migrations:
            conn = await asyncpg.connect(dsn, timeout=30)
            try:
                applied = await migrate(conn)
                if applied:
                    log.info("migrations applied", extra={"migrations": applied})
            finally:
                await conn.close()
        self.pool = await asyncpg.create_pool(
            dsn, min_size=2, max_size=s.database.pool_size, init=_init_connection, timeout=30, command_timeout=60
        )
        d = s.dispatcher
        self.mo_processor = MoProcessor(
            self.pool, KeywordMatcher(s.keywords, s.keywords_default), s.inbound, default_region=d.default_region
        )
        await self.mo_processor.sync_lists(s.keywords)
        try:
            await campaigns.sync_event_rules(self.pool, s.keywords)  # migration 0014: event -> message
        except asyncpg.UndefinedTableError:
            # The schema is older than the code (migrations not applied yet): start anyway, /readyz says why.
            log.warning("event rules not synced: the database lacks migration 0014; apply the migrations")
        # Before anything sends: the triggers fan events out to the endpoints enabled in this table.
        await webhook_sender.sync_endpoints(self.pool, s.webhook)
        if s.webhooks.in_daemon:  # else `smsgw webhooks run` sends them, in a process of its own
            self.webhook_senders = webhook_sender.start_senders(self.pool, s.webhook, s.webhooks)
        self.writer = ResultWriter(
            self.pool,
            flush_interval=d.flush_interval,
            flush_max_rows=d.flush_max_rows,
            on_mo_committed=self.mo_processor.wake,
            max_pending=d.writer_max_pending,
            receipt_timeout=d.receipt_timeout,
            parked_match_seconds=d.parked_receipt_match_seconds,
        )
        self.writer.start()
        self.mo_processor.start()
        # Rows wait in a buffer at most about two leases; consent changes older than that cannot concern them.
        self.consent_watch = ConsentWatch(keep_seconds=2 * d.lease_seconds + 60)
        self.dispatchers = [
            SmscDispatcher(name, smsc, d, self.pool, self.writer, consent_watch=self.consent_watch, keywords=s.keywords)
            for name, smsc in s.smsc.items()
        ]
        self.router = Router(self.dispatchers, s.route, d, self.pool, self.writer)
        # The consent watch is down until the listener is connected (rows admitted before would be handed back).
        self._tasks.append(asyncio.create_task(self._listen(dsn), name="notify-listener"))
        try:
            await asyncio.wait_for(self._listener_ready.wait(), 10)
        except TimeoutError:
            log.warning("notify listener not connected yet; rows wait in the queue until it is")
        # Register before sending (gateway/rate_share.py): the first heartbeat writes this instance's row and takes
        # its grant of each account's rate from what the other instances leave free. Until a heartbeat succeeds
        # the account buckets stay closed; the heartbeat loop keeps trying.
        try:
            async with asyncio.timeout(10):
                await maintenance.heartbeat(self.pool, d, self.dispatchers)
        except Exception as exc:
            log.warning("first heartbeat failed; not sending until one succeeds",
                        extra={"error": f"{type(exc).__name__}: {exc}"})
        self._heartbeat = asyncio.create_task(
            maintenance.run_heartbeat(self.pool, d, self.dispatchers), name="heartbeat"
        )
        for disp in self.dispatchers:
            disp.start()
        self.router.start()
        upkeep = maintenance.run_forever(self.pool, d, s.webhooks)
        self._tasks.append(asyncio.create_task(upkeep, name="maintenance"))
        # Scheduled campaigns (migration 0014): each due occurrence enqueued once, whichever instance gets there.
        self._tasks.append(asyncio.create_task(campaigns.run_scheduler(self.pool), name="campaign-scheduler"))
        # Event-loop lag (every 0.25 s), pool in use and windows in use (every second): gateway/metrics.py.
        sampler = metrics.run_sampler(
            self.pool, lambda: [(disp.name, b.name, b) for disp in self.dispatchers for b in disp.binds]
        )
        self._tasks.append(asyncio.create_task(sampler, name="metrics-sampler"))
        if s.metrics.enabled:
            self._http = HttpServer(self, s.metrics.host, s.metrics.port)
            await self._http.start()
        log.info("gateway started", extra={"smscs": list(s.smsc), "instance": d.instance})

    @property
    def metrics_port(self) -> int | None:
        """The port the HTTP server listens on (the real one when 0 was configured); None when disabled."""
        return self._http.port if self._http is not None else None

    async def _listen(self, dsn: str) -> None:
        """LISTEN on a dedicated connection; reconnect with back-off. NOTIFY is only a wake-up: the
        claimers also poll, since notifications are lost while this connection is down."""
        backoff = 0.5
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
                await conn.add_listener(sql.LISTEN_CHANNEL, self._on_notify)
                await conn.add_listener(CONSENT_CHANNEL, self._on_consent)
                await conn.add_listener(webhook_sql.CHANNEL, self._on_webhook)
                if self.consent_watch is not None:
                    # Changes made while no listener was connected were not announced to us.
                    self.consent_watch.listener_up(asyncio.get_running_loop().time())
                self._listener_ready.set()
                backoff = 0.5
                if self.router is not None:
                    self.router.wake()
                while not conn.is_closed():
                    await asyncio.sleep(5)
                    if self.consent_watch is not None:
                        self.consent_watch.prune(asyncio.get_running_loop().time())
                    await conn.execute("SELECT 1", timeout=5)  # keep-alive: notice a dead link
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect whatever broke; the claimers poll meanwhile
                log.warning("notify listener lost", extra={"error": f"{type(exc).__name__}: {exc}", "retry_s": backoff})
                if self.consent_watch is not None:  # announcements may be missed from here on
                    self.consent_watch.listener_down(asyncio.get_running_loop().time())
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close(timeout=5)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    def _on_consent(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if self.consent_watch is not None:
            self.consent_watch.on_notify(payload, asyncio.get_running_loop().time())

    def _on_webhook(self, *_args: object) -> None:
        for sender in self.webhook_senders:
            sender.wake()

    def _on_notify(self, *_args: object) -> None:
        if self.router is not None:
            self.router.wake()

    async def stop(self) -> None:
        """Graceful stop, bounded by `dispatcher.shutdown_timeout` per phase."""
        timeout = self.settings.dispatcher.shutdown_timeout
        log.info("stopping: no new claims")
        if self._http is not None:
            self._http.stopping = True  # /readyz answers 503 from now on; /metrics serves until the end
        if self.router is not None:
            await self.router.stop()
        for disp in self.dispatchers:
            disp.stop_sending()
        # Nothing is sent from here on: hand this instance's share of the account rates to the others now rather
        # than after the drain (they take it at their next heartbeat).
        await self._leave()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A bounded poll: in-flight counts live in several sessions and change from their callbacks.
        while any(d.in_flight for d in self.dispatchers) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        left = sum(d.in_flight for d in self.dispatchers)
        if left:
            log.warning("in-flight submits unanswered at shutdown; they are re-queued", extra={"count": left})
        if self.writer is not None:
            await self.writer.drain(timeout)
        for disp in self.dispatchers:
            await disp.stop_binds(timeout=min(timeout, 5.0))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.writer is not None:
            await self.writer.stop(timeout)
        if self.mo_processor is not None:
            # Parts committed last are handled now rather than at the next start.
            try:
                await asyncio.wait_for(self.mo_processor.process_batch(), timeout)
            except Exception as exc:
                log.warning("final MO batch failed; parts stay stored", extra={"error": str(exc)})
            await self.mo_processor.stop()
        # POSTs in flight finish (bounded) and their results are written while the pool is still open.
        await asyncio.gather(*(sender.stop(timeout) for sender in self.webhook_senders), return_exceptions=True)
        self.webhook_senders = []
        if self.pool is not None:
            await asyncio.wait_for(self.pool.close(), timeout)
        if self._http is not None:
            await self._http.stop()
            self._http = None
        log.info("stopped")

    async def _leave(self) -> None:
        """Stop the heartbeat (it would register this instance again), then delete its rows: the other instances
        take its grants at their next heartbeat. Only once nothing is sent any more (rate_share.py)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        for disp in self.dispatchers:
            disp.account_bucket.close()  # the senders have stopped; this keeps it so whatever a bind still does
        if self.pool is None:
            return
        try:
            await self.pool.execute(sql.LEAVE_INSTANCE, self.settings.dispatcher.instance, timeout=5)
        except Exception as exc:  # the row goes stale instead: the others wait that long for its share
            log.warning("could not deregister instance", extra={"error": str(exc)})


async def run_gateway(settings: Settings, stop: asyncio.Event | None = None, *, apply_migrations: bool = True) -> None:
    """Run until SIGTERM / SIGINT (or `stop` is set), then shut down gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gw = Gateway(settings)
    await gw.start(apply_migrations=apply_migrations)
    try:
        await stop.wait()
    finally:
        await gw.stop()
