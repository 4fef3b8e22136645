"""Inbound MOs and keywords end to end: MOs injected over SMPP by the simulator, a real Postgres, replies
observed as submit_sm at the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from gw import running_gateway, wait_final
from pg import listening

from gateway.db.embedded import EmbeddedPostgres, free_port
from gateway.db.migrate import migrate
from gateway.settings import InboundSettings, Settings, load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator
from keywords.config import ShortCodeKeywords
from keywords.matcher import KeywordMatcher
from keywords.processor import MoProcessor

SC = "12345"
PHRASES_SC = "55555"  # same programme, honours "stop please"-style phrases

KEYWORDS: dict[str, Any] = {
    "program": "Acme Alerts",
    "contact": "help@acme.example",
    "frequency": "Up to 4 msgs/week",
    "lists": [
        {"name": "news", "program": "Acme News", "join_keywords": ["NEWS"], "frequency": "2 msgs/week"},
        {"name": "deals", "program": "Acme Deals", "frequency": "1 msg/week"},
    ],
    "default_list": "news",
    "extra_opt_out": ["PARAR", "CANCELAR", "BAJA"],
}


def keyword_settings(dsn: str, sim: SmscSimulator, **inbound: Any) -> Settings:
    return load_settings(
        None,
        database={"url": dsn},
        smsc={
            "sim": {
                "port": sim.port,
                "system_id": "smsgw",
                "password": "secret",
                "window": 20,
                "reconnect_min": 0.05,
                "reconnect_max": 0.5,
            }
        },
        # Quiet hours off: these tests send marketing at whatever time of day they run.
        dispatcher={
            "flush_interval": 0.01, "poll_interval": 0.2, "maintenance_interval": 0.2, "retry_base": 0.05,
            "quiet_hours": False,
        },
        inbound={"poll_interval": 0.2, **inbound},
        keywords={SC: KEYWORDS, PHRASES_SC: {**KEYWORDS, "honour_opt_out_phrases": True}},
        metrics={"enabled": False},
    )


@pytest_asyncio.fixture(loop_scope="session")
async def sim() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01, deliver_timeout=1.0)) as simulator:
        yield simulator


def replies_to(sim: SmscSimulator, number: str) -> list[str]:
    return [r.text for r in sim.submits if r.destination_addr == number and r.status == 0]


async def mo(sim: SmscSimulator, number: str, text: str | bytes, *, short_code: str = SC, **kw: Any) -> None:
    delivery = await sim.inject_mo(number, short_code, text, **kw)
    assert await sim.wait_for(lambda: delivery.acked, timeout=10)


async def wait_rows(
    pool: asyncpg.Pool | asyncpg.Connection, query: str, *args: object, n: int = 1, timeout: float = 10
) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count = await pool.fetchval(query, *args)
    while count < n and loop.time() < deadline:
        await asyncio.sleep(0.05)
        count = await pool.fetchval(query, *args)
    return count


@pytest.mark.parametrize(
    ("number", "text"),
    [
        ("15550000001", "stop"),
        ("15550000002", " Stop. "),
        ("15550000003", "STOP ALL"),
        ("15550000004", "ＳＴＯＰ"),
        ("15550000005", "Unsubscribe"),
        ("15550000006", "baja"),
    ],
)
async def test_stop_variants_opt_out_with_evidence_and_one_confirmation(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator, number: str, text: str
) -> None:
    async with running_gateway(keyword_settings(db_dsn, sim)):  # its start creates the configured lists
        await db_pool.execute("SELECT smsgw_opt_in($1, $2, 'news', 'api', NULL, NULL, NULL, 'signup form')", SC, number)
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        await mo(sim, number, text)
        assert await sim.wait_for(lambda: len(replies_to(sim, number)) == 1, timeout=10)
        # The same STOP again: stored, but no second confirmation.
        await mo(sim, number, "STOP")
        await wait_rows(db_pool, "SELECT count(*) FROM inbound_message WHERE msisdn = $1", number, n=2)
        await db_pool.execute(
            "INSERT INTO outbound_message (source, destination, body, message_class, list_name)"
            " VALUES ($1, $2, 'Big sale!', 'marketing', 'news'),"
            " ($1, $2, 'Your order shipped', 'transactional', NULL)",
            SC,
            "+" + number,
        )
        await wait_final(db_pool, timeout=10)
        await asyncio.sleep(0.3)
    assert replies_to(sim, number) == [
        "You are unsubscribed from Acme Alerts. No more messages will be sent. Reply HELP for help."
    ]
    events = await db_pool.fetch(
        "SELECT action, channel, keyword, message_text, inbound_message_id FROM consent_event"
        " WHERE msisdn = $1 ORDER BY id",
        number,
    )
    assert [(e["action"], e["channel"]) for e in events] == [("opt_in", "api"), ("opt_out", "sms"), ("opt_out", "sms")]
    assert events[1]["message_text"] == text and events[1]["inbound_message_id"] is not None
    assert await db_pool.fetchval("SELECT status FROM subscription WHERE msisdn = $1", number) == "opted_out"
    refused = await db_pool.fetch(
        "SELECT status, reason FROM outbound_message WHERE destination = $1 AND NOT is_opt_out_confirmation",
        "+" + number,
    )
    assert [(r["status"], r["reason"]) for r in refused] == [("rejected", "opted_out")] * 2


async def test_start_resubscribes_and_marketing_flows_again(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    number = "15550000010"
    async with running_gateway(keyword_settings(db_dsn, sim)):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        await mo(sim, number, "STOP")
        await wait_rows(db_pool, "SELECT count(*) FROM opt_out WHERE msisdn = $1", number)
        await mo(sim, number, "START")
        assert (
            await wait_rows(
                db_pool, "SELECT count(*) FROM subscription WHERE msisdn = $1 AND status = 'active'", number
            )
            == 1
        )
        assert await db_pool.fetchval("SELECT count(*) FROM opt_out WHERE msisdn = $1", number) == 0
        await db_pool.execute(
            "INSERT INTO outbound_message (source, destination, body, message_class, list_name)"
            " VALUES ($1, $2, 'Weekly news', 'marketing', 'news')",
            SC,
            "+" + number,
        )
        assert await sim.wait_for(lambda: "Weekly news" in replies_to(sim, number), timeout=10)
    assert replies_to(sim, number)[1].startswith("Acme Alerts: you are subscribed to Acme News.")


async def test_stop_please_follows_the_phrases_switch(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    async with running_gateway(keyword_settings(db_dsn, sim)):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        await mo(sim, "15550000020", "STOP PLEASE", short_code=SC)
        await mo(sim, "15550000021", "STOP PLEASE", short_code=PHRASES_SC)
        await wait_rows(db_pool, "SELECT count(*) FROM inbound_message WHERE handled_at IS NOT NULL", n=2)
    rows = dict(await db_pool.fetch("SELECT short_code, intent FROM inbound_message"))
    assert rows == {SC: "other", PHRASES_SC: "opt_out"}
    assert await db_pool.fetchval("SELECT array_agg(short_code) FROM opt_out") == [PHRASES_SC]


async def test_help_to_non_subscriber_join_list_and_unknown_keyword(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    async with running_gateway(keyword_settings(db_dsn, sim)):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        async with db_pool.acquire() as listener, listening(listener, "smsgw_inbound") as notes:
            await mo(sim, "15550000030", "help")
            await mo(sim, "15550000031", "Join Deals")
            await mo(sim, "15550000032", "what time do you open?")
            await asyncio.wait_for(notes.get(), 10)
            await wait_rows(db_pool, "SELECT count(*) FROM inbound_message WHERE handled_at IS NOT NULL", n=3)
            assert await sim.wait_for(
                lambda: replies_to(sim, "15550000030") and replies_to(sim, "15550000031"), timeout=10
            )
        await asyncio.sleep(0.3)
    assert replies_to(sim, "15550000030") == [
        "Acme Alerts: help at help@acme.example. Msg&data rates may apply. Up to 4 msgs/week. Reply STOP to cancel."
    ]
    assert await db_pool.fetchval("SELECT action FROM consent_event WHERE msisdn = '15550000030'") == "help"
    assert (
        await db_pool.fetchval("SELECT list_name FROM subscription WHERE msisdn = '15550000031' AND status = 'active'")
        == "deals"
    )
    assert replies_to(sim, "15550000032") == []  # no default reply unless configured
    # The simulator sends TON 1 (international): the sender is stored as '+' and digits.
    row = await db_pool.fetchrow("SELECT intent, body FROM inbound_message WHERE source = '+15550000032'")
    assert dict(row) == {"intent": "other", "body": "what time do you open?"}
    reply_link = await db_pool.fetchval(
        "SELECT count(*) FROM outbound_message o JOIN inbound_message i ON i.id = o.inbound_message_id"
        " WHERE i.msisdn = '15550000030'"
    )
    assert reply_link == 1


def _udh_part(ref: int, total: int, seq: int, text: str) -> bytes:
    return bytes([5, 0, 3, ref, total, seq]) + text.encode("ascii")


async def test_concatenated_mo_is_reassembled_and_a_missing_part_times_out(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    async with running_gateway(keyword_settings(db_dsn, sim, reassembly_timeout=0.5)):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        for seq, chunk in ((2, "second part, "), (1, "First part, "), (3, "third.")):
            await mo(sim, "15550000040", _udh_part(7, 3, seq, chunk), esm_class=0x40)
        for seq, chunk in ((1, "only the "), (3, "end")):
            await mo(sim, "15550000041", _udh_part(9, 3, seq, chunk), esm_class=0x40)
        await wait_rows(db_pool, "SELECT count(*) FROM inbound_message", n=2)
    rows = {r["msisdn"]: r for r in await db_pool.fetch("SELECT msisdn, body, parts, incomplete FROM inbound_message")}
    assert (rows["15550000040"]["body"], rows["15550000040"]["parts"], rows["15550000040"]["incomplete"]) == (
        "First part, second part, third.",
        3,
        False,
    )
    assert (rows["15550000041"]["body"], rows["15550000041"]["incomplete"]) == ("only the end", True)
    assert await db_pool.fetchval("SELECT count(*) FROM mo_part") == 0


async def test_redelivered_mo_is_handled_once(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    async with running_gateway(keyword_settings(db_dsn, sim)):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        await mo(sim, "15550000050", "HELP")
        await mo(sim, "15550000050", "HELP")  # the SMSC sends it again (our first ack was lost)
        await wait_rows(db_pool, "SELECT count(*) FROM inbound_message", n=2)
        await asyncio.sleep(0.5)
    intents = sorted(r["intent"] for r in await db_pool.fetch("SELECT intent FROM inbound_message"))
    assert intents == ["duplicate", "help"]
    assert len(replies_to(sim, "15550000050")) == 1



async def test_mo_is_acked_only_after_commit(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", port=free_port(), shared_buffers="32MB")
    await asyncio.to_thread(pg.start)
    try:
        conn = await asyncpg.connect(pg.dsn())
        await migrate(conn)
        await conn.close()
        async with SmscSimulator(SimulatorConfig(deliver_timeout=1.0, redelivery_delay=0.2)) as sim:
            async with running_gateway(keyword_settings(pg.dsn(), sim)):
                await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
                await asyncio.to_thread(pg.stop)  # the database is gone: nothing can be committed
                delivery = await sim.inject_mo("15550000060", SC, "STOP")
                await asyncio.sleep(1.5)
                assert not delivery.acked and delivery.attempts >= 1
                await asyncio.to_thread(pg.start)
                assert await sim.wait_for(lambda: delivery.acked, timeout=30)
                conn = await asyncpg.connect(pg.dsn())
                try:
                    await wait_rows(conn, "SELECT count(*) FROM opt_out")
                    handled = await conn.fetchval("SELECT count(*) FROM inbound_message WHERE intent = 'opt_out'")
                finally:
                    await conn.close()
        assert handled == 1
    finally:
        await asyncio.to_thread(pg.stop)


async def test_broadcast_skips_opted_out_in_one_statement_and_is_idempotent(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute(
        "INSERT INTO subscriber_list (short_code, name, program) VALUES ($1, 'news', 'Acme News')", SC
    )
    await db_pool.execute(
        "INSERT INTO subscription (short_code, list_name, msisdn, status, opted_in_at)"
        " SELECT $1, 'news', (15550000000 + g)::text, 'active', now() FROM generate_series(1, 100000) g",
        SC,
    )
    await db_pool.execute(
        "INSERT INTO opt_out (short_code, msisdn)"
        " SELECT $1, (15550000000 + g)::text FROM generate_series(1, 100000) g WHERE g % 100 = 0",
        SC,
    )
    first = await db_pool.fetchval("SELECT smsgw_broadcast($1, 'news', 'Spring sale', 'spring-2026')", SC)
    again = await db_pool.fetchval("SELECT smsgw_broadcast($1, 'news', 'Spring sale', 'spring-2026')", SC)
    assert (first, again) == (99_000, 0)
    row = await db_pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT destination) AS d, min(message_class) AS cls,"
        " min(list_name) AS list FROM outbound_message WHERE campaign_key = 'spring-2026'"
    )
    assert dict(row) == {"n": 99_000, "d": 99_000, "cls": "marketing", "list": "news"}


async def test_consent_ledger_is_append_only(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute("SELECT smsgw_opt_out($1, '+15550000070', 'api', NULL, NULL, NULL, 'crm')", SC)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db_pool.execute("DELETE FROM consent_event")
    with pytest.raises(asyncpg.PostgresError, match=r"invalid E\.164"):
        await db_pool.execute("SELECT smsgw_opt_out($1, 'not-a-number')", SC)


async def test_marketing_needs_an_active_subscription(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    await db_pool.execute(
        "INSERT INTO outbound_message (source, destination, body, message_class, list_name)"
        " VALUES ($1, '+15550000080', 'Deal of the day', 'marketing', 'deals')",
        SC,
    )
    async with running_gateway(keyword_settings(db_dsn, sim)):
        await wait_final(db_pool, timeout=10)
    row = await db_pool.fetchrow("SELECT status, reason FROM outbound_message")
    assert dict(row) == {"status": "rejected", "reason": "not_subscribed"}


async def test_stop_then_start_from_one_number_in_one_batch_keep_their_order(db_pool: asyncpg.Pool) -> None:
    cfg = ShortCodeKeywords(**KEYWORDS)
    processor = MoProcessor(db_pool, KeywordMatcher({SC: cfg}, cfg), InboundSettings(), default_region="US")
    await processor.sync_lists({SC: cfg})
    # Two single-part MOs from the same number, committed before the processor runs: both are kept.
    for text in (b"STOP", b"START"):
        await db_pool.execute(
            "INSERT INTO mo_part (smsc, source, destination, data_coding, esm_class, payload)"
            " VALUES ('sim', '15550000090', $1, 0, 0, $2)",
            SC,
            text,
        )
    assert await processor.process_batch() == 2
    assert await db_pool.fetchval("SELECT count(*) FROM opt_out") == 0
    assert await db_pool.fetchval("SELECT status FROM subscription WHERE msisdn = '15550000090'") == "active"
    actions = [r["action"] for r in await db_pool.fetch("SELECT action FROM consent_event ORDER BY id")]
    assert actions == ["opt_out", "opt_in"]
