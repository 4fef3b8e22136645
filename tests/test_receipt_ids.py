"""Receipts that need no configuration: ids matched as written, then hex<->decimal both ways; unknown final
stats; hostile err: and id values; receipts and parked receipts matched only within their time windows.

Real Postgres, real SMPP over loopback (the simulator); receipts with odd content are injected as deliver_sm
with the receipt esm_class through `SmscSimulator.inject_mo`.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from gw import enqueue, running_gateway, settings_for, wait_final, wait_status
from prometheus_client import REGISTRY

from gateway import maintenance, receipt_ids
from gateway.results import ResultWriter
from gateway.settings import DispatcherSettings, Settings
from gateway.simulator import Delivery, SimulatorConfig, SmscSimulator
from gateway.smpp.pdu import EsmClass, Tag
from gateway.smpp.receipt import receipt_keys

STATUS_OF_STAT = {"DELIVRD": "delivered", "UNDELIV": "undeliverable", "EXPIRED": "expired", "REJECTD": "undeliverable"}


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _with_dispatcher(settings: Settings, **values: object) -> Settings:
    return settings.model_copy(update={"dispatcher": settings.dispatcher.model_copy(update=values)})


async def _inject_receipt(sim: SmscSimulator, text: bytes, tlvs: dict[int, bytes] | None = None) -> Delivery:
    return await sim.inject_mo(
        "+12025550000", "12345", text, esm_class=EsmClass.DELIVERY_RECEIPT, tlvs=tlvs, system_id="smsgw"
    )


async def _acked(sim: SmscSimulator, delivery: Delivery) -> bool:
    return await sim.wait_for(lambda: delivery.acked, timeout=10)


@pytest.mark.parametrize(
    ("resp_format", "receipt_format", "mapping"),
    [("hex", "decimal", "hex_to_decimal"), ("decimal", "hex", "decimal_to_hex")],
)
async def test_no_id_settings_match_either_base_with_receipts_before_responses(
    db_pool: asyncpg.Pool, db_dsn: str, resp_format: str, receipt_format: str, mapping: str
) -> None:
    n = 1200
    receipt_ids.reset()
    unmatched_before = _metric("smsgw_receipts_unmatched_total", smsc="sim")
    config = SimulatorConfig(
        message_id_format=resp_format,
        receipt_id_format=receipt_format,
        receipt_delay=0.01,
        receipt_jitter=0.02,
        # ~20 % of receipts go out before their submit_sm_resp, which is held back a little: those are parked,
        # then consumed by the mark (or the sweeper).
        receipt_before_response_ratio=0.2,
        response_delay=0.03,
        outcomes={"DELIVRD": 0.7, "UNDELIV": 0.15, "EXPIRED": 0.1, "REJECTD": 0.05},
    )
    async with SmscSimulator(config) as sim:
        await enqueue(db_pool, n)
        settings = settings_for(db_dsn, sim, binds=2, window=50)
        assert (settings.smsc["sim"].submit_id_format, settings.smsc["sim"].receipt_id_format) == ("auto", "auto")
        async with running_gateway(settings):
            c = await wait_final(db_pool, timeout=60)
        outcome_of = {record.message_id: record.outcome for record in sim.submits if record.message_id}
    assert sum(c.values()) == n and not any(c.get(s) for s in ("queued", "claimed", "submitted")), c
    rows = await db_pool.fetch("SELECT smsc_message_id, status, receipt_stat FROM outbound_message")
    wrong = [
        (r["smsc_message_id"], r["status"], outcome_of.get(r["smsc_message_id"]))
        for r in rows
        if STATUS_OF_STAT[outcome_of[r["smsc_message_id"]]] != r["status"]
        or r["receipt_stat"] != outcome_of[r["smsc_message_id"]]
    ]
    assert wrong == []
    assert {r["status"] for r in rows} == {"delivered", "undeliverable", "expired"}
    assert await db_pool.fetchval("SELECT count(*) FROM pending_receipt") == 0
    # The race was exercised: some receipts were parked before their mark.
    assert _metric("smsgw_receipts_unmatched_total", smsc="sim") > unmatched_before
    assert _metric("smsgw_receipt_id_mapping", smsc="sim", mapping=mapping) == 1
    others = {"exact", "hex_to_decimal", "decimal_to_hex"} - {mapping}
    assert all(_metric("smsgw_receipt_id_mapping", smsc="sim", mapping=m) == 0 for m in others)
    assert receipt_ids.detected_mapping("sim") == mapping


async def _submitted(db_pool: asyncpg.Pool, n: int) -> list[str]:
    """Enqueue `n` rows and wait until they are submitted (the SMSC sends no receipts: registered_delivery 0);
    their SMSC message ids in row order."""
    await enqueue(db_pool, n)
    await wait_status(db_pool, "submitted", n, timeout=20)
    rows = await db_pool.fetch("SELECT smsc_message_id FROM outbound_message ORDER BY id")
    return [r["smsc_message_id"] for r in rows]


async def _wait_parked(db_pool: asyncpg.Pool, n: int, timeout: float = 10) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count = await db_pool.fetchval("SELECT count(*) FROM pending_receipt")
    while count < n and loop.time() < deadline:
        await asyncio.sleep(0.05)
        count = await db_pool.fetchval("SELECT count(*) FROM pending_receipt")
    return count


async def test_unknown_final_stats_end_undeliverable_with_the_stat_in_reason(
    db_pool: asyncpg.Pool, db_dsn: str
) -> None:
    async with SmscSimulator(SimulatorConfig()) as sim:
        async with running_gateway(settings_for(db_dsn, sim, registered_delivery=0)):
            ids = await _submitted(db_pool, 4)
            sent = [
                await _inject_receipt(sim, f"id:{ids[0]} sub:001 dlvrd:000 stat:FAILED err:042".encode()),
                await _inject_receipt(sim, f"id:{ids[1]} stat:ERROR".encode()),
                # a vendor message_state TLV and no stat: in the text
                await _inject_receipt(
                    sim, b"", {Tag.RECEIPTED_MESSAGE_ID: ids[2].encode() + b"\x00", Tag.MESSAGE_STATE: b"\x42"}
                ),
                # intermediate: acknowledged, the row waits for the final receipt
                await _inject_receipt(sim, f"id:{ids[3]} stat:ACCEPTD".encode()),
            ]
            assert all([await _acked(sim, d) for d in sent])
            await wait_status(db_pool, "undeliverable", 3, timeout=10)
        rows = await db_pool.fetch("SELECT status, receipt_stat, error_code, reason FROM outbound_message ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("undeliverable", "FAILED", 42, "receipt FAILED err:042"),
        ("undeliverable", "ERROR", None, "receipt ERROR"),
        ("undeliverable", "STATE_66", None, "receipt STATE_66"),
        ("submitted", None, None, None),
    ]
    assert _metric("smsgw_receipts_total", smsc="sim", stat="other") >= 3
    assert _metric("smsgw_receipts_total", smsc="sim", stat="FAILED") == 0


async def test_hostile_err_and_id_values_are_stored_and_acked(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    async with SmscSimulator(SimulatorConfig()) as sim:
        async with running_gateway(settings_for(db_dsn, sim, registered_delivery=0)):
            ids = await _submitted(db_pool, 2)
            sent = [
                # '²' is a digit to str.isdigit() and not to int(): this crashed the handler (never answered)
                await _inject_receipt(sim, f"id:{ids[0]} stat:UNDELIV err:²".encode("latin-1")),
                # err past 32 bits: no code, kept in reason
                await _inject_receipt(sim, f"id:{ids[1]} stat:UNDELIV err:99999999999".encode()),
                # a NUL inside the id: no row matches, parked with the NUL made visible
                await _inject_receipt(sim, b"id:70\x004 stat:DELIVRD err:000"),
            ]
            assert all([await _acked(sim, d) for d in sent])
            await wait_status(db_pool, "undeliverable", 2, timeout=10)
        rows = await db_pool.fetch("SELECT status, error_code, reason FROM outbound_message ORDER BY id")
        parked = await db_pool.fetch("SELECT msgid_key, message_id FROM pending_receipt")
    assert [tuple(r) for r in rows] == [
        ("undeliverable", None, "receipt UNDELIV err:²"),
        ("undeliverable", None, "receipt UNDELIV err:99999999999"),
    ]
    assert [tuple(r) for r in parked] == [("70\ufffd4", "70\ufffd4")]


async def test_old_parked_receipt_is_not_applied_to_a_new_message_reusing_the_id(
    db_pool: asyncpg.Pool, db_dsn: str
) -> None:
    config = SimulatorConfig(outcomes={"DELIVRD": 1.0}, receipt_delay=0.05)
    async with SmscSimulator(config) as sim:
        next_id = str(config.message_id_start)
        settings = _with_dispatcher(settings_for(db_dsn, sim), parked_receipt_match_seconds=60)
        async with running_gateway(settings):
            # A receipt for an id nothing carries yet (sent long ago, or for a message of another system)...
            assert await _acked(sim, await _inject_receipt(sim, f"id:{next_id} stat:UNDELIV err:001".encode()))
            assert await _wait_parked(db_pool, 1) == 1
            # ...parked for longer than the match window; then the SMSC gives the same id to a new message.
            await db_pool.execute("UPDATE pending_receipt SET received_at = now() - interval '2 minutes'")
            await enqueue(db_pool, 1)
            c = await wait_final(db_pool, timeout=20)
            await asyncio.sleep(0.5)  # a few sweeper passes
        row = await db_pool.fetchrow("SELECT smsc_message_id, status, reason FROM outbound_message")
    assert c == {"delivered": 1}
    assert tuple(row) == (next_id, "delivered", "delivered")  # its own receipt, not the old UNDELIV
    assert await db_pool.fetchval("SELECT count(*) FROM pending_receipt") == 1  # left to age out


async def test_recent_parked_receipt_is_applied_by_the_mark(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    """The control for the test above: within the window the DLR-before-resp race is resolved."""
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.05)) as sim:
        next_id = str(sim.config.message_id_start)
        async with running_gateway(settings_for(db_dsn, sim, registered_delivery=0)):
            assert await _acked(sim, await _inject_receipt(sim, f"id:{next_id} stat:UNDELIV err:001".encode()))
            await enqueue(db_pool, 1)
            c = await wait_final(db_pool, timeout=20)
    assert c == {"undeliverable": 1}
    assert await db_pool.fetchval("SELECT count(*) FROM pending_receipt") == 0


async def test_receipt_for_a_message_submitted_before_the_receipt_timeout_is_not_applied(
    db_pool: asyncpg.Pool, db_dsn: str
) -> None:
    async with SmscSimulator(SimulatorConfig()) as sim:
        # Maintenance once at start only, so the expiry of old submitted rows does not hide the matching rule.
        settings = _with_dispatcher(
            settings_for(db_dsn, sim, registered_delivery=0), receipt_timeout=3600, maintenance_interval=600
        )
        async with running_gateway(settings):
            old, recent = await _submitted(db_pool, 2)
            await db_pool.execute(
                "UPDATE outbound_message SET submitted_at = now() - interval '2 hours' WHERE smsc_message_id = $1", old
            )
            unmatched = _metric("smsgw_receipts_unmatched_total", smsc="sim")
            for mid in (old, recent):
                assert await _acked(sim, await _inject_receipt(sim, f"id:{mid} stat:DELIVRD err:000".encode()))
            await wait_status(db_pool, "delivered", 1, timeout=10)
        rows = await db_pool.fetch("SELECT smsc_message_id, status FROM outbound_message ORDER BY id")
    assert [tuple(r) for r in rows] == [(old, "submitted"), (recent, "delivered")]
    assert await db_pool.fetchval("SELECT message_id FROM pending_receipt") == old
    assert _metric("smsgw_receipts_unmatched_total", smsc="sim") == unmatched + 1


# -- the SQL rules, through the writer (no SMPP) ------------------------------------------------------


_CLAIMED = """
INSERT INTO outbound_message (source, destination, body, status, claimed_by, claimed_until)
SELECT '12345', '+12025550100', 'hi', 'claimed', 'tok', now() + interval '1 minute' FROM generate_series(1, $1)
RETURNING id
"""
_PARK = """
INSERT INTO pending_receipt (smsc, msgid_key, alt_key1, alt_key2, message_id, status, receipt_stat, reason)
VALUES ('s', $1, $2, $3, $4, $5, $6, 'receipt ' || $6)
"""


async def _park(pool: asyncpg.Pool, receipt_id: str, stat: str = "UNDELIV", status: str = "undeliverable") -> None:
    await pool.execute(_PARK, *receipt_keys(receipt_id, "auto"), receipt_id, status, stat)


async def test_exact_key_wins_over_alternates_for_receipts(db_pool: asyncpg.Pool) -> None:
    # Two live messages whose keys are the receipt "10" as written and its hex spelling "A": only the exact one.
    writer = ResultWriter(db_pool, flush_interval=0.005)
    writer.start()
    try:
        a, b = [r["id"] for r in await db_pool.fetch(_CLAIMED, 2)]
        writer.mark_submitted(a, "tok", "s", "10", "10", "b1")
        writer.mark_submitted(b, "tok", "s", "A", "A", "b1")
        assert await writer.drain(10)
        writer.receipt("s", receipt_keys("10", "auto"), "10", "delivered", "DELIVRD", None, "delivered", lambda: None)
        assert await writer.drain(10)
    finally:
        await writer.stop(5)
    rows = await db_pool.fetch("SELECT smsc_message_id, status FROM outbound_message ORDER BY id")
    assert [tuple(r) for r in rows] == [("10", "delivered"), ("A", "submitted")]


async def test_parked_receipt_goes_to_one_mark_exact_first(db_pool: asyncpg.Pool) -> None:
    writer = ResultWriter(db_pool, flush_interval=0.005)
    await _park(db_pool, "10")  # keys 10, A, 16
    a, b = [r["id"] for r in await db_pool.fetch(_CLAIMED, 2)]
    # Both marks in one statement: one names the receipt's alternate key, the other its exact key.
    writer.mark_submitted(a, "tok", "s", "A", "A", "b1")
    writer.mark_submitted(b, "tok", "s", "10", "10", "b1")
    writer.start()
    try:
        assert await writer.drain(10)
    finally:
        await writer.stop(5)
    rows = await db_pool.fetch("SELECT smsc_message_id, status FROM outbound_message ORDER BY id")
    assert [tuple(r) for r in rows] == [("A", "submitted"), ("10", "undeliverable")]
    assert await db_pool.fetchval("SELECT count(*) FROM pending_receipt") == 0


async def test_two_parked_copies_of_a_part_receipt_do_not_break_the_mark(db_pool: asyncpg.Pool) -> None:
    # Two copies of one receipt parked under one key used to hit MARK_PARTS_SUBMITTED's ON CONFLICT twice.
    writer = ResultWriter(db_pool, flush_interval=0.005)
    await _park(db_pool, "704643072", "DELIVRD", "delivered")
    await _park(db_pool, "704643072", "DELIVRD", "delivered")
    await _park(db_pool, "2A000001", "DELIVRD", "delivered")  # part 2's receipt, in hex: found by its decimal key
    (row_id,) = [r["id"] for r in await db_pool.fetch(_CLAIMED, 1)]
    writer.mark_parts_submitted(row_id, "tok", "s", 2, [(1, "704643072", "704643072"), (2, "704643073", "704643073")],
                                "b1")
    writer.start()
    try:
        assert await writer.drain(10)
    finally:
        await writer.stop(5)
    assert await db_pool.fetchval("SELECT status FROM outbound_message") == "delivered"
    assert await db_pool.fetchval("SELECT count(*) FROM pending_receipt") == 1  # the second copy
    settings = DispatcherSettings()
    assert await maintenance.sweep_parked(db_pool, settings) == 1  # taken, finds its row final
    assert await db_pool.fetchval("SELECT count(*) FROM pending_receipt") == 0
    assert await db_pool.fetchval("SELECT status FROM outbound_message") == "delivered"


async def test_parked_gauge_and_pile_up_warning(db_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    receipt_ids.reset()
    settings = DispatcherSettings()
    for i in range(12):
        await _park(db_pool, str(1000 + i))
    await db_pool.execute("UPDATE pending_receipt SET received_at = now() - interval '1 hour'")
    await _park(db_pool, "99")  # recent: parked, not stale
    with caplog.at_level(logging.WARNING, logger="gateway.receipt_ids"):
        await maintenance.count_parked(db_pool, settings)
        await _park(db_pool, "98")
        await db_pool.execute(
            "UPDATE pending_receipt SET received_at = now() - interval '1 hour' WHERE message_id = '98'"
        )
        await maintenance.count_parked(db_pool, settings)  # grew again, but within the minute
    assert _metric("smsgw_receipts_parked", smsc="s") == 14
    warnings = [r for r in caplog.records if "pile up" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].smsc == "s" and warnings[0].stale == 12  # type: ignore[attr-defined]
    await db_pool.execute("DELETE FROM pending_receipt")
    await maintenance.count_parked(db_pool, settings)
    assert _metric("smsgw_receipts_parked", smsc="s") == 0
