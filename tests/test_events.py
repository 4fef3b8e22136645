"""Event rules (issue 10, part 2; migration 0014): an event row becomes a message from a template, through the
database trigger; rules from the config synced at daemon start; the producer's function; and an event from
insert to delivered at the simulator."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from gw import campaign_settings, running_gateway, wait_final
from pydantic import ValidationError

from gateway import campaigns
from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.status import Reason
from keywords.config import ShortCodeKeywords

SC = "12345"
KEYWORDS: dict[str, Any] = {
    "program": "Acme Alerts",
    "contact": "help@acme.example",
    "frequency": "Up to 4 msgs/week",
    "events": [
        {"event": "order_shipped", "template": "ship"},
        {"event": "payment_due", "template": "pay", "priority": 5},
    ],
}
EMIT = "INSERT INTO smsgw_event (short_code, name, number, variables) VALUES ($1, $2, $3, $4) RETURNING *"


async def _templates(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO message_template (short_code, name, body) VALUES"
        " ($1, 'ship', 'Hi {first_name|there}, order {order_id} has shipped'),"
        " ($1, 'pay', 'Payment of {amount} due {due}')",
        SC,
    )
    await pool.execute("SELECT smsgw_set_attributes($1, '+12025550001', '{\"first_name\": \"Ann\"}')", SC)


async def _message(pool: asyncpg.Pool, message_id: int) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT source, destination, body, status, reason, detail, priority, message_class, idempotency_key,"
        " metadata, template FROM outbound_message WHERE id = $1", message_id)
    assert row is not None
    return row


# -- the config model --------------------------------------------------------------------------------------

def test_config_rules() -> None:
    cfg = ShortCodeKeywords.model_validate(KEYWORDS)
    assert [(r.event, r.template, r.message_class, r.priority, r.enabled) for r in cfg.events] == [
        ("order_shipped", "ship", "transactional", 0, True), ("payment_due", "pay", "transactional", 5, True)]
    assert ShortCodeKeywords.model_validate({**KEYWORDS, "events": []}).events == ()


@pytest.mark.parametrize("events", [
    [{"event": "order_shipped", "template": "a"}, {"event": "order_shipped", "template": "b"}],  # twice
    [{"event": "Order Shipped", "template": "a"}],  # not a lower-case id
    [{"event": "order_shipped", "template": ""}],
    [{"event": "order_shipped", "template": "a", "message_class": "promo"}],
    [{"event": "order_shipped", "template": "a", "priority": 40000}],
    [{"event": "order_shipped", "template": "a", "unknown": 1}],
])
def test_config_refuses(events: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationError):
        ShortCodeKeywords.model_validate({**KEYWORDS, "events": events})


# -- the database: event -> message ------------------------------------------------------------------------

async def test_event_becomes_a_rendered_message(db_pool: asyncpg.Pool) -> None:
    await _templates(db_pool)
    await db_pool.execute(
        "INSERT INTO event_rule (short_code, event, template, priority) VALUES ($1, 'order_shipped', 'ship', 3)", SC)
    event = await db_pool.fetchrow(EMIT, "+12345", "order_shipped", "+12025550001", '{"order_id": "A-17"}')
    assert event["short_code"] == SC and event["outcome"] == "enqueued" and event["message_id"] is not None
    msg = await _message(db_pool, event["message_id"])
    assert msg["body"] == "Hi Ann, order A-17 has shipped"
    assert (msg["source"], msg["destination"], msg["status"], msg["priority"], msg["message_class"]) == (
        SC, "+12025550001", "queued", 3, "transactional")
    assert msg["idempotency_key"] == f"event:{event['id']}"
    assert json.loads(msg["metadata"]) == {"event_id": event["id"], "event": "order_shipped"}
    # no subscriber attributes: the template's default
    other = await db_pool.fetchrow(EMIT, SC, "order_shipped", "+12025550002", '{"order_id": "B"}')
    assert (await _message(db_pool, other["message_id"]))["body"] == "Hi there, order B has shipped"


async def test_no_rule_disabled_rule_and_missing_variable(db_pool: asyncpg.Pool) -> None:
    await _templates(db_pool)
    await db_pool.execute(
        "INSERT INTO event_rule (short_code, event, template, enabled) VALUES"
        " ($1, 'order_shipped', 'ship', true), ($1, 'payment_due', 'pay', false), ($1, 'welcome', 'nope', true)",
        SC)
    before = await db_pool.fetchval("SELECT count(*) FROM outbound_message")
    for name, sc in (("order_cancelled", SC), ("payment_due", SC), ("order_shipped", "99999")):
        event = await db_pool.fetchrow(EMIT, sc, name, "+12025550001", "{}")
        assert (event["outcome"], event["message_id"]) == ("no_rule", None), name
    assert await db_pool.fetchval("SELECT count(*) FROM outbound_message") == before
    # a missing variable: the message row exists, rejected, linked from the event
    event = await db_pool.fetchrow(EMIT, SC, "order_shipped", "+12025550001", "{}")
    assert event["outcome"] == "rejected"
    msg = await _message(db_pool, event["message_id"])
    assert (msg["status"], msg["reason"]) == ("rejected", Reason.TEMPLATE_VARIABLE_MISSING.value)
    assert "{order_id}" in msg["detail"] and msg["body"] is None
    # a rule naming a template that does not exist
    event = await db_pool.fetchrow(EMIT, SC, "welcome", "+12025550001", "{}")
    assert event["outcome"] == "rejected"
    assert (await _message(db_pool, event["message_id"]))["reason"] == Reason.TEMPLATE_UNKNOWN.value


async def test_the_trigger_owns_outcome_and_is_idempotent_per_event(db_pool: asyncpg.Pool) -> None:
    await _templates(db_pool)
    await db_pool.execute("INSERT INTO event_rule (short_code, event, template) VALUES ($1, 'order_shipped', 'ship')",
                          SC)
    # an inserter cannot forge the result columns
    event = await db_pool.fetchrow(
        "INSERT INTO smsgw_event (short_code, name, number, variables, message_id, outcome)"
        " VALUES ($1, 'order_shipped', '+12025550001', '{\"order_id\": \"1\"}', 999, 'no_rule') RETURNING *", SC)
    assert event["outcome"] == "enqueued" and event["message_id"] != 999
    # the message of an event id exists already (a replayed id): no second message
    replay = await db_pool.fetchrow(
        "INSERT INTO smsgw_event (id, short_code, name, number, variables)"
        " VALUES ($1 + 1000000, $2, 'order_shipped', '+12025550001', '{\"order_id\": \"1\"}') RETURNING *",
        event["id"], SC)
    await db_pool.execute("DELETE FROM smsgw_event WHERE id = $1", replay["id"])
    again = await db_pool.fetchrow(
        "INSERT INTO smsgw_event (id, short_code, name, number, variables)"
        " VALUES ($1, $2, 'order_shipped', '+12025550001', '{\"order_id\": \"2\"}') RETURNING *", replay["id"], SC)
    assert (again["outcome"], again["message_id"]) == ("duplicate", replay["message_id"])
    assert await db_pool.fetchval(
        "SELECT count(*) FROM outbound_message WHERE idempotency_key = $1", f"event:{replay['id']}") == 1


async def test_producer_emits_through_the_function_only(db_pool: asyncpg.Pool) -> None:
    await _templates(db_pool)
    await db_pool.execute("INSERT INTO event_rule (short_code, event, template) VALUES ($1, 'order_shipped', 'ship')",
                          SC)
    async with db_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE smsgw_producer")
        row = await conn.fetchrow(
            "SELECT * FROM smsgw_emit_event($1, 'order_shipped', '+12025550001', '{\"order_id\": \"P1\"}')", SC)
        assert row["outcome"] == "enqueued"
        status = await conn.fetchrow(
            "SELECT status, template FROM outbound_message_status WHERE id = $1", row["message_id"])
        assert tuple(status) == ("queued", "ship")
        for statement in ("SELECT * FROM smsgw_event", "SELECT * FROM event_rule",
                          "INSERT INTO smsgw_event (short_code, name, number) VALUES ('12345', 'x', '+1')"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(statement)
    assert (await _message(db_pool, row["message_id"]))["body"] == "Hi Ann, order P1 has shipped"


async def test_sync_from_config(db_pool: asyncpg.Pool) -> None:
    await _templates(db_pool)
    await db_pool.execute(
        "INSERT INTO event_rule (short_code, event, template) VALUES ($1, 'by_sql', 'ship')", SC)
    rules = "SELECT event, template, priority, enabled, managed_by FROM event_rule ORDER BY event"
    await campaigns.sync_event_rules(db_pool, {f"+{SC}": ShortCodeKeywords.model_validate(KEYWORDS)})
    assert [tuple(r) for r in await db_pool.fetch(rules)] == [
        ("by_sql", "ship", 0, True, "sql"),
        ("order_shipped", "ship", 0, True, "config"),
        ("payment_due", "pay", 5, True, "config"),
    ]
    changed = {**KEYWORDS, "events": [{"event": "order_shipped", "template": "pay", "enabled": False}]}
    await campaigns.sync_event_rules(db_pool, {SC: ShortCodeKeywords.model_validate(changed)})
    assert [tuple(r) for r in await db_pool.fetch(rules)] == [
        ("by_sql", "ship", 0, True, "sql"),
        ("order_shipped", "pay", 0, False, "config"),
    ]
    await campaigns.sync_event_rules(db_pool, {})
    assert [tuple(r) for r in await db_pool.fetch(rules)] == [("by_sql", "ship", 0, True, "sql")]


# -- from insert to delivered ------------------------------------------------------------------------------

async def test_event_rule_from_insert_to_delivered(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    await _templates(db_pool)
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01, deliver_timeout=1.0)) as sim:
        settings = campaign_settings(db_dsn, sim, {SC: KEYWORDS}, maintenance_interval=0.5)
        async with running_gateway(settings):
            # the daemon synced the configured rules
            assert await db_pool.fetchval("SELECT count(*) FROM event_rule WHERE managed_by = 'config'") == 2
            shipped = await db_pool.fetchrow(EMIT, SC, "order_shipped", "+12025550001", '{"order_id": "A-17"}')
            due = await db_pool.fetchrow(EMIT, SC, "payment_due", "+12025550002",
                                         '{"amount": "$20", "due": "Mon"}')
            missing = await db_pool.fetchrow(EMIT, SC, "payment_due", "+12025550003", '{"amount": "$5"}')
            none = await db_pool.fetchrow(EMIT, SC, "order_lost", "+12025550004", "{}")
            final = await wait_final(db_pool, timeout=20)
        texts = {r.destination_addr: r.text for r in sim.submits if r.status == 0}
    assert final == {"delivered": 2, "rejected": 1}, final
    assert texts == {"12025550001": "Hi Ann, order A-17 has shipped", "12025550002": "Payment of $20 due Mon"}
    assert (shipped["outcome"], due["outcome"], missing["outcome"], none["outcome"]) == (
        "enqueued", "enqueued", "rejected", "no_rule")
    status = dict(await db_pool.fetch(
        "SELECT e.name || ':' || e.number, m.status || '/' || coalesce(m.reason, '')"
        " FROM smsgw_event e JOIN outbound_message m ON m.id = e.message_id"))
    assert status == {
        "order_shipped:+12025550001": "delivered/delivered",
        "payment_due:+12025550002": "delivered/delivered",
        "payment_due:+12025550003": "rejected/template_variable_missing",
    }
