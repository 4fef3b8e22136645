"""Shared fixtures: one private PostgreSQL cluster per test session, one fresh database per test.

The schema is migrated once into a template database; each test gets a clone (CREATE DATABASE ... TEMPLATE,
a file copy) that is dropped afterwards, so tests are isolated without paying for migrations every time.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from pg import ADMIN_DB, TEMPLATE_DB, connection, create_database, drop_database, seal_template

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrate import migrate

_POOL_TIMEOUT_S = 10.0
_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedPostgres]:
    """A private cluster for the whole session, stopped at the end even when tests fail.

    Its folder is not under pytest's basetemp: a second pytest session of the same user (a developer's next run
    beside a long one) prunes older basetemp folders, which deleted a running cluster's data directory."""
    base = Path(tempfile.mkdtemp(prefix="smsgw-test-pg-"))
    cluster = EmbeddedPostgres(base / "data", log_file=base / "postgres.log")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_template(pg_cluster: EmbeddedPostgres) -> str:
    """Name of a database with every migration applied, to clone per test."""
    admin_dsn = pg_cluster.dsn(ADMIN_DB)
    await create_database(admin_dsn, TEMPLATE_DB)
    async with connection(pg_cluster.dsn(TEMPLATE_DB)) as conn:
        await migrate(conn)
    await seal_template(admin_dsn, TEMPLATE_DB)
    return TEMPLATE_DB


@pytest_asyncio.fixture(loop_scope="session")
async def db_dsn(pg_cluster: EmbeddedPostgres, pg_template: str) -> AsyncIterator[str]:
    """DSN of a fresh, migrated database for one test; dropped afterwards."""
    name = f"test_{next(_database_numbers)}"
    admin_dsn = pg_cluster.dsn(ADMIN_DB)
    await create_database(admin_dsn, name, template=pg_template)
    try:
        yield pg_cluster.dsn(name)
    finally:
        await drop_database(admin_dsn, name)


@pytest_asyncio.fixture(loop_scope="session")
async def db_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool (1 to 4 connections) on the test's database."""
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4, timeout=_POOL_TIMEOUT_S)
    try:
        yield pool
    finally:
        try:
            # close() waits for connections a test forgot to release: do not hang the session on that.
            await asyncio.wait_for(pool.close(), _POOL_TIMEOUT_S)
        except TimeoutError:
            pool.terminate()


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM), made with the machine's openssl command."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key
