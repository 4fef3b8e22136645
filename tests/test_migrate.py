"""Migrations: apply, idempotence, concurrency, and the schema they produce."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from pg import ADMIN_DB, connection, create_database, drop_database, listening

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrate import MIGRATION_LOCK_KEY, Migration, MigrationError, load_migrations, migrate

NOTIFY_TIMEOUT_S = 5.0
_empty_numbers = itertools.count(1)


@pytest_asyncio.fixture(loop_scope="session")
async def empty_dsn(pg_cluster: EmbeddedPostgres) -> AsyncIterator[str]:
    """DSN of a database with no migrations applied (cloned from template0, not the migrated template)."""
    name = f"empty_{next(_empty_numbers)}"
    admin_dsn = pg_cluster.dsn(ADMIN_DB)
    await create_database(admin_dsn, name)
    try:
        yield pg_cluster.dsn(name)
    finally:
        await drop_database(admin_dsn, name)


def _shipped_names() -> list[str]:
    return [m.name for m in load_migrations()]


async def _recorded(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    return [(r["version"], r["name"]) for r in rows]


def test_shipped_migrations_are_numbered_from_one() -> None:
    migrations = load_migrations()
    assert migrations, "no migration files found through importlib.resources"
    assert migrations[0].name == "0001_outbound"
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))


async def test_applies_to_empty_database_and_is_idempotent(empty_dsn: str) -> None:
    async with connection(empty_dsn) as conn:
        applied = await migrate(conn)
        assert applied == _shipped_names()
        assert await _recorded(conn) == [(m.version, m.name) for m in load_migrations()]
        assert await migrate(conn) == []
        assert len(await _recorded(conn)) == len(applied)
        # The advisory lock is released and lock_timeout restored: the connection is left as found.
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 0
        assert await conn.fetchval("SHOW lock_timeout") == "0"


async def test_concurrent_migrations_apply_each_file_once(empty_dsn: str) -> None:
    async with connection(empty_dsn) as first, connection(empty_dsn) as second:
        results = await asyncio.wait_for(asyncio.gather(migrate(first), migrate(second)), 60)
        assert sorted(results, key=len) == [[], _shipped_names()]
        counts = await first.fetch("SELECT version, count(*) AS n FROM schema_migrations GROUP BY version")
        assert {r["version"]: r["n"] for r in counts} == {m.version: 1 for m in load_migrations()}


async def test_migrate_gives_up_when_the_lock_is_held(empty_dsn: str) -> None:
    async with connection(empty_dsn) as holder, connection(empty_dsn) as waiter:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            with pytest.raises(MigrationError, match="migration lock"):
                await asyncio.wait_for(migrate(waiter, lock_timeout=0.3), 10)
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        assert await waiter.fetchval("SHOW lock_timeout") == "0"
        assert await migrate(waiter) == _shipped_names()


async def test_failing_migration_is_rolled_back(empty_dsn: str) -> None:
    good = Migration(version=1, name="0001_good", sql="CREATE TABLE good (id int)")
    bad = Migration(version=2, name="0002_bad", sql="CREATE TABLE half (id int); SELECT 1/0")
    async with connection(empty_dsn) as conn:
        with pytest.raises(MigrationError, match="0002_bad"):
            await migrate(conn, migrations=[good, bad])
        assert await _recorded(conn) == [(1, "0001_good")]
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 0


async def test_renamed_migration_is_an_error(empty_dsn: str) -> None:
    async with connection(empty_dsn) as conn:
        await migrate(conn, migrations=[Migration(1, "0001_first", "SELECT 1")])
        with pytest.raises(MigrationError, match="renamed"):
            await migrate(conn, migrations=[Migration(1, "0001_other", "SELECT 1")])


async def test_migrate_refuses_an_open_transaction(empty_dsn: str) -> None:
    async with connection(empty_dsn) as conn, conn.transaction():
        with pytest.raises(MigrationError, match="transaction"):
            await migrate(conn)


@pytest.mark.parametrize("bad_name", ["1_short.sql", "0002-dash.sql", "0002_Upper.sql", "0002_.sql.sql"])
def test_badly_named_migration_file_is_an_error(tmp_path: Path, bad_name: str) -> None:
    (tmp_path / "0001_ok.sql").write_text("SELECT 1")
    (tmp_path / bad_name).write_text("SELECT 1")
    with pytest.raises(MigrationError, match="does not match"):
        load_migrations(tmp_path)


def test_duplicate_migration_number_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("SELECT 1")
    (tmp_path / "0001_two.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="two migrations numbered 0001"):
        load_migrations(tmp_path)


async def test_tables_and_indexes_exist(db_pool: asyncpg.Pool) -> None:
    rows = await db_pool.fetch(
        """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename IN ('outbound_message', 'pending_receipt', 'inbound_message')
        """
    )
    indexes = {r["indexname"]: r for r in rows}
    expected = {
        "outbound_message_pkey": "outbound_message",
        "outbound_message_idempotency_key_key": "outbound_message",
        "outbound_message_queue_idx": "outbound_message",
        "outbound_message_lease_idx": "outbound_message",
        "outbound_message_msgid_idx": "outbound_message",
        "outbound_message_expiry_idx": "outbound_message",
        "pending_receipt_pkey": "pending_receipt",
        "pending_receipt_key_idx": "pending_receipt",
        "inbound_message_pkey": "inbound_message",
    }
    assert {name: indexes[name]["tablename"] for name in expected if name in indexes} == expected
    # The claim orders by (priority DESC, send_after, id): the queue index must match it column for column.
    queue_def = indexes["outbound_message_queue_idx"]["indexdef"]
    assert "(priority DESC, send_after, id)" in queue_def
    assert "WHERE (status = 'queued'::text)" in queue_def
    # The lease index is on claimed_until, never on status = 'claimed'.
    lease_def = indexes["outbound_message_lease_idx"]["indexdef"]
    assert "(claimed_until) WHERE (claimed_until IS NOT NULL)" in lease_def


async def test_outbound_insert_defaults(db_pool: asyncpg.Pool) -> None:
    row = await db_pool.fetchrow(
        """
        INSERT INTO outbound_message (source, destination, body) VALUES ('12345', '+15551230000', 'hi')
        RETURNING status, attempts, priority, message_class, metadata, send_after <= now() AS due
        """
    )
    assert row is not None
    assert row["status"] == "queued"
    assert row["attempts"] == 0
    assert row["priority"] == 0
    assert row["message_class"] == "transactional"
    assert row["metadata"] == "{}"
    assert row["due"] is True


async def test_notify_trigger_is_statement_level(db_pool: asyncpg.Pool) -> None:
    # A per-row NOTIFY would serialise producers' commits; only a statement-level trigger is acceptable.
    orientation = await db_pool.fetchval(
        """
        SELECT DISTINCT action_orientation FROM information_schema.triggers
        WHERE event_object_table = 'outbound_message' AND trigger_name = 'outbound_message_notify'
        """
    )
    assert orientation == "STATEMENT"


async def test_notify_fires_for_multi_row_insert_and_copy(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as listener, listening(listener, "smsgw_outbound") as notifications:
        await db_pool.execute(
            """
            INSERT INTO outbound_message (source, destination, body)
            SELECT '12345', '+1555123' || lpad(n::text, 4, '0'), 'msg ' || n FROM generate_series(1, 3) AS n
            """
        )
        payload = await asyncio.wait_for(notifications.get(), NOTIFY_TIMEOUT_S)
        assert payload == ""

        async with db_pool.acquire() as producer:
            await producer.copy_records_to_table(
                "outbound_message",
                records=[("12345", "+15551239999", "copied"), ("12345", "+15551239998", "copied")],
                columns=["source", "destination", "body"],
                timeout=NOTIFY_TIMEOUT_S,
            )
        payload = await asyncio.wait_for(notifications.get(), NOTIFY_TIMEOUT_S)
        assert payload == ""
    assert await db_pool.fetchval("SELECT count(*) FROM outbound_message") == 5
