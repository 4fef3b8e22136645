"""Least-privilege roles (migration 0009), against a real Postgres: what each role may do, what it may not (each
denial is Postgres's own InsufficientPrivilegeError, or the ledger trigger's error), the daemon run end to end as
the gateway role, and a catalogue check that keeps future migrations honest.

Login roles are made per module (trust auth in the test cluster: no password) and are members of the NOLOGIN
roles the migration created, which is how operators are told to use them (README "Security: roles and secrets").
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from click.testing import CliRunner, Result
from gw import campaign_settings, running_gateway
from pg import ADMIN_DB, connection, create_database, drop_database, quote_ident

from gateway.cli import main
from gateway.db.embedded import EmbeddedPostgres, free_port
from gateway.db.migrate import DEFAULT_ROLES, MigrationError, migrate
from gateway.settings import Settings
from gateway.simulator import SimulatorConfig, SmscSimulator

PRODUCER, GATEWAY, REPORTING = DEFAULT_ROLES["producer"], DEFAULT_ROLES["gateway"], DEFAULT_ROLES["reporting"]
SC = "12345"
KEYWORDS: dict[str, Any] = {
    "program": "Acme Alerts",
    "contact": "help@acme.example",
    "frequency": "Up to 4 msgs/week",
    "lists": [{"name": "news", "program": "Acme News", "frequency": "2 msgs/week"}],
    "default_list": "news",
}
# The consent tables of 0002 (opt-outs, subscriptions, lists, the ledger) and the MOs that carry consent.
CONSENT_TABLES = ("consent_event", "opt_out", "subscription", "subscriber_list", "inbound_message", "mo_part")
# What the README producer contract lets a producer write (and nothing else of outbound_message).
PRODUCER_COLUMNS = frozenset({
    "source", "destination", "body", "priority", "send_after", "expires_at", "idempotency_key", "message_class",
    "metadata", "list_name", "campaign_key", "template", "variables",  # the last two: 0012 (templates)
})
DEFINER_FUNCTIONS = ("smsgw_opt_in", "smsgw_opt_out", "smsgw_leave_list", "smsgw_set_attributes",
                     "outbound_message_render", "smsgw_webhook_inserted_final")
INSERT_ROW = "INSERT INTO outbound_message (source, destination, body) VALUES ('12345', '+12025550100', 'hi')"
PRODUCER_INSERT = "INSERT INTO outbound_message (source, destination, body,"  # + one column a producer may not set

_logins = {kind: f"t{os.getpid()}_{kind}_login" for kind in DEFAULT_ROLES}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def logins(pg_cluster: EmbeddedPostgres, pg_template: str) -> AsyncIterator[dict[str, str]]:
    """LOGIN roles, one per kind, each a member of the NOLOGIN role the template's migration created."""
    admin = pg_cluster.dsn(ADMIN_DB)
    async with connection(admin) as conn:
        for kind, login in _logins.items():
            await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(login)}")
            await conn.execute(f"CREATE ROLE {quote_ident(login)} LOGIN IN ROLE {quote_ident(DEFAULT_ROLES[kind])}")
    try:
        yield _logins
    finally:
        async with connection(admin) as conn:
            for login in _logins.values():
                await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(login)}")


def as_role(dsn: str, login: str) -> str:
    """The test database's DSN as another user (the cluster trusts 127.0.0.1)."""
    assert dsn.startswith("postgresql://postgres@"), dsn
    return dsn.replace("postgresql://postgres@", f"postgresql://{login}@", 1)


@pytest_asyncio.fixture(loop_scope="session")
async def producer(db_dsn: str, logins: dict[str, str]) -> AsyncIterator[asyncpg.Connection]:
    async with connection(as_role(db_dsn, logins["producer"])) as conn:
        yield conn


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(db_dsn: str, logins: dict[str, str]) -> AsyncIterator[asyncpg.Connection]:
    async with connection(as_role(db_dsn, logins["gateway"])) as conn:
        yield conn


@pytest_asyncio.fixture(loop_scope="session")
async def reporting(db_dsn: str, logins: dict[str, str]) -> AsyncIterator[asyncpg.Connection]:
    async with connection(as_role(db_dsn, logins["reporting"])) as conn:
        yield conn


