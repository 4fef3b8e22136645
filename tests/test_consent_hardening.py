"""Consent that cannot be lost, and MO handling that one bad MO cannot stop (issue 7, items 2, 3 and 8).

The processor-level tests put parts straight into `mo_part` and run `MoProcessor.process_batch` (fast, exact
control of what lands in one batch); the end-to-end ones inject MOs over SMPP with the simulator and watch the
replies arrive as submit_sm. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from gw import running_gateway, wait_final
from pg import listening

from gateway.message import ClaimedMessage, consent_refusal
from gateway.settings import InboundSettings, Settings, load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator
from keywords.address import mo_sender
from keywords.config import ShortCodeKeywords
from keywords.matcher import KeywordMatcher
from keywords.processor import MoProcessor

SC = "12345"
KEYWORDS: dict[str, Any] = {
    "program": "Acme Alerts",
    "contact": "help@acme.example",
    "frequency": "Up to 4 msgs/week",
    "lists": [{"name": "news", "program": "Acme News", "join_keywords": ["NEWS"], "frequency": "2 msgs/week"}],
    "default_list": "news",
}
STOP_CONFIRMATION = "You are unsubscribed from Acme Alerts. No more messages will be sent. Reply HELP for help."
HELP_REPLY = (
    "Acme Alerts: help at help@acme.example. Msg&data rates may apply. Up to 4 msgs/week. Reply STOP to cancel."
)


# -- MO addresses (pure) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "ton", "stored"),
    [
        ("447700900123", 1, "+447700900123"),  # international without '+': the usual way SMSCs write it
        ("+447700900123", 1, "+447700900123"),
        ("00447700900123", 1, "+447700900123"),  # an international prefix written in (Kannel drops it too)
        (" 447700900123 ", 1, "+447700900123"),
        ("2025550123", 2, "2025550123"),  # national: read in the default region
        ("2025550123", 0, "2025550123"),  # unknown: as written
        ("+447700900123", 0, "+447700900123"),
        ("12345", 3, "12345"),  # network-specific (a short code): not a number
        ("ACME", 5, "ACME"),  # alphanumeric
        ("ACME", 1, "ACME"),  # TON 1 claimed, but not digits: left for the processor to refuse
        ("44 7700 900123", 1, "44 7700 900123"),
        ("", 1, ""),
    ],
)
def test_mo_sender_reads_the_type_of_number(addr: str, ton: int, stored: str) -> None:
    assert mo_sender(addr, ton) == stored


# -- the send-time rule (pure) -------------------------------------------------------------------------------


def _claimed(**kw: Any) -> ClaimedMessage:
    row: dict[str, Any] = {
        "id": 1, "source": SC, "destination": "+15550000001", "body": "x", "priority": 0,
        "message_class": "transactional", "expires_at": None, "attempts": 1, "created_at": datetime.now(UTC),
    }
    return ClaimedMessage(**(row | kw))


@pytest.mark.parametrize(
    ("row", "opted_out", "subscribed", "exempt", "refusal"),
    [
        ({}, False, False, False, None),
        ({}, True, False, False, "opted_out"),
        ({"is_opt_out_confirmation": True}, True, False, False, "opted_out"),  # the producer's flag counts for nothing
        ({"inbound_message_id": 7}, True, False, False, "opted_out"),  # a link the lookup did not confirm
        ({"inbound_message_id": 7}, True, False, True, None),  # a reply to this number's HELP / STOP
        ({"message_class": "marketing"}, False, False, False, "not_subscribed"),
        ({"message_class": "marketing"}, False, True, False, None),
        ({"message_class": "marketing", "inbound_message_id": 7}, True, False, True, "not_subscribed"),
    ],
)
def test_consent_refusal(
    row: dict[str, Any], opted_out: bool, subscribed: bool, exempt: bool, refusal: str | None
) -> None:
    result = consent_refusal(_claimed(**row), opted_out=opted_out, subscribed=subscribed, exempt=exempt)
    assert (result.reason if result else None) == refusal


# -- the processor, fed directly -----------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def processor(db_pool: asyncpg.Pool) -> MoProcessor:
    cfg = ShortCodeKeywords(**KEYWORDS)
    proc = MoProcessor(db_pool, KeywordMatcher({SC: cfg}, cfg), InboundSettings(), default_region="US")
    await proc.sync_lists({SC: cfg})
    return proc


async def put_mo(
    pool: asyncpg.Pool, source: str, text: str | bytes, *, data_coding: int = 0, short_code: str = SC
) -> None:
    """One single-part MO as the result writer stores it (acknowledged to the SMSC from here on)."""
    payload = text.encode("ascii") if isinstance(text, str) else text
    await pool.execute(
        "INSERT INTO mo_part (smsc, source, destination, data_coding, esm_class, payload)"
        " VALUES ('sim', $1, $2, $3, 0, $4)",
        source,
        short_code,
        data_coding,
        payload,
    )


async def feed(pool: asyncpg.Pool, processor: MoProcessor, number: str, texts: list[str], *, one_batch: bool) -> None:
    """Send `texts` from `number`: all committed before the processor runs, or each handled before the next."""
    for text in texts:
        await put_mo(pool, number, text)
        if not one_batch:
            assert await processor.process_batch() == 1
    if one_batch:
        assert await processor.process_batch() == len(texts)
    assert await pool.fetchval("SELECT count(*) FROM mo_part") == 0


async def actions(pool: asyncpg.Pool, number: str) -> list[str]:
    rows = await pool.fetch("SELECT action FROM consent_event WHERE msisdn = $1 ORDER BY id", number)
    return [r["action"] for r in rows]


async def reply_count(pool: asyncpg.Pool, number: str) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM outbound_message WHERE destination = $1 AND inbound_message_id IS NOT NULL", "+" + number
    )


async def opted_out(pool: asyncpg.Pool, number: str, short_code: str = SC) -> bool:
    return await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM opt_out WHERE short_code = $1 AND msisdn = $2)", short_code, number
    )


@pytest.mark.parametrize("one_batch", [False, True], ids=["one-by-one", "one-batch"])
@pytest.mark.parametrize(
    ("texts", "ends_out", "expected_actions"),
    [
        (["STOP", "START", "STOP"], True, ["opt_out", "opt_in", "opt_out"]),
        (["START", "STOP", "START"], False, ["opt_in", "opt_out", "opt_in"]),
        (["STOP", "START", "STOP", "START", "STOP"], True, ["opt_out", "opt_in", "opt_out", "opt_in", "opt_out"]),
    ],
)
async def test_alternating_consent_within_the_dedup_window_all_counts(
    db_pool: asyncpg.Pool,
    processor: MoProcessor,
    texts: list[str],
    ends_out: bool,
    expected_actions: list[str],
    one_batch: bool,
) -> None:
    number = "15550000101"
    await feed(db_pool, processor, number, texts, one_batch=one_batch)
    assert await opted_out(db_pool, number) is ends_out
    subscribed = await db_pool.fetchval("SELECT status FROM subscription WHERE msisdn = $1", number)
    assert subscribed == ("opted_out" if ends_out else "active")
    assert await actions(db_pool, number) == expected_actions
    intents = [r["intent"] for r in await db_pool.fetch("SELECT intent FROM inbound_message ORDER BY id")]
    assert "duplicate" not in intents
    assert await reply_count(db_pool, number) == len(texts)  # each change confirmed once


@pytest.mark.parametrize("one_batch", [False, True], ids=["one-by-one", "one-batch"])
@pytest.mark.parametrize(
    ("texts", "intents"),
    [
        (["STOP", "STOP"], ["opt_out", "duplicate"]),  # identical: a re-delivery, or a person sending it twice
        (["STOP", "stop"], ["opt_out", "opt_out"]),  # different text: a second message
        (["STOP", "STOP", "STOP"], ["opt_out", "duplicate", "duplicate"]),
    ],
)
async def test_repeated_stop_is_recorded_but_confirmed_once(
    db_pool: asyncpg.Pool, processor: MoProcessor, texts: list[str], intents: list[str], one_batch: bool
) -> None:
    number = "15550000102"
    await feed(db_pool, processor, number, texts, one_batch=one_batch)
    assert await opted_out(db_pool, number)
    assert await actions(db_pool, number) == ["opt_out"] * len(texts)  # every revocation is evidence
    assert [r["intent"] for r in await db_pool.fetch("SELECT intent FROM inbound_message ORDER BY id")] == intents
    assert await reply_count(db_pool, number) == 1


async def test_duplicate_stop_applies_again_but_duplicate_start_does_not(
    db_pool: asyncpg.Pool, processor: MoProcessor
) -> None:
    # A CRM opt-in between a STOP and its re-delivery: the STOP is applied again (a revocation always counts).
    out_again = "15550000103"
    await feed(db_pool, processor, out_again, ["STOP"], one_batch=True)
    await db_pool.execute("SELECT smsgw_opt_in($1, $2, 'news', 'api', NULL, NULL, NULL, 'web form')", SC, out_again)
    await feed(db_pool, processor, out_again, ["STOP"], one_batch=True)
    assert await opted_out(db_pool, out_again)
    assert await actions(db_pool, out_again) == ["opt_out", "opt_in", "opt_out"]
    # A CRM opt-out between a START and its re-delivery: the old START must not undo the newer opt-out.
    stays_out = "15550000104"
    await feed(db_pool, processor, stays_out, ["START"], one_batch=True)
    await db_pool.execute("SELECT smsgw_opt_out($1, $2, 'api', NULL, NULL, NULL, 'crm')", SC, stays_out)
    await feed(db_pool, processor, stays_out, ["START"], one_batch=True)
    assert await opted_out(db_pool, stays_out)
    assert await actions(db_pool, stays_out) == ["opt_in", "opt_out"]
    assert await reply_count(db_pool, out_again) == 1 and await reply_count(db_pool, stays_out) == 1


@pytest.mark.parametrize("sender", ["+491234", "+4912345678901234"])
async def test_sender_python_accepts_but_sql_refuses_is_an_invalid_sender(
    db_pool: asyncpg.Pool, processor: MoProcessor, sender: str
) -> None:
    # Before: smsgw_msisdn raised inside the batch, the batch rolled back and was retried forever; the STOP
    # behind it was never applied.
    await put_mo(db_pool, sender, "STOP")
    await put_mo(db_pool, "15550000105", "STOP")
    assert await processor.process_batch() == 2
    assert await opted_out(db_pool, "15550000105")
    row = await db_pool.fetchrow("SELECT intent, note, msisdn FROM inbound_message WHERE source = $1", sender)
    assert dict(row) == {"intent": "other", "note": "invalid_sender", "msisdn": None}
    assert await db_pool.fetchval("SELECT count(*) FROM mo_part") == 0


REFUSE_FOR_TEST = """
CREATE FUNCTION test_refuse_consent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.msisdn = '15550000199' THEN
        RAISE EXCEPTION 'consent refused for the test';
    END IF;
    RETURN NEW;
