"""`smsgw webhooks run`: the webhook senders as a process of their own, apart from the SMPP daemon.

Rule of this module: the same senders as inside `smsgw run` (one per enabled endpoint), woken by the same
`NOTIFY smsgw_webhook` on a dedicated connection with a fallback poll, so running them apart changes where the
HTTP work burns CPU, nothing else. Set `webhooks.in_daemon = false` so the daemon does not run them too (two
sets would still deliver at least once, in order per key: claims are `FOR UPDATE SKIP LOCKED` with a lease).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import asyncpg

from gateway.settings import Settings
from gateway.webhooks import sql
from gateway.webhooks.sender import WebhookSender, start_senders, sync_endpoints

log = logging.getLogger(__name__)


async def _listen(dsn: str, senders: list[WebhookSender]) -> None:
    """Wake every sender on NOTIFY; reconnect with back-off (the senders poll meanwhile)."""
    def wake(*_args: object) -> None:
        for sender in senders:
            sender.wake()

    backoff = 0.5
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            await conn.add_listener(sql.CHANNEL, wake)
            wake()  # deliveries written while no listener was connected were not announced
            backoff = 0.5
            while not conn.is_closed():
                await asyncio.sleep(5)
                await conn.execute("SELECT 1", timeout=5)  # keep-alive: notice a dead link
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reconnect whatever broke
            log.warning("webhook listener lost", extra={"error": f"{type(exc).__name__}: {exc}", "retry_s": backoff})
        finally:
            if conn is not None and not conn.is_closed():
                await conn.close(timeout=5)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 10.0)


async def run_webhook_service(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the senders until SIGTERM / SIGINT (or `stop`), then let in-flight POSTs finish (bounded) and exit.

    Raises:
        OSError, asyncpg.PostgresError: the database is unreachable at start (fail fast).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dsn = settings.database.resolved_url()
    enabled = [name for name, ep in settings.webhook.items() if ep.enabled]
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max(2, len(enabled) + 1), timeout=30)
    senders: list[WebhookSender] = []
    listener: asyncio.Task[None] | None = None
    try:
        await sync_endpoints(pool, settings.webhook)
        senders = start_senders(pool, settings.webhook, settings.webhooks)
        listener = asyncio.create_task(_listen(dsn, senders), name="webhook-listener")
        log.info("webhook senders started", extra={"endpoints": enabled})
        await stop.wait()
    finally:
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        timeout = settings.dispatcher.shutdown_timeout
        await asyncio.gather(*(s.stop(timeout) for s in senders), return_exceptions=True)
        await asyncio.wait_for(pool.close(), timeout)
        log.info("webhook senders stopped")