async def denied(conn: asyncpg.Connection, statement: str, *args: object) -> str:
    """Run `statement`, which must be refused for want of a privilege; returns the error text."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as err:
        await conn.execute(statement, *args)
    return str(err.value)


# -- producer ---------------------------------------------------------------------------------------------


async def test_producer_inserts_and_reads_the_status_of_its_rows(
    db_pool: asyncpg.Pool, producer: asyncpg.Connection
) -> None:
    # The README's producer statements, as the producer role.
    row_id = await producer.fetchval(
        "INSERT INTO outbound_message (source, destination, body, priority, expires_at, message_class, metadata,"
        " idempotency_key) VALUES ($1, $2, $3, 10, now() + interval '10 minutes', 'transactional', $4::jsonb, $5)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        "12345", "+12025550123", "Your code is 481516", '{"order": 991}', "otp-7f3a9c",
    )
    assert isinstance(row_id, int)
    again = await producer.fetchval(
        "INSERT INTO outbound_message (source, destination, body, idempotency_key) VALUES ('12345', '+12025550123',"
        " 'Your code is 481516', 'otp-7f3a9c') ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
    )
    assert again is None  # safe to retry
    await producer.execute(
        "INSERT INTO outbound_message (source, destination, body, message_class, list_name) VALUES"
        " ('12345', '+12025550124', 'Sale', 'marketing', 'news')"
    )
    status = await producer.fetchrow(
        "SELECT status, reason, attempts, metadata FROM outbound_message_status WHERE id = $1", row_id
    )
    assert status is not None and (status["status"], status["attempts"]) == ("queued", 0)
    # The gateway moves it on; the producer sees the result.
    await db_pool.execute(
        "UPDATE outbound_message SET status = 'delivered', reason = 'delivered' WHERE id = $1", row_id
    )
    assert await producer.fetchval("SELECT status FROM outbound_message_status WHERE id = $1", row_id) == "delivered"
    # A keyword reply (it answers an MO: consent data) is not shown to producers.
    reply = await db_pool.fetchval(
        "INSERT INTO outbound_message (source, destination, body, inbound_message_id, is_opt_out_confirmation)"
        " VALUES ('12345', '+12025550199', 'You are unsubscribed', 1, true) RETURNING id"
    )
    assert await producer.fetchval("SELECT count(*) FROM outbound_message_status WHERE id = $1", reply) == 0
    assert await producer.fetchval("SELECT count(*) FROM outbound_message_status") == 2


@pytest.mark.parametrize(
    "statement",
    [
        *(f"SELECT * FROM {t} LIMIT 1" for t in CONSENT_TABLES),
        "SELECT count(*) FROM consent_event",
        "SELECT status, destination FROM outbound_message",  # the table itself: only through the view
        "SELECT body FROM outbound_message WHERE id = 1",
        "UPDATE outbound_message SET status = 'delivered'",
        "UPDATE outbound_message SET send_after = now()",
        "DELETE FROM outbound_message",
        "TRUNCATE outbound_message",
        "INSERT INTO outbound_message (source, destination, body, is_opt_out_confirmation)"
        " VALUES ('12345', '+12025550100', 'STOP confirmation', true)",
        f"{PRODUCER_INSERT} status) VALUES ('12345', '+12025550100', 'x', 'delivered')",
        f"{PRODUCER_INSERT} reason) VALUES ('12345', '+12025550100', 'x', 'delivered')",
        f"{PRODUCER_INSERT} attempts) VALUES ('12345', '+12025550100', 'x', 0)",
        # The MO link is what exempts a reply from an opt-out: never the producer's to write.
        f"{PRODUCER_INSERT} inbound_message_id) VALUES ('12345', '+12025550100', 'x', 1)",
        "INSERT INTO opt_out (short_code, msisdn) VALUES ('12345', '12025550100')",
        "SELECT smsgw_opt_in('12345', '+12025550100', 'news')",
        "SELECT smsgw_opt_out('12345', '+12025550100')",
        "SELECT smsgw_broadcast('12345', 'news', 'x', 'c1')",  # reads the subscriber list
        "CREATE TABLE producer_scratch (id int)",
    ],
)
async def test_producer_may_not(producer: asyncpg.Connection, statement: str) -> None:
    await denied(producer, statement)


# -- gateway ----------------------------------------------------------------------------------------------


def gateway_settings(dsn: str, sim: SmscSimulator, hook_port: int) -> Settings:
    """A daemon with keywords for SC, a webhook endpoint (its triggers, claims and results run as the gateway
    role too; nothing listens on its port, so every POST fails and is retried) and the HTTP server."""
    return campaign_settings(
        dsn, sim, {SC: KEYWORDS},
        dispatcher={"shutdown_timeout": 5},
        webhook={"crm": {"url": f"http://127.0.0.1:{hook_port}/hook",
                         "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                         "events": ["message.final", "mo.received", "consent.changed"], "timeout": 2}},
        webhooks={"poll_interval": 0.2, "retry_base": 0.1, "retry_max": 0.5},
        metrics={"enabled": True, "port": 0},
    )


class _Problems(logging.Handler):
    """Warnings and errors of the daemon's background tasks (maintenance, MO processor, senders) that a
    missing privilege would cause: they are logged and retried, never raised into the test."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.getMessage()} {vars(record)!r}"
        if "permission denied" in text.lower() or "InsufficientPrivilege" in text or "must be owner" in text:
            self.lines.append(text)


