"""The webhook outbox (migration 0008): events are written by triggers in the transaction of the change, fanned
out to the endpoints that want them, and nothing is written for a change that rolled back or when no endpoint
is configured."""

from __future__ import annotations

import asyncpg
import pytest

ENDPOINT = "INSERT INTO webhook_endpoint (name, events, short_codes) VALUES ($1, $2, $3)"
ENQUEUE = "INSERT INTO outbound_message (source, destination, body) VALUES ('12345', $1, 'hi') RETURNING id"


async def _events(pool: asyncpg.Pool) -> list[tuple[str, str, str]]:
    rows = await pool.fetch(
        "SELECT e.type, e.ordering_key, d.endpoint FROM webhook_delivery d JOIN webhook_event e ON e.id = d.event_id"
        " ORDER BY d.id"
    )
    return [(r["type"], r["ordering_key"], r["endpoint"]) for r in rows]


async def test_no_endpoint_no_events(db_pool: asyncpg.Pool) -> None:
    row_id = await db_pool.fetchval(ENQUEUE, "+12025550100")
    await db_pool.execute("UPDATE outbound_message SET status = 'delivered' WHERE id = $1", row_id)
    assert await db_pool.fetchval("SELECT count(*) FROM webhook_event") == 0


async def test_final_status_fans_out_to_endpoints_that_want_it(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute(ENDPOINT, "crm", ["message.final", "consent.changed"], [])
    await db_pool.execute(ENDPOINT, "other_sc", ["message.final"], ["99999"])
    await db_pool.execute(ENDPOINT, "submitted_only", ["message.submitted"], [])
    a = await db_pool.fetchval(ENQUEUE, "+12025550100")
    b = await db_pool.fetchval(ENQUEUE, "+12025550101")
    # One batched statement, as the result writer does: both rows, one INSERT of events.
    await db_pool.execute("UPDATE outbound_message SET status = 'submitted' WHERE id = ANY($1)", [a, b])
    await db_pool.execute("UPDATE outbound_message SET status = 'delivered' WHERE id = ANY($1)", [a, b])
    await db_pool.execute("UPDATE outbound_message SET updated_at = now() WHERE id = $1", a)  # no status change
    assert await _events(db_pool) == [
        ("message.submitted", f"msg:{a}", "submitted_only"),
        ("message.submitted", f"msg:{b}", "submitted_only"),
        ("message.final", f"msg:{a}", "crm"),
        ("message.final", f"msg:{b}", "crm"),
    ]
    data = await db_pool.fetchval("SELECT data FROM webhook_event WHERE type = 'message.final' ORDER BY id LIMIT 1")
    assert '"status": "delivered"' in data and f'"message_id": {a}' in data


async def test_rolled_back_change_writes_nothing(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute(ENDPOINT, "crm", ["message.final", "consent.changed"], [])
    row_id = await db_pool.fetchval(ENQUEUE, "+12025550100")
    async with db_pool.acquire() as conn:
        with pytest.raises(asyncpg.RaiseError):
            async with conn.transaction():
                await conn.execute("UPDATE outbound_message SET status = 'delivered' WHERE id = $1", row_id)
                await conn.execute("SELECT smsgw_opt_out('12345', '+12025550100')")
                await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'rolled back'; END $$")
    assert await db_pool.fetchval("SELECT count(*) FROM webhook_event") == 0
    assert await db_pool.fetchval("SELECT count(*) FROM webhook_delivery") == 0


async def test_consent_changes_are_events_in_ledger_order(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute(ENDPOINT, "crm", ["consent.changed"], ["12345"])
    await db_pool.execute("SELECT smsgw_opt_out('+12345', '+12025550100')")
    await db_pool.execute("SELECT smsgw_opt_in('12345', '+12025550100', NULL)")
    await db_pool.execute("SELECT smsgw_opt_out('54321', '+12025550100')")  # another short code: not wanted
    assert await _events(db_pool) == [
        ("consent.changed", "consent:12345:12025550100", "crm"),
        ("consent.changed", "consent:12345:12025550100", "crm"),
    ]
    actions = [r["a"] for r in await db_pool.fetch(
        "SELECT e.data->>'action' AS a FROM webhook_delivery d JOIN webhook_event e ON e.id = d.event_id"
        " ORDER BY d.id")]
    assert actions == ["opt_out", "opt_in"]


async def test_a_row_inserted_already_final_sends_its_final_event(db_pool: asyncpg.Pool) -> None:
    """A template the insert trigger cannot render ends the row rejected at INSERT: the CRM hears of it too."""
    await db_pool.execute(ENDPOINT, "crm", ["message.final"], [])
    row_id = await db_pool.fetchval(
        "INSERT INTO outbound_message (source, destination, template) VALUES ('12345', '+12025550100', 'nope')"
        " RETURNING id"
    )
    plain = await db_pool.fetchval(ENQUEUE, "+12025550101")  # inserted queued: no event
    assert await db_pool.fetchval("SELECT status FROM outbound_message WHERE id = $1", row_id) == "rejected"
    assert await _events(db_pool) == [("message.final", f"msg:{row_id}", "crm")]
    data = await db_pool.fetchval("SELECT data FROM webhook_event")
    assert '"reason": "template_unknown"' in data and f'"message_id": {plain}' not in data


async def test_a_producer_can_insert_a_row_that_ends_final_at_insert(db_pool: asyncpg.Pool) -> None:
    """The outbox is written as the trigger's owner: the producer role itself may not touch it."""
    await db_pool.execute(ENDPOINT, "crm", ["message.final"], [])
    async with db_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE smsgw_producer")
        await conn.execute(
            "INSERT INTO outbound_message (source, destination, template) VALUES ('12345', '+12025550100', 'nope')"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():  # a savepoint: the refusal must not roll the insert back
                await conn.execute("SELECT 1 FROM webhook_event")
    assert [t for t, _, _ in await _events(db_pool)] == ["message.final"]
