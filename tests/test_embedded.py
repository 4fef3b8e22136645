"""The private cluster helper: start, connect, stop, restart, and readable failures."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import asyncpg
import pytest
from pg import connection

from gateway.db.embedded import EmbeddedPostgres, EmbeddedPostgresError, find_bindir

# A second cluster next to the session one: keep its memory small.
SMALL = "32MB"


def test_find_bindir_holds_the_server_binaries() -> None:
    bindir = find_bindir()
    for binary in ("initdb", "pg_ctl", "postgres"):
        assert (bindir / binary).is_file()


def test_dsn_before_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedPostgresError, match="start"):
        EmbeddedPostgres(tmp_path / "data").dsn()


async def test_second_cluster_starts_connects_and_stops(tmp_path: Path) -> None:
    cluster = EmbeddedPostgres(tmp_path / "data", shared_buffers=SMALL)
    with cluster:
        assert cluster.running
        assert cluster.dsn("smsgw") == f"postgresql://postgres@127.0.0.1:{cluster.port}/smsgw"
        async with connection(cluster.dsn()) as conn:
            assert await conn.fetchval("SELECT 1") == 1
            settings = {
                r["name"]: r["setting"]
                for r in await conn.fetch(
                    """
                    SELECT name, setting FROM pg_settings WHERE name IN
                    ('listen_addresses', 'fsync', 'max_connections', 'idle_in_transaction_session_timeout',
                     'autovacuum_naptime', 'server_encoding', 'lc_collate')
                    """
                )
            }
        assert settings == {
            "listen_addresses": "127.0.0.1",
            "fsync": "on",
            "max_connections": "200",
            "idle_in_transaction_session_timeout": "60000",
            "autovacuum_naptime": "10",
            "server_encoding": "UTF8",
            "lc_collate": "C",
        }
    assert not cluster.running
    cluster.stop()  # idempotent
    cluster.stop()
    with pytest.raises((OSError, asyncpg.PostgresError, asyncio.TimeoutError)):
        await asyncpg.connect(cluster.dsn(), timeout=5)


async def test_restart_keeps_the_data(tmp_path: Path) -> None:
    cluster = EmbeddedPostgres(tmp_path / "data", shared_buffers=SMALL)
    with cluster:
        async with connection(cluster.dsn()) as conn:
            await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
    # The second start must reuse the initialised data directory rather than run initdb again.
    with cluster:
        async with connection(cluster.dsn()) as conn:
            assert await conn.fetchval("SELECT v FROM kept") == "still here"


def test_start_failure_reports_the_server_log(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cluster = EmbeddedPostgres(tmp_path / "data", port=port, shared_buffers=SMALL)
        with pytest.raises(EmbeddedPostgresError, match="Address already in use") as excinfo:
            cluster.start()
    assert "pg_ctl start failed" in str(excinfo.value)
    assert not cluster.running
    cluster.stop()  # nothing to stop, must not raise