END $$;
CREATE FUNCTION test_refuse_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.body LIKE 'POISON%' THEN
        RAISE EXCEPTION 'message refused for the test';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_refuse BEFORE INSERT ON consent_event FOR EACH ROW EXECUTE FUNCTION test_refuse_consent();
CREATE TRIGGER test_refuse BEFORE INSERT ON inbound_message FOR EACH ROW EXECUTE FUNCTION test_refuse_message();
"""


async def test_a_refused_mo_is_quarantined_and_the_rest_of_its_batch_commits(
    db_pool: asyncpg.Pool, processor: MoProcessor
) -> None:
    # Two MOs that Postgres refuses (faults injected with a trigger, standing in for any value a table refuses)
    # between good ones, a STOP among them; Latin-1 text with a NUL (jsonb cannot hold \u0000).
    await db_pool.execute(REFUSE_FOR_TEST)
    await put_mo(db_pool, "15550000106", "HELLO")
    await put_mo(db_pool, "15550000199", "STOP")  # its consent row is refused: stored as 'other', quarantined
    await put_mo(db_pool, "15550000107", b"POISON\x00 text", data_coding=3)  # refused everywhere: quarantine only
    await put_mo(db_pool, "15550000108", b"HE\x00LP", data_coding=3)  # a NUL, nothing refused
    await put_mo(db_pool, "15550000109", "STOP")
    assert await processor.process_batch() == 5
    assert await db_pool.fetchval("SELECT count(*) FROM mo_part") == 0
    assert await opted_out(db_pool, "15550000109")
    assert await reply_count(db_pool, "15550000109") == 1
    stored = {r["source"]: r for r in await db_pool.fetch("SELECT source, intent, note, body FROM inbound_message")}
    assert set(stored) == {"15550000106", "15550000199", "15550000108", "15550000109"}
    assert stored["15550000199"]["intent"] == "other"
    assert stored["15550000199"]["note"].startswith("quarantined: RaiseError: consent refused for the test")
    assert stored["15550000108"]["body"] == "HE\ufffdLP"
    quarantined = await db_pool.fetch("SELECT kind, smsc, raw, fields, error FROM quarantine ORDER BY id")
    assert [(q["kind"], q["smsc"]) for q in quarantined] == [("mo", "sim"), ("mo", "sim")]
    assert [q["raw"] for q in quarantined] == [b"STOP", b"POISON\x00 text"]
    fields = json.loads(quarantined[1]["fields"])
    assert (fields["source"], fields["text"], fields["short_code"]) == ("15550000107", "POISON\ufffd text", SC)
    assert "message refused for the test" in quarantined[1]["error"]
    # Nothing is blocked: the next batch goes through as usual.
    await put_mo(db_pool, "15550000110", "STOP")
    assert await processor.process_batch() == 1
    assert await opted_out(db_pool, "15550000110")


async def test_connection_errors_keep_the_parts_for_a_later_batch(
    db_pool: asyncpg.Pool, processor: MoProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost link says nothing about the MOs: no quarantine, the parts stay and are handled next time."""
    await put_mo(db_pool, "15550000111", "STOP")

    async def link_lost(*_args: object) -> list[object]:
        raise ConnectionResetError("link lost for the test")

    monkeypatch.setattr(processor, "_plan", link_lost)
    with pytest.raises(ConnectionResetError):
        await processor.process_batch()
    monkeypatch.undo()
    assert await db_pool.fetchval("SELECT count(*) FROM mo_part") == 1
    assert await db_pool.fetchval("SELECT count(*) FROM quarantine") == 0
    assert await processor.process_batch() == 1
    assert await opted_out(db_pool, "15550000111")


