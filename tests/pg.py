"""Helpers for tests that need a real PostgreSQL (the fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

import asyncpg

ADMIN_DB: Final = "postgres"
TEMPLATE_DB: Final = "smsgw_template"
CONNECT_TIMEOUT_S: Final = 10.0
# CREATE DATABASE copies the template's files and checkpoints: allow for a slow CI disk.
DDL_TIMEOUT_S: Final = 60.0


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (database names cannot be bound as query parameters)."""
    return '"' + name.replace('"', '""') + '"'


async def connect(dsn: str) -> asyncpg.Connection:
    """Open a connection with a bounded connect timeout."""
    return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)


@contextlib.asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection closed on exit (terminated if closing does not finish in time)."""
    conn = await connect(dsn)
    try:
        yield conn
    finally:
        try:
            await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            conn.terminate()


async def create_database(admin_dsn: str, name: str, *, template: str = "template0") -> None:
    """CREATE DATABASE ``name`` as a copy of ``template`` (nobody may be connected to the template)."""
    async with connection(admin_dsn) as conn:
        await conn.execute(
            f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(template)}", timeout=DDL_TIMEOUT_S
        )


async def drop_database(admin_dsn: str, name: str) -> None:
    """DROP DATABASE ``name``, disconnecting whoever is still connected to it."""
    async with connection(admin_dsn) as conn:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)", timeout=DDL_TIMEOUT_S)


async def seal_template(admin_dsn: str, name: str) -> None:
    """Mark ``name`` as a template nobody can connect to.

    CREATE DATABASE ... TEMPLATE fails while any session is connected to the template, so a stray
    connection from one test would break every later test.
    """
    async with connection(admin_dsn) as conn:
        await conn.execute(
            f"ALTER DATABASE {quote_ident(name)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false",
            timeout=DDL_TIMEOUT_S,
        )


@contextlib.asynccontextmanager
async def listening(conn: asyncpg.Connection, channel: str) -> AsyncIterator[asyncio.Queue[str]]:
    """LISTEN on ``channel`` for the duration of the block; payloads arrive on the yielded queue.

    Read it with ``asyncio.wait_for(queue.get(), timeout)`` so a lost notification fails instead of hanging.
    """
    queue: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        queue.put_nowait(payload)

    await conn.add_listener(channel, on_notify)
    try:
        yield queue
    finally:
        if not conn.is_closed():
            await conn.remove_listener(channel, on_notify)