async def _wait(probe: Any, timeout: float = 15.0) -> Any:
    """Poll an async probe until it returns something truthy (or the time is up: return the last value)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = await probe()
    while not value and loop.time() < deadline:
        await asyncio.sleep(0.05)
        value = await probe()
    return value


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def test_gateway_role_runs_the_daemon_end_to_end(
    db_pool: asyncpg.Pool, db_dsn: str, logins: dict[str, str], producer: asyncpg.Connection
) -> None:
    gw_dsn = as_role(db_dsn, logins["gateway"])
    # The daemon migrates at start: as the gateway role, with nothing missing, that is a no-op without DDL.
    async with connection(gw_dsn) as conn:
        assert await conn.fetchval("SELECT current_user") == logins["gateway"]
        assert await migrate(conn) == []
    problems = _Problems()
    logging.getLogger().addHandler(problems)
    number, stopper = "+12025550150", "+12025550177"
    try:
        async with (
            SmscSimulator(SimulatorConfig(receipt_delay=0.01, deliver_timeout=1.0)) as sim,
            running_gateway(gateway_settings(gw_dsn, sim, hook_port=free_port())) as gw,
        ):
            await producer.executemany(
                "INSERT INTO outbound_message (source, destination, body) VALUES ($1, $2, $3)",
                [(SC, f"+1202555{i:04d}", f"hello {i}") for i in range(20)],
            )
            delivered = await _wait(lambda: db_pool.fetchval(
                "SELECT count(*) = 20 FROM outbound_message WHERE status = 'delivered'"))
            assert delivered, await db_pool.fetch("SELECT status, reason, detail FROM outbound_message")

            # STOP: opt-out with evidence and one confirmation; then a message to that number is refused.
            delivery = await sim.inject_mo(stopper, SC, "STOP")
            assert await sim.wait_for(lambda: delivery.acked, timeout=10)
            assert await _wait(lambda: db_pool.fetchval(
                "SELECT count(*) = 1 FROM opt_out WHERE short_code = $1 AND msisdn = $2", SC, stopper[1:]))
            assert await sim.wait_for(
                lambda: any(r.destination_addr == stopper[1:] and "unsubscribed" in r.text for r in sim.submits),
                timeout=10,
            ), [(r.destination_addr, r.text) for r in sim.submits][-5:]
            refused_id = await producer.fetchval(
                "INSERT INTO outbound_message (source, destination, body) VALUES ($1, $2, 'promo') RETURNING id",
                SC, stopper,
            )
            assert await _wait(lambda: producer.fetchval(
                "SELECT status = 'rejected' AND reason = 'opted_out' FROM outbound_message_status WHERE id = $1",
                refused_id))

            # HELP is written to the ledger by the gateway role itself (keywords/sql.py HELP_MANY).
            delivery = await sim.inject_mo(number, SC, "HELP")
            assert await sim.wait_for(lambda: delivery.acked, timeout=10)
            # START: the opt-out is lifted through smsgw_opt_in (SECURITY DEFINER), with its evidence.
            delivery = await sim.inject_mo(stopper, SC, "START")
            assert await sim.wait_for(lambda: delivery.acked, timeout=10)
            assert await _wait(lambda: db_pool.fetchval(
                "SELECT count(*) = 0 FROM opt_out WHERE short_code = $1 AND msisdn = $2", SC, stopper[1:]))
            assert await _wait(lambda: db_pool.fetchval(
                "SELECT count(*) = 1 FROM consent_event WHERE msisdn = $1 AND action = 'help'", number[1:]))

            # The webhook outbox: triggers wrote events as the gateway role, the sender claimed and recorded.
            assert await _wait(lambda: db_pool.fetchval(
                "SELECT count(*) > 0 FROM webhook_delivery WHERE attempts > 0 AND last_error IS NOT NULL"))
            # The status page, readiness (schema_migrations) and /metrics, read as the gateway role.
            base = f"http://127.0.0.1:{gw.metrics_port}"
            ready = await asyncio.to_thread(_http_get, base + "/readyz")
            assert ready[0] == 200, ready
            page = await asyncio.to_thread(_http_get, base + "/")
            assert page[0] == 200 and "sim" in page[1]
            await asyncio.sleep(0.5)  # a few maintenance passes (reaper, expiry, sweeper, heartbeat, pruning)
    finally:
        logging.getLogger().removeHandler(problems)
    events = await db_pool.fetch(
        "SELECT action, channel, keyword FROM consent_event WHERE msisdn = $1 ORDER BY id", stopper[1:]
    )
    assert [(e["action"], e["channel"], e["keyword"]) for e in events] == [
        ("opt_out", "sms", "STOP"), ("opt_in", "sms", "START")
    ]
    assert await db_pool.fetchval("SELECT status FROM subscription WHERE msisdn = $1", stopper[1:]) == "active"
    assert await db_pool.fetchval("SELECT count(*) FROM quarantine") == 0
    assert problems.lines == []


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE consent_event",
        "TRUNCATE consent_event CASCADE",
        "DELETE FROM consent_event",
        "UPDATE consent_event SET message_text = 'rewritten'",
        "DELETE FROM opt_out",
        "TRUNCATE opt_out",
        "UPDATE opt_out SET msisdn = '0'",
        "INSERT INTO opt_out (short_code, msisdn) VALUES ('12345', '12025550100')",  # only through smsgw_opt_out
        "UPDATE subscription SET status = 'active'",
        "DELETE FROM subscription",
        "ALTER TABLE consent_event DISABLE TRIGGER consent_event_append_only",
        "DROP TRIGGER consent_event_no_truncate ON consent_event",
        "DROP TABLE consent_event",
        "TRUNCATE outbound_message",
        "DELETE FROM outbound_message",
        "UPDATE outbound_message SET body = 'changed'",  # a producer's column
        "UPDATE outbound_message SET destination = '+12025550999'",
        "UPDATE outbound_message SET is_opt_out_confirmation = true",
        "CREATE TABLE gateway_scratch (id int)",
        "ALTER FUNCTION smsgw_opt_in(text, text, text, text, text, text, bigint, text) SECURITY INVOKER",
    ],
)
async def test_gateway_may_not(gateway: asyncpg.Connection, statement: str) -> None:
    await denied(gateway, statement)


async def test_opt_out_rows_leave_only_through_smsgw_opt_in_with_evidence(
    db_pool: asyncpg.Pool, gateway: asyncpg.Connection
) -> None:
    assert await gateway.fetchval("SELECT smsgw_opt_out('12345', '+12025550160', 'api', NULL, NULL, NULL, 'crm')")
    assert await gateway.fetchval("SELECT count(*) FROM opt_out WHERE msisdn = '12025550160'") == 1
    await denied(gateway, "DELETE FROM opt_out WHERE msisdn = '12025550160'")
    assert await gateway.fetchval("SELECT smsgw_opt_in('12345', '+12025550160', NULL, 'api', NULL, NULL, NULL, 'crm')")
    assert await gateway.fetchval("SELECT count(*) FROM opt_out WHERE msisdn = '12025550160'") == 0
    events = await db_pool.fetch(
        "SELECT action, source_detail FROM consent_event WHERE msisdn = '12025550160' ORDER BY id"
    )
    assert [(e["action"], e["source_detail"]) for e in events] == [("opt_out", "crm"), ("opt_in", "crm")]


async def test_the_ledger_refuses_even_its_owner(db_pool: asyncpg.Pool) -> None:
    """The append-only trigger covers TRUNCATE too (a statement-level BEFORE TRUNCATE trigger), for any role."""
    await db_pool.execute("SELECT smsgw_opt_out('12345', '+12025550161')")
    for statement in ("TRUNCATE consent_event", "TRUNCATE inbound_message CASCADE", "DELETE FROM consent_event",
                      "UPDATE consent_event SET keyword = 'x'"):
        with pytest.raises(asyncpg.RaiseError, match="consent_event is append-only"):
            await db_pool.execute(statement)
    assert await db_pool.fetchval("SELECT count(*) FROM consent_event") == 1


async def _cli(dsn: str, *args: str) -> Result:
    """`smsgw ARGS` in-process (CliRunner, in a thread: each command runs its own event loop)."""
    env = {"COLUMNS": "250", "SMSGW_CONFIG": None, "SMSGW_DATABASE__URL": dsn}
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env, catch_exceptions=False)


async def test_admin_commands_as_the_gateway_role_are_those_the_readme_says(
    db_pool: asyncpg.Pool, db_dsn: str, logins: dict[str, str], tmp_path: Path
) -> None:
    gw_dsn = as_role(db_dsn, logins["gateway"])
    await db_pool.execute("INSERT INTO subscriber_list (short_code, name, program) VALUES ('12345', 'news', 'N')")
    await db_pool.execute("SELECT smsgw_opt_in('12345', '+12025550170', 'news')")
    queued = await db_pool.fetchval(INSERT_ROW + " RETURNING id")
    failed = await db_pool.fetchval(
        "INSERT INTO outbound_message (source, destination, body, status, reason, done_at)"
        " VALUES ('12345', '+12025550171', 'x', 'failed', 'ESME_RSYSERR', now()) RETURNING id"
    )
    works = {
        "status": ["status", "--json"],
        "message show": ["message", "show", str(queued), "--json"],
        "consent history": ["consent", "history", "+12025550170", "--json"],
        "subscribers export": ["subscribers", "export", "12345", "news"],
        "webhooks list": ["webhooks", "list", "--json"],
        "webhooks replay": ["webhooks", "replay", "--since", "1h"],
        "webhooks retry-dead": ["webhooks", "retry-dead"],
        "broadcast": ["broadcast", "--short-code", "12345", "--list", "news", "--body", "News", "--campaign", "c1"],
        "message cancel": ["message", "cancel", str(queued)],
    }
    for name, args in works.items():
        result = await _cli(gw_dsn, *args)
        assert result.exit_code == 0, (name, result.output)
    assert await db_pool.fetchval("SELECT reason FROM outbound_message WHERE id = $1", queued) == "cancelled"
    assert await db_pool.fetchval("SELECT count(*) FROM outbound_message WHERE campaign_key = 'c1'") == 1
    # Operator writes beyond the daemon's needs: the owner's URL.
    retry = await _cli(gw_dsn, "message", "retry", str(failed))
    assert retry.exit_code == 1 and "permission denied" in retry.stderr, retry.output
    csv_file = tmp_path / "signups.csv"
    csv_file.write_text("number\n+12025550172\n")
    imported = await _cli(gw_dsn, "subscribers", "import", "12345", "news", str(csv_file))
    assert imported.exit_code == 1 and "permission denied" in imported.stderr, imported.output


# -- reporting --------------------------------------------------------------------------------------------


async def test_reporting_reads_everything_and_writes_nothing(reporting: asyncpg.Connection) -> None:
    tables = await reporting.fetch(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace"
        " AND c.relkind IN ('r', 'v', 'p') ORDER BY 1"
    )
    assert {t["relname"] for t in tables} >= {*CONSENT_TABLES, "outbound_message", "webhook_event"}
    for t in tables:
        await reporting.fetchval(f"SELECT count(*) FROM {quote_ident(t['relname'])}")
    await denied(reporting, INSERT_ROW)
    await denied(reporting, "UPDATE outbound_message SET status = 'failed'")
    await denied(reporting, "DELETE FROM pending_receipt")
    await denied(
        reporting, "INSERT INTO consent_event (msisdn, short_code, action, channel) VALUES ('1', '2', 'help', 'api')"
    )
    await denied(reporting, "SELECT smsgw_opt_out('12345', '+12025550100')")
    await denied(reporting, "CREATE TABLE reporting_scratch (id int)")


# -- the catalogue: what a future migration must keep --------------------------------------------------------


async def test_grants_cover_every_table_and_nothing_more(db_pool: asyncpg.Pool) -> None:
    """Every table and view of the schema: readable by reporting, never writable by it; the producer reaches
    outbound_message (its own columns) and the status view only; the gateway may never empty, delete from or
    rewrite the consent tables. A migration that adds a table without its grants fails here."""
    rows = await db_pool.fetch(
        """
        SELECT c.relname AS t, c.relkind AS kind,
               has_table_privilege($1, c.oid, 'SELECT') AS r_select,
               has_table_privilege($1, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') AS r_write,
               has_any_column_privilege($2, c.oid, 'SELECT, INSERT, UPDATE, REFERENCES')
                   OR has_table_privilege($2, c.oid, 'DELETE, TRUNCATE, TRIGGER') AS p_any,
               has_any_column_privilege($3, c.oid, 'SELECT') AS g_select,
               has_table_privilege($3, c.oid, 'TRUNCATE, TRIGGER, REFERENCES') AS g_owner_like,
               has_table_privilege($3, c.oid, 'DELETE') OR has_any_column_privilege($3, c.oid, 'UPDATE') AS g_change,
               has_any_column_privilege($3, c.oid, 'INSERT') AS g_insert
        FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'v', 'p')
        """,
        REPORTING, PRODUCER, GATEWAY,
    )
    by_table = {r["t"]: r for r in rows}
    assert len(by_table) >= 16, sorted(by_table)
    assert [t for t, r in by_table.items() if not r["r_select"] or r["r_write"]] == []
    assert sorted(t for t, r in by_table.items() if r["p_any"]) == ["outbound_message", "outbound_message_status"]
    assert [t for t, r in by_table.items() if not r["g_select"]] == []
    assert [t for t, r in by_table.items() if r["g_owner_like"]] == []
    assert sorted(t for t in ("consent_event", "opt_out", "subscription") if by_table[t]["g_change"]) == []
    assert sorted(t for t in ("opt_out", "subscription") if by_table[t]["g_insert"]) == []

    columns = await db_pool.fetch(
        "SELECT attname, has_column_privilege($1, 'outbound_message', attname, 'INSERT') AS p_insert,"
        " has_column_privilege($1, 'outbound_message', attname, 'UPDATE') AS p_update,"
        " has_column_privilege($2, 'outbound_message', attname, 'UPDATE') AS g_update"
        " FROM pg_attribute WHERE attrelid = 'outbound_message'::regclass AND attnum > 0 AND NOT attisdropped",
        PRODUCER, GATEWAY,
    )
    assert {c["attname"] for c in columns if c["p_insert"]} == PRODUCER_COLUMNS
    assert [c["attname"] for c in columns if c["p_update"]] == []
    # The gateway updates the status columns, never what the producer wrote nor the MO link.
    assert {c["attname"] for c in columns if c["g_update"]}.isdisjoint(
        PRODUCER_COLUMNS - {"send_after"} | {"inbound_message_id", "is_opt_out_confirmation", "id", "created_at"}
    )

    functions = await db_pool.fetch(
        "SELECT proname, prosecdef, proconfig, has_function_privilege('public', p.oid, 'EXECUTE') AS public_exec,"
        " has_function_privilege($1, p.oid, 'EXECUTE') AS producer_exec"
        " FROM pg_proc p WHERE proname = ANY($2::text[])",
        PRODUCER, list(DEFINER_FUNCTIONS),
    )
    assert sorted(f["proname"] for f in functions) == sorted(DEFINER_FUNCTIONS)
    for f in functions:
        assert f["prosecdef"], f  # a CREATE OR REPLACE that forgot SECURITY DEFINER lands here
        assert any(c.startswith("search_path=") and c.endswith("pg_temp") for c in f["proconfig"] or []), f
        assert not f["public_exec"] and not f["producer_exec"], f
    triggers = await db_pool.fetchval(
        "SELECT array_agg(tgname ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'consent_event'::regclass"
        " AND NOT tgisinternal AND tgenabled <> 'D'"
    )
    assert {"consent_event_append_only", "consent_event_no_truncate"} <= set(triggers)


# -- the migration itself: cluster-wide roles, idempotent, names configurable -------------------------------


async def test_roles_are_created_once_per_cluster_and_names_are_configurable(pg_cluster: EmbeddedPostgres) -> None:
    admin = pg_cluster.dsn(ADMIN_DB)
    custom = {kind: f"t{os.getpid()}_acme_{kind}" for kind in DEFAULT_ROLES}
    names = [f"roles_mig_{os.getpid()}_{i}" for i in range(3)]
    for name in names:
        await create_database(admin, name, template="template0")
    try:
        async def migrate_db(name: str, roles: dict[str, str] | None) -> list[str]:
            async with connection(pg_cluster.dsn(name)) as conn:
                return await migrate(conn, roles=roles)

        # The default roles exist already (the template): migrating another database is not an error. Two
        # databases creating the same new roles at the same moment: one creates, the other finds them.
        results = await asyncio.gather(
            migrate_db(names[0], None), migrate_db(names[1], custom), migrate_db(names[2], custom)
        )
        assert all("0009_roles" in r for r in results), results
        async with connection(admin) as conn:
            created = await conn.fetch(
                "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY($1::text[])", list(custom.values())
            )
        assert sorted((r["rolname"], r["rolcanlogin"]) for r in created) == sorted((n, False) for n in custom.values())
        async with connection(pg_cluster.dsn(names[1])) as conn:
            assert await conn.fetchval(
                "SELECT has_table_privilege($1, 'consent_event', 'SELECT')", custom["reporting"]
            )
            assert await conn.fetchval(
                "SELECT has_column_privilege($1, 'outbound_message', 'body', 'INSERT')", custom["producer"]
            )
            assert not await conn.fetchval(
                "SELECT has_table_privilege($1, 'consent_event', 'SELECT')", custom["producer"]
            )
            # The default-named roles got nothing in a database migrated with other names.
            assert not await conn.fetchval("SELECT has_table_privilege($1, 'consent_event', 'SELECT')", REPORTING)
        with pytest.raises(MigrationError, match="unknown role kind"):
            async with connection(pg_cluster.dsn(names[0])) as conn:
                await migrate(conn, roles={"admin": "x"})
    finally:
        for name in names:
            await drop_database(admin, name)
        async with connection(admin) as conn:
            for role in custom.values():
                await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(role)}")


async def test_the_gateway_role_cannot_migrate_and_is_told_who_must(
    pg_cluster: EmbeddedPostgres, logins: dict[str, str]
) -> None:
    admin = pg_cluster.dsn(ADMIN_DB)
    name = f"roles_empty_{os.getpid()}"
    await create_database(admin, name, template="template0")
    try:
        async with connection(as_role(pg_cluster.dsn(name), logins["gateway"])) as conn:
            with pytest.raises(MigrationError, match="owns the schema") as err:
                await migrate(conn)
        assert isinstance(err.value.__cause__, asyncpg.InsufficientPrivilegeError)
    finally:
        await drop_database(admin, name)
