"""/healthz and /readyz on the metrics port, against a real Postgres and real SMPP over loopback: readiness
follows the bind (dropped by the simulator, refused, then back) and the schema (a database missing the newest
migration), liveness follows the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from gw import running_gateway, settings_for
from pg import ADMIN_DB, connection, create_database, drop_database

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrate import load_migrations, migrate
from gateway.http_server import LoopTicker
from gateway.settings import Settings
from gateway.simulator import SimulatorConfig, SmscSimulator

_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)


def with_http(settings: Settings) -> Settings:
    """The test settings with the HTTP server on (port 0: a free port, read back from Gateway.metrics_port)."""
    return settings.model_copy(
        update={"metrics": settings.metrics.model_copy(update={"enabled": True, "host": "127.0.0.1", "port": 0})}
    )


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url, timeout=_HTTP_TIMEOUT) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def wait_http(session: aiohttp.ClientSession, url: str, status: int, timeout: float) -> tuple[int, Any]:
    """Poll `url` until it answers `status` (or the time is up); the last answer, for the assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    answer = await get(session, url)
    while answer[0] != status and loop.time() < deadline:
        await asyncio.sleep(0.1)
        answer = await get(session, url)
    return answer


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_readyz_follows_the_bind(db_pool: asyncpg.Pool, db_dsn: str, http: aiohttp.ClientSession) -> None:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as sim:
        async with running_gateway(with_http(settings_for(db_dsn, sim))) as gw:
            base = f"http://127.0.0.1:{gw.metrics_port}"
            assert gw.metrics_port and gw.metrics_port > 0

            status, body = await get(http, f"{base}/healthz")
            assert status == 200 and body["status"] == "ok", body
            status, body = await wait_http(http, f"{base}/readyz", 200, timeout=10)
            assert status == 200, body
            assert body["checks"]["migrations"]["ok"] and body["checks"]["database"]["ok"]

            # /metrics is served by the same server, in the Prometheus text format.
            async with http.get(f"{base}/metrics", timeout=_HTTP_TIMEOUT) as resp:
                text = await resp.text()
                assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert 'smsgw_bind_up{bind="sim-0",smsc="sim"} 1.0' in text

            # The SMSC drops every connection and refuses the re-bind: not ready, and the check says why.
            sim.config.accounts["smsgw"] = "changed"
            sim.disconnect_all()
            status, body = await wait_http(http, f"{base}/readyz", 503, timeout=10)
            assert status == 503, body
            assert body["failed"] == ["binds"] and "sim" in body["checks"]["binds"]["detail"], body
            status, _ = await get(http, f"{base}/healthz")
            assert status == 200  # alive all the same: a carrier outage is no reason to restart the gateway

            # The heartbeat writes the bind error for the status page and `smsgw status`.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            row = await db_pool.fetchrow("SELECT binds_up, last_error FROM gateway_instance WHERE smsc = 'sim'")
            while (row is None or row["binds_up"] != 0 or not row["last_error"]) and loop.time() < deadline:
                await asyncio.sleep(0.1)
                row = await db_pool.fetchrow("SELECT binds_up, last_error FROM gateway_instance WHERE smsc = 'sim'")
            assert row is not None and row["binds_up"] == 0, row
            assert "sim-0" in row["last_error"] and "secret" not in row["last_error"], row

            # The SMSC takes binds again: ready after the re-bind.
            sim.config.accounts["smsgw"] = "secret"
            status, body = await wait_http(http, f"{base}/readyz", 200, timeout=15)
            assert status == 200, body

        # metrics.enabled = false (the other tests' settings) means no server at all.
        async with running_gateway(settings_for(db_dsn, sim)) as quiet:
            assert quiet.metrics_port is None


# Two releases behind too: a start-up step that reads a table of a recent migration must not stop the start.
@pytest.mark.parametrize("behind", [1, 2])
async def test_readyz_503_until_the_newest_migration_is_applied(
    pg_cluster: EmbeddedPostgres, http: aiohttp.ClientSession, behind: int
) -> None:
    shipped = load_migrations()
    name = f"health_old_schema_{behind}"
    admin = pg_cluster.dsn(ADMIN_DB)
    await create_database(admin, name)
    try:
        dsn = pg_cluster.dsn(name)
        async with connection(dsn) as conn:
            await migrate(conn, migrations=shipped[:-behind])  # the database of an earlier release
        async with SmscSimulator(SimulatorConfig()) as sim:
            async with running_gateway(with_http(settings_for(dsn, sim))) as gw:
                base = f"http://127.0.0.1:{gw.metrics_port}"
                # Bound, database reachable, but the schema is older than the code.
                await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
                status, body = await wait_http(http, f"{base}/readyz", 503, timeout=5)
                assert status == 503, body
                assert body["failed"] == ["migrations"], body
                assert body["checks"]["migrations"]["detail"] == "missing: " + ", ".join(
                    m.name for m in shipped[-behind:]
                )
                assert body["checks"]["database"]["ok"]

                async with connection(dsn) as conn:
                    assert await migrate(conn) == [m.name for m in shipped[-behind:]]
                status, body = await wait_http(http, f"{base}/readyz", 200, timeout=10)
                assert status == 200, body
    finally:
        await drop_database(admin, name)


async def test_healthz_fails_when_the_loop_stalls_or_the_ticker_dies(
    db_dsn: str, http: aiohttp.ClientSession
) -> None:
    ticker = LoopTicker(interval=0.1)
    ticker.start()
    await asyncio.sleep(0.15)
    assert ticker.healthy(stall_after=0.3)
    time.sleep(0.5)  # noqa: ASYNC251 - the stall under test: nothing else runs on the loop meanwhile
    assert not ticker.healthy(stall_after=0.3)
    assert ticker.beat_age() >= 0.5
    await asyncio.sleep(0.05)  # the loop runs again: the overdue tick comes first, and measures the stall
    assert ticker.healthy(stall_after=0.3) and ticker.lag >= 0.3
    await ticker.stop()

    # Through HTTP: a dead ticker means unhealthy, whatever the handler itself can still do.
    async with SmscSimulator(SimulatorConfig()) as sim:
        async with running_gateway(with_http(settings_for(db_dsn, sim))) as gw:
            base = f"http://127.0.0.1:{gw.metrics_port}"
            assert (await get(http, f"{base}/healthz"))[0] == 200
            assert gw._http is not None
            await gw._http.ticker.stop()
            status, body = await get(http, f"{base}/healthz")
            assert status == 503 and body["status"] == "stalled", body