async def test_short_code_forms_are_one_short_code_in_the_consent_functions(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute("INSERT INTO subscriber_list (short_code, name, program) VALUES ($1, 'news', 'News')", SC)
    async with db_pool.acquire() as listener, listening(listener, "smsgw_consent") as notes:
        await db_pool.execute("SELECT smsgw_opt_in(' +12345', '+15550000112', 'news')")
        await db_pool.execute("SELECT smsgw_opt_out('+12345', '15550000112')")
        payloads = [json.loads(await asyncio.wait_for(notes.get(), 5)) for _ in range(2)]
    assert payloads == [{"short_code": SC, "msisdn": "15550000112"}] * 2
    assert await opted_out(db_pool, "15550000112")
    rows = await db_pool.fetch("SELECT short_code FROM consent_event UNION SELECT short_code FROM subscription")
    assert [r["short_code"] for r in rows] == [SC]


# -- end to end over SMPP ------------------------------------------------------------------------------------


def gateway_settings(dsn: str, sim: SmscSimulator) -> Settings:
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
        dispatcher={
            "flush_interval": 0.01, "poll_interval": 0.2, "maintenance_interval": 0.2, "retry_base": 0.05,
            "quiet_hours": False, "default_region": "US",
        },
        inbound={"poll_interval": 0.2},
        keywords={SC: KEYWORDS},
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


async def wait_true(pool: asyncpg.Pool, query: str, *args: object, timeout: float = 10) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await pool.fetchval(query, *args):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_help_after_stop_is_answered(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    number = "15550000201"
    async with running_gateway(gateway_settings(db_dsn, sim)):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        await mo(sim, number, "STOP")
        assert await sim.wait_for(lambda: replies_to(sim, number) == [STOP_CONFIRMATION], timeout=10)
        await mo(sim, number, "HELP")
        assert await sim.wait_for(lambda: len(replies_to(sim, number)) == 2, timeout=10)
        # Anything else to the number is still refused.
        await db_pool.execute(
            "INSERT INTO outbound_message (source, destination, body) VALUES ($1, $2, 'Your order shipped')",
            SC, "+" + number,
        )
        await wait_final(db_pool, timeout=10)
    assert replies_to(sim, number) == [STOP_CONFIRMATION, HELP_REPLY]
    row = await db_pool.fetchrow("SELECT status, reason FROM outbound_message WHERE body = 'Your order shipped'")
    assert dict(row) == {"status": "rejected", "reason": "opted_out"}


async def test_producer_cannot_pass_enforcement_with_a_column(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    number, other = "15550000202", "15550000203"
    await db_pool.execute("SELECT smsgw_opt_out($1, $2, 'api', NULL, NULL, NULL, 'crm')", SC, number)
    # A HELP from another number and an unmatched MO from this one: links that prove nothing for this row.
    links = await db_pool.fetch(
        "INSERT INTO inbound_message (smsc, source, destination, body, data_coding, esm_class, raw_short_message,"
        " short_code, msisdn, intent) VALUES"
        " ('sim', $1, $3, 'HELP', 0, 0, '', $3, $1, 'help'), ('sim', $2, $3, 'hi', 0, 0, '', $3, $2, 'other')"
        " RETURNING id",
        other, number, SC,
    )
    await db_pool.execute(
        "INSERT INTO outbound_message (source, destination, body, is_opt_out_confirmation, inbound_message_id) VALUES"
        " ($1, $2, 'flag only', true, NULL), ($1, $2, 'help of another number', true, $3),"
        " ($1, $2, 'not a help', false, $4), ($1, $2, 'plain', false, NULL)",
        SC, "+" + number, links[0]["id"], links[1]["id"],
    )
    async with running_gateway(gateway_settings(db_dsn, sim)):
        await wait_final(db_pool, timeout=10)
    rows = await db_pool.fetch("SELECT status, reason FROM outbound_message")
    assert [(r["status"], r["reason"]) for r in rows] == [("rejected", "opted_out")] * 4
    assert replies_to(sim, number) == []


async def test_bad_mos_over_smpp_do_not_hold_up_a_stop(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    number = "15550000204"
    async with running_gateway(gateway_settings(db_dsn, sim)):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        await mo(sim, "491234", "STOP", source_ton=1)  # '+491234': Python reads a number, SQL does not
        await mo(sim, "15550000205", b"ST\x00OP", data_coding=3)  # a NUL in the text
        await mo(sim, number, "STOP")
        assert await sim.wait_for(lambda: replies_to(sim, number) == [STOP_CONFIRMATION], timeout=10)
        assert await wait_true(db_pool, "SELECT count(*) = 3 FROM inbound_message WHERE handled_at IS NOT NULL")
    assert await opted_out(db_pool, number)
    stored = await db_pool.fetch("SELECT source, msisdn, intent, note, body FROM inbound_message")
    rows = {r["source"]: r for r in stored}
    assert (rows["+491234"]["intent"], rows["+491234"]["note"], rows["+491234"]["msisdn"]) == (
        "other", "invalid_sender", None
    )
    assert (rows["+15550000205"]["intent"], rows["+15550000205"]["body"]) == ("other", "ST\ufffdOP")
    assert await db_pool.fetchval("SELECT count(*) FROM mo_part") == 0


async def test_international_sender_without_plus_and_national_sender(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    async with running_gateway(gateway_settings(db_dsn, sim)):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        await mo(sim, "447700900123", "STOP", source_ton=1, source_npi=1)  # UK mobile, default region US
        await mo(sim, "00447700900124", "STOP", source_ton=1, source_npi=1)
        await mo(sim, "2025550123", "STOP", source_ton=2, source_npi=1)  # national: the default region
        assert await wait_true(db_pool, "SELECT count(*) = 3 FROM opt_out")
        assert await sim.wait_for(lambda: len(replies_to(sim, "447700900123")) == 1, timeout=10)
    assert sorted(r["msisdn"] for r in await db_pool.fetch("SELECT msisdn FROM opt_out")) == [
        "12025550123", "447700900123", "447700900124"
    ]
    sources = {r["source"] for r in await db_pool.fetch("SELECT source FROM inbound_message")}
    assert sources == {"+447700900123", "+447700900124", "2025550123"}


async def test_plus_short_code_is_the_same_short_code(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    number = "15550000206"
    async with running_gateway(gateway_settings(db_dsn, sim)):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        await mo(sim, number, "STOP", short_code="+12345", dest_ton=1, dest_npi=1)
        # The configured programme answers (keywords of "12345"), from the short code in its one form.
        assert await sim.wait_for(lambda: replies_to(sim, number) == [STOP_CONFIRMATION], timeout=10)
        await db_pool.execute(
            "INSERT INTO outbound_message (source, destination, body) VALUES"
            " ('+12345', $1, 'with plus'), ('12345', $1, 'without'), (' 12345 ', $1, 'with blanks')",
            "+" + number,
        )
        await wait_final(db_pool, timeout=10)
    assert await db_pool.fetchval("SELECT array_agg(short_code) FROM opt_out") == [SC]
    assert [r.pdu.source_addr for r in sim.submits if r.destination_addr == number] == [SC]
    rows = await db_pool.fetch("SELECT status, reason FROM outbound_message WHERE inbound_message_id IS NULL")
    assert [(r["status"], r["reason"]) for r in rows] == [("rejected", "opted_out")] * 3


async def test_consent_changes_reach_the_gateways_watch(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    number, other = "15550000207", "15550000208"
    async with running_gateway(gateway_settings(db_dsn, sim)) as gw:
        watch = gw.consent_watch
        assert watch is not None
        assert all(d.consent_watch is watch for d in gw.dispatchers)
        loop = asyncio.get_running_loop()
        # The listener notes a gap when it connects (anything admitted before may have changed unseen).
        assert await sim.wait_for(lambda: watch.must_recheck("0", "0", -1e9), timeout=10)
        admitted_at = loop.time()
        assert not watch.must_recheck(SC, number, admitted_at)
        await db_pool.execute("SELECT smsgw_opt_out('+12345', $1, 'api')", "+" + number)
        assert await sim.wait_for(lambda: watch.must_recheck(SC, number, admitted_at), timeout=10)
        assert not watch.must_recheck(SC, other, admitted_at)
