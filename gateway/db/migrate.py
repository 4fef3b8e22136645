"""Numbered SQL migrations from ``gateway/db/migrations/NNNN_name.sql``.

Each migration runs once, in its own transaction together with its row in ``schema_migrations``; a
session-level advisory lock makes concurrent instances take turns, so two gateways starting at once against
an empty database cannot both apply the same file. Never edit a migration that has landed: add a new file.
A migration cannot use statements that refuse to run in a transaction (``CREATE INDEX CONCURRENTLY``).

Migrations run as the role that owns the schema. The daemon calls :func:`migrate` at start too, usually as the
least-privileged gateway role (0009): when nothing is missing that costs it two reads and no DDL, so it needs no
CREATE privilege; when something is missing it fails with a message saying who must migrate.

Role names of 0009 come from the custom settings ``smsgw.producer_role``, ``smsgw.gateway_role`` and
``smsgw.reporting_role`` (``ALTER DATABASE ... SET``, or ``?smsgw.gateway_role=...`` in the owner's URL), or
from ``migrate(conn, roles={"gateway": ...})``, which sets them for each migration's transaction. They are
passed as values and quoted by the migration itself (``format('%I')``), never pasted into SQL here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Final

import asyncpg

__all__ = ["DEFAULT_ROLES", "MIGRATION_LOCK_KEY", "Migration", "MigrationError", "load_migrations", "migrate"]

log = logging.getLogger(__name__)

# Advisory lock key for migrations ('smsgw_mg' as a big-endian bigint). Advisory locks are per database.
MIGRATION_LOCK_KEY: Final = 0x736D_7367_775F_6D67

_FILE_NAME: Final = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_PACKAGE: Final = "gateway.db"
_FOLDER: Final = "migrations"

# The least-privilege roles of 0009 (role kind -> default name); each name can be set with the custom setting
# smsgw.<kind>_role or migrate(roles=...).
DEFAULT_ROLES: Final = {"producer": "smsgw_producer", "gateway": "smsgw_gateway", "reporting": "smsgw_reporting"}
# Postgres truncates longer identifiers (NAMEDATALEN - 1 bytes), which would silently create another role.
_MAX_IDENTIFIER_BYTES: Final = 63

_OWNER_HINT: Final = (
    "migrations must run as the role that owns the schema (smsgw migrate with the owner's database URL), "
    "not as the least-privileged gateway role"
)

_CREATE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migration files are malformed, disagree with the database, or the lock could not be taken."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: ``version`` 1 and ``name`` "0001_outbound" for ``0001_outbound.sql``."""

    version: int
    name: str
    sql: str


def load_migrations(folder: Traversable | None = None) -> list[Migration]:
    """Read every migration in ``folder`` (default: the ones shipped with the package), ordered by version.

    Loaded through importlib.resources so it works from an installed wheel as well as from a checkout.
    Raises :class:`MigrationError` for a ``.sql`` file whose name is not ``NNNN_lowercase_name.sql`` and for
    two files with the same number.
    """
    if folder is None:
        folder = resources.files(_PACKAGE).joinpath(_FOLDER)
    migrations: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.is_file() or not entry.name.lower().endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} does not match NNNN_name.sql (lowercase letters, digits, _)"
            )
        version = int(match.group(1))
        name = entry.name.removesuffix(".sql")
        if version in migrations:
            raise MigrationError(f"two migrations numbered {version:04d}: {migrations[version].name}, {name}")
        migrations[version] = Migration(version=version, name=name, sql=entry.read_text(encoding="utf-8"))
    return [migrations[v] for v in sorted(migrations)]


