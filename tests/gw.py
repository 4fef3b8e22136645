"""Helpers for integration tests: settings for a gateway pointed at a simulator, enqueueing, waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from gateway.app import Gateway
from gateway.settings import Settings, load_settings
from gateway.simulator import SmscSimulator

ENQUEUE = """
INSERT INTO outbound_message (source, destination, body, expires_at, priority)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::smallint[])
"""


def settings_for(dsn: str, sim: SmscSimulator, **smsc: Any) -> Settings:
    """Fast timers so faults are noticed within a test's patience; metrics off (one registry per process)."""
    smsc_settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": sim.port,
        "system_id": "smsgw",
        "password": "secret",
        "window": 20,
        "reconnect_min": 0.05,
        "reconnect_max": 0.5,
        "response_timeout": 5.0,
        "enquire_link_interval": 5.0,
    }
    smsc_settings.update(smsc)
    return load_settings(
        None,
        database={"url": dsn},
        smsc={"sim": smsc_settings},
        dispatcher={
            "flush_interval": 0.01,
            "poll_interval": 0.2,
            "maintenance_interval": 0.2,
            "retry_base": 0.05,
            "retry_max": 0.5,
            "lease_seconds": 30,
            "shutdown_timeout": 5,
        },
        metrics={"enabled": False},
    )


def campaign_settings(
    dsn: str,
    sim: SmscSimulator,
    keywords: dict[str, Any] | None = None,
    *,
    window: int = 20,
    maintenance_interval: float = 0.2,
    dispatcher: dict[str, Any] | None = None,
    **sections: Any,
) -> Settings:
    """A gateway for the end-to-end tests of the campaign features (templates, events, schedules, caps, content
    checks, report, roles): fast timers, quiet hours off (the tests run at any hour of the day), the short codes'
    `keywords`. `dispatcher` adds to the dispatcher settings; other sections (webhook, metrics...) pass through."""
    return load_settings(
        None,
        database={"url": dsn},
        smsc={"sim": {"port": sim.port, "system_id": "smsgw", "password": "secret", "window": window,
                      "reconnect_min": 0.05, "reconnect_max": 0.5}},
        dispatcher={"flush_interval": 0.01, "poll_interval": 0.2, "maintenance_interval": maintenance_interval,
                    "retry_base": 0.05, "quiet_hours": False, **(dispatcher or {})},
        inbound={"poll_interval": 0.2},
        keywords=keywords or {},
        **{"metrics": {"enabled": False}, **sections},
    )


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    gw = Gateway(settings)
    await gw.start(apply_migrations=False)
    try:
        yield gw
    finally:
        await gw.stop()


async def enqueue(
    pool: asyncpg.Pool,
    n: int,
    *,
    body: str = "hello from the gateway",
    source: str = "12345",
    start: int = 0,
) -> None:
    dest = [f"+1202555{(start + i) % 10000:04d}" for i in range(n)]
    await pool.execute(ENQUEUE, [source] * n, dest, [body] * n, [None] * n, [0] * n)


async def counts(pool: asyncpg.Pool) -> dict[str, int]:
    return dict(await pool.fetch("SELECT status, count(*) FROM outbound_message GROUP BY status"))  # type: ignore[arg-type]


async def wait_status(pool: asyncpg.Pool, status: str, n: int, timeout: float) -> dict[str, int]:
    """Wait until `n` rows have `status`; return the final counts (the caller asserts on them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    c = await counts(pool)
    while c.get(status, 0) < n and loop.time() < deadline:
        await asyncio.sleep(0.05)
        c = await counts(pool)
    return c


async def wait_final(pool: asyncpg.Pool, timeout: float) -> dict[str, int]:
    """Wait until no row is queued, claimed or submitted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        c = await counts(pool)
        if not any(c.get(s, 0) for s in ("queued", "claimed", "submitted")):
            return c
        await asyncio.sleep(0.05)
    return await counts(pool)
