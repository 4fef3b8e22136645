"""Webhook operations against a real Postgres: `smsgw webhooks list | replay | retry-dead` and the outbox
pruning and backlog gauges of maintenance (issue 11, operations)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
from click.testing import CliRunner, Result
from prometheus_client import REGISTRY

from gateway import maintenance
from gateway.admin.webhooks import parse_since
from gateway.cli import main

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef01234567").decode()
ENDPOINT = "INSERT INTO webhook_endpoint (name, events, short_codes) VALUES ($1, $2, $3)"
ENQUEUE = ("INSERT INTO outbound_message (source, destination, body) SELECT '12345', '+1202555' || lpad(g::text, 4,"
           " '0'), 'hi' FROM generate_series(1, $1) g")


async def smsgw(dsn: str, config: Path | None, *args: str) -> Result:
    environment = {"COLUMNS": "250", "SMSGW_CONFIG": None, "SMSGW_DATABASE__URL": dsn}
    full = [args[0], args[1], *(["--config", str(config)] if config else []), *args[2:]]
    return await asyncio.to_thread(CliRunner().invoke, main, full, env=environment, catch_exceptions=False)


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[webhook.crm]\nurl = "https://user:pw@crm.example/hooks?token=x"\nevents = ["message.final"]\n'
        f'secret = "{SECRET}"\n'
        '[webhook.fresh]\nurl = "http://127.0.0.1:9/x"\nevents = ["mo.received"]\n'
        f'secret = "{SECRET}"\n'
    )
    return path


async def finals(pool: asyncpg.Pool, n: int) -> None:
    """n messages queued, then delivered in one statement: one message.final event each (triggers)."""
    await pool.execute(ENQUEUE, n)
    await pool.execute("UPDATE outbound_message SET status = 'delivered', done_at = now()")


async def test_list_shows_config_and_database_endpoints_with_counts(
    db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path
) -> None:
    await db_pool.execute(ENDPOINT, "crm", ["message.final"], [])
    await db_pool.execute(ENDPOINT, "old", ["message.final"], ["12345"])
    await finals(db_pool, 6)  # 6 deliveries each for crm and old
    await db_pool.execute(
        "UPDATE webhook_delivery SET status = 'delivered', delivered_at = now() - interval '10 minutes'"
        " WHERE endpoint = 'crm' AND id IN (SELECT id FROM webhook_delivery WHERE endpoint = 'crm' ORDER BY id"
        " LIMIT 2)"
    )
    await db_pool.execute(
        "UPDATE webhook_delivery SET status = 'delivered', delivered_at = now() - interval '2 hours'"
        " WHERE endpoint = 'crm' AND status = 'pending' AND id = (SELECT min(id) FROM webhook_delivery"
        " WHERE endpoint = 'crm' AND status = 'pending')"
    )
    await db_pool.execute(
        "UPDATE webhook_delivery SET status = 'dead', last_error = 'HTTP 500' WHERE endpoint = 'old'"
        " AND id IN (SELECT id FROM webhook_delivery WHERE endpoint = 'old' ORDER BY id LIMIT 4)"
    )
    await db_pool.execute("UPDATE webhook_delivery SET created_at = now() - interval '300 seconds'"
                          " WHERE endpoint = 'old' AND status = 'pending'")
    result = await smsgw(db_dsn, config_file(tmp_path), "webhooks", "list", "--json")
    assert result.exit_code == 0, result.stderr
    endpoints = {e["name"]: e for e in json.loads(result.stdout)["endpoints"]}
    assert set(endpoints) == {"crm", "fresh", "old"}
    crm, fresh, old = endpoints["crm"], endpoints["fresh"], endpoints["old"]
    assert (crm["pending"], crm["dead"], crm["delivered_last_hour"]) == (3, 0, 2)
    assert crm["in_config"] and crm["in_database"]
    assert crm["url"] == "https://crm.example/hooks"  # no credentials, no query
    assert (old["pending"], old["dead"], old["delivered_last_hour"]) == (2, 4, 0)
    assert not old["in_config"] and old["short_codes"] == ["12345"] and old["last_dead_error"] == "HTTP 500"
    assert 299 <= old["oldest_pending_age_s"] < 400
    assert fresh["in_config"] and not fresh["in_database"] and fresh["pending"] == 0
    assert fresh["oldest_pending_age_s"] is None
    table = await smsgw(db_dsn, config_file(tmp_path), "webhooks", "list")
    assert table.exit_code == 0 and "crm" in table.stdout and "not in the database yet" in table.stdout


async def test_replay_adds_deliveries_of_the_same_events(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    await db_pool.execute(ENDPOINT, "crm", ["message.final", "consent.changed"], [])
    await db_pool.execute(ENDPOINT, "other", ["message.final"], [])
    await finals(db_pool, 3)
    await db_pool.execute("SELECT smsgw_opt_out('12345', '+12025550100')")
    await db_pool.execute("UPDATE webhook_event SET created_at = now() - interval '3 days'"
                          " WHERE id = (SELECT min(id) FROM webhook_event)")
    await db_pool.execute("UPDATE webhook_delivery SET status = 'delivered', delivered_at = now()")
    before = await db_pool.fetchval("SELECT count(*) FROM webhook_delivery")
    assert before == 3 + 3 + 1

    result = await smsgw(db_dsn, None, "webhooks", "replay", "--since", "1d", "--endpoint", "crm", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["deliveries"], data["events"]) == (3, 3)  # 2 finals of the last day + the consent change
    rows = await db_pool.fetch("SELECT event_id, endpoint, ordering_key FROM webhook_delivery WHERE status = 'pending'")
    assert {r["endpoint"] for r in rows} == {"crm"}
    # The same events (same webhook-id), delivered again.
    old = await db_pool.fetch("SELECT event_id FROM webhook_delivery WHERE status = 'delivered' AND endpoint = 'crm'")
    assert {r["event_id"] for r in rows} < {r["event_id"] for r in old}

    result = await smsgw(db_dsn, None, "webhooks", "replay", "--since", "2020-01-01T00:00:00Z",
                         "--type", "message.final")
    assert result.exit_code == 0, result.stderr
    assert "6 new deliveries of 3 events of type message.final" in result.stdout  # to crm and other

    unknown = await smsgw(db_dsn, None, "webhooks", "replay", "--since", "1h", "--endpoint", "nope")
    assert unknown.exit_code == 1 and "no webhook endpoint 'nope'" in unknown.stderr
    bad = await smsgw(db_dsn, None, "webhooks", "replay", "--since", "yesterday")
    assert bad.exit_code == 2 and "--since" in bad.stderr
    assert await db_pool.fetchval("SELECT count(*) FROM webhook_delivery") == before + 3 + 6


async def test_retry_dead_makes_dead_deliveries_due_again(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    await db_pool.execute(ENDPOINT, "crm", ["message.final"], [])
    await db_pool.execute(ENDPOINT, "other", ["message.final"], [])
    await finals(db_pool, 4)
    await db_pool.execute(
        "UPDATE webhook_delivery SET status = 'dead', attempts = 17, last_error = 'timeout',"
        " next_attempt_at = now() + interval '1 day' WHERE event_id IN (SELECT id FROM webhook_event ORDER BY id"
        " LIMIT 3)"
    )
    result = await smsgw(db_dsn, None, "webhooks", "retry-dead", "--endpoint", "crm")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "3 dead deliveries of endpoint crm set pending again"
    row = await db_pool.fetchrow(
        "SELECT count(*) AS n, max(attempts) AS attempts, bool_and(next_attempt_at <= now()) AS due"
        " FROM webhook_delivery WHERE endpoint = 'crm' AND status = 'pending'"
    )
    assert (row["n"], row["attempts"], row["due"]) == (4, 0, True)
    assert await db_pool.fetchval("SELECT count(*) FROM webhook_delivery WHERE status = 'dead'") == 3
    result = await smsgw(db_dsn, None, "webhooks", "retry-dead", "--json")
    assert json.loads(result.stdout) == {"endpoint": None, "retried": 3}
    assert await db_pool.fetchval("SELECT count(*) FROM webhook_delivery WHERE status = 'dead'") == 0


def _gauge(name: str, endpoint: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"endpoint": endpoint})


async def test_maintenance_prunes_in_bounded_batches_and_sets_gauges(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute(ENDPOINT, "crm", ["message.final"], [])
    await finals(db_pool, 10)
    events = [r["id"] for r in await db_pool.fetch("SELECT id FROM webhook_event ORDER BY id")]
    # Events 0-6 delivered 10 days ago, 7 dead (kept), 8 delivered just now, 9 pending for 2 minutes.
    await db_pool.execute("UPDATE webhook_event SET created_at = now() - interval '10 days'")
    await db_pool.execute(
        "UPDATE webhook_delivery SET status = 'delivered', delivered_at = now() - interval '10 days'"
        " WHERE event_id = ANY($1)", events[:7])
    await db_pool.execute("UPDATE webhook_delivery SET status = 'dead' WHERE event_id = $1", events[7])
    await db_pool.execute("UPDATE webhook_delivery SET status = 'delivered', delivered_at = now()"
                          " WHERE event_id = $1", events[8])
    await db_pool.execute("UPDATE webhook_delivery SET created_at = now() - interval '120 seconds'"
                          " WHERE event_id = $1", events[9])
    # An event no endpoint wanted (no delivery at all), old: pruned; a recent one: kept.
    await db_pool.execute("INSERT INTO webhook_event (type, ordering_key, data, created_at) VALUES"
                          " ('mo.received', 'mo:x', '{}', now() - interval '10 days'), ('mo.received', 'mo:y', '{}',"
                          " now())")

    # Bounded: 2 statements of 3 rows at most per table in this pass.
    assert await maintenance.prune_webhooks(db_pool, 7, batch=3, max_batches=2) == (6, 6)
    assert await maintenance.prune_webhooks(db_pool, 7, batch=3, max_batches=2) == (1, 2)
    assert await maintenance.prune_webhooks(db_pool, 7, batch=3, max_batches=2) == (0, 0)
    left = await db_pool.fetch("SELECT event_id, status FROM webhook_delivery ORDER BY event_id")
    assert [(r["event_id"], r["status"]) for r in left] == [
        (events[7], "dead"), (events[8], "delivered"), (events[9], "pending")]
    assert await db_pool.fetchval("SELECT count(*) FROM webhook_event") == 4  # 3 with deliveries + mo:y

    seen = await maintenance.observe_webhooks(db_pool)
    assert seen["crm"][0] == 1 and 119 <= seen["crm"][1] < 200
    assert _gauge("smsgw_webhook_backlog", "crm") == 1
    assert 119 <= (_gauge("smsgw_webhook_oldest_pending_age_seconds", "crm") or 0) < 200

    # Through a full maintenance pass (as the daemon runs it): the backlog goes to 0 when delivered.
    await db_pool.execute("UPDATE webhook_delivery SET status = 'delivered', delivered_at = now()"
                          " WHERE status = 'pending'")
    settings: Any = SimpleNamespace(retention_days=7)
    from gateway.settings import load_settings

    touched = await maintenance.run_once(db_pool, load_settings(None).dispatcher, settings)
    assert touched["webhook_deliveries_pruned"] == 0 and touched["webhook_events_pruned"] == 0
    assert _gauge("smsgw_webhook_backlog", "crm") == 0
    assert _gauge("smsgw_webhook_oldest_pending_age_seconds", "crm") == 0


def test_parse_since() -> None:
    import datetime as dt

    now = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)
    assert parse_since("90m", now) == now - dt.timedelta(minutes=90)
    assert parse_since("2d", now) == now - dt.timedelta(days=2)
    assert parse_since("2026-01-01T10:00:00") == dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
    assert parse_since("2026-01-01T10:00:00+02:00").utcoffset() == dt.timedelta(hours=2)