async def migrate(
    conn: asyncpg.Connection,
    *,
    lock_timeout: float = 60.0,
    migrations: Sequence[Migration] | None = None,
    roles: Mapping[str, str] | None = None,
) -> list[str]:
    """Apply the missing migrations on ``conn``'s database and return their names, in order.

    Idempotent: a second call returns []. Waits at most ``lock_timeout`` seconds for each lock (the advisory
    lock another instance holds while it migrates, and the table locks a migration needs while live traffic
    holds them), then raises :class:`MigrationError`. ``conn`` must not be inside a transaction, because
    every migration commits on its own. ``migrations`` defaults to :func:`load_migrations` (tests pass their
    own). ``roles`` names the roles of 0009 by kind (``{"gateway": "acme_gw"}``; keys of
    :data:`DEFAULT_ROLES`); unnamed kinds use the session's ``smsgw.<kind>_role`` setting, else the default.
    A failing migration raises :class:`MigrationError`; it and the later ones are not recorded.
    """
    role_settings = _role_settings(roles)
    if conn.is_in_transaction():
        raise MigrationError("migrate() needs a connection outside a transaction (each migration commits)")
    if migrations is None:
        migrations = load_migrations()
    migrations = sorted(migrations, key=lambda m: m.version)
    previous_lock_timeout = await conn.fetchval("SELECT current_setting('lock_timeout')")
    # lock_timeout bounds pg_advisory_lock as well as the DDL's table locks; restored in finally.
    timeout_ms = max(1, round(lock_timeout * 1000))
    await conn.execute("SELECT set_config('lock_timeout', $1, false)", f"{timeout_ms}ms")
    try:
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        except asyncpg.LockNotAvailableError as exc:
            raise MigrationError(
                f"another instance held the migration lock for more than {lock_timeout:g}s"
            ) from exc
        try:
            return await _apply_missing(conn, migrations, role_settings)
        finally:
            # A dead connection has released its session locks already; do not mask the original error.
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT set_config('lock_timeout', $1, false)", previous_lock_timeout)


def _role_settings(roles: Mapping[str, str] | None) -> dict[str, str]:
    """``roles`` as custom settings (``smsgw.gateway_role`` -> name), checked.

    Raises:
        MigrationError: an unknown kind, or a name Postgres would not keep as written.
    """
    out: dict[str, str] = {}
    for kind, name in (roles or {}).items():
        if kind not in DEFAULT_ROLES:
            raise MigrationError(f"unknown role kind {kind!r} (expected one of {sorted(DEFAULT_ROLES)})")
        if not name or len(name.encode()) > _MAX_IDENTIFIER_BYTES or "\x00" in name:
            raise MigrationError(f"role name for {kind} must be 1-{_MAX_IDENTIFIER_BYTES} bytes without NUL")
        out[f"smsgw.{kind}_role"] = name
    return out


async def _apply_missing(
    conn: asyncpg.Connection, migrations: Sequence[Migration], role_settings: Mapping[str, str]
) -> list[str]:
    """Apply what schema_migrations does not list yet; the caller holds the advisory lock."""
    # Only when missing: CREATE TABLE IF NOT EXISTS checks the CREATE privilege on the schema before it looks,
    # and the daemon migrates at start as a role that has none. Under the lock: concurrent creations could
    # still collide in the catalogue.
    if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
        try:
            await conn.execute(_CREATE_TABLE)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise MigrationError(f"cannot create schema_migrations: {exc}; {_OWNER_HINT}") from exc
    applied: dict[int, str] = {
        row["version"]: row["name"] for row in await conn.fetch("SELECT version, name FROM schema_migrations")
    }
    known = {m.version for m in migrations}
    for version in sorted(set(applied) - known):
        # A newer instance migrated this database (rolling deploy): carry on, the schema only grew.
        log.warning(
            "database has migration %s that this code does not know",
            applied[version],
            extra={"migration": applied[version]},
        )
    done: list[str] = []
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None:
            if recorded != migration.name:
                raise MigrationError(
                    f"migration {migration.version:04d} is recorded as {recorded!r} but the file is "
                    f"{migration.name!r}; migrations must never be renamed or replaced"
                )
            continue
        log.info("applying migration %s", migration.name, extra={"migration": migration.name})
        try:
            async with conn.transaction():
                for key, value in role_settings.items():
                    # Transaction-local (is_local = true): gone with the commit, never seen by other statements.
                    await conn.execute("SELECT set_config($1, $2, true)", key, value)
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
        except asyncpg.InsufficientPrivilegeError as exc:
            raise MigrationError(f"migration {migration.name} failed: {exc}; {_OWNER_HINT}") from exc
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
        done.append(migration.name)
    if done:
        log.info("applied %d migration(s): %s", len(done), ", ".join(done), extra={"migrations": done})
    return done
