"""End to end: rows in a real Postgres reach the simulator over real SMPP on loopback, and receipts
come back into the table. Faults are injected by the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from datetime import time as dt_time
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from gw import ENQUEUE, counts, enqueue, running_gateway, settings_for, wait_final, wait_status

from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.smpp.pdu import Status


@pytest_asyncio.fixture(loop_scope="session")
async def sim() -> AsyncIterator[SmscSimulator]:
    simulator = SmscSimulator(SimulatorConfig(receipt_delay=0.02))
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def test_2000_rows_all_delivered_with_receipts(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    await enqueue(db_pool, 2000)
    async with running_gateway(settings_for(db_dsn, sim, binds=2, window=50)):
        c = await wait_status(db_pool, "delivered", 2000, timeout=60)
    assert c == {"delivered": 2000}
    row = await db_pool.fetchrow(
        "SELECT count(*) FILTER (WHERE receipt_stat = 'DELIVRD') AS receipts,"
        " count(DISTINCT smsc_message_id) AS ids, max(attempts) AS max_attempts,"
        " count(*) FILTER (WHERE done_at IS NOT NULL AND submitted_at IS NOT NULL) AS timed"
        " FROM outbound_message"
    )
    assert dict(row) == {"receipts": 2000, "ids": 2000, "max_attempts": 1, "timed": 2000}
    assert sim.stats.submits_ok == 2000
    assert await db_pool.fetchval("SELECT count(*) FROM pending_receipt") == 0


async def test_receipt_before_submit_resp_is_matched(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    async with SmscSimulator(SimulatorConfig(receipt_before_response=True, receipt_delay=0)) as sim:
        await enqueue(db_pool, 300)
        async with running_gateway(settings_for(db_dsn, sim)):
            c = await wait_status(db_pool, "delivered", 300, timeout=30)
    assert c == {"delivered": 300}
    assert await db_pool.fetchval("SELECT count(*) FROM pending_receipt") == 0


async def test_hex_submit_ids_match_decimal_receipts(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    config = SimulatorConfig(message_id_format="hex", receipt_id_format="decimal", receipt_delay=0.01)
    async with SmscSimulator(config) as sim:
        await enqueue(db_pool, 100)
        settings = settings_for(db_dsn, sim, submit_id_format="hex", receipt_id_format="decimal")
        async with running_gateway(settings):
            c = await wait_status(db_pool, "delivered", 100, timeout=30)
    assert c == {"delivered": 100}
    # The raw id is kept as the SMSC wrote it in submit_sm_resp.
    sample = await db_pool.fetchval("SELECT smsc_message_id FROM outbound_message LIMIT 1")
    assert int(sample, 16) >= 0x2A000000


async def test_failed_receipts_end_undeliverable_or_expired_with_reason(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    config = SimulatorConfig(outcomes={"DELIVRD": 1, "UNDELIV": 1, "EXPIRED": 1, "REJECTD": 1}, receipt_delay=0.01)
    async with SmscSimulator(config) as sim:
        await enqueue(db_pool, 400)
        async with running_gateway(settings_for(db_dsn, sim)):
            c = await wait_final(db_pool, timeout=30)
    assert set(c) == {"delivered", "undeliverable", "expired"} and sum(c.values()) == 400
    rows = await db_pool.fetch(
        "SELECT status, receipt_stat, reason FROM outbound_message WHERE status <> 'delivered' LIMIT 50"
    )
    for r in rows:
        assert r["receipt_stat"] in ("UNDELIV", "EXPIRED", "REJECTD")
        assert r["reason"].startswith(f"receipt {r['receipt_stat']}")


async def test_bad_rows_end_rejected_with_reasons(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    await db_pool.execute(
        ENQUEUE,
        ["12345", "12345", "12345", "12345", "", "12345"],
        ["not a number", "+12025550100", "+12025550101", "+12025550102", "+12025550103", "+12025550104"],
        ["hi", "", "x" * 1000, "late", "no sender", "fine"],  # 1,000 GSM-7 chars: 7 parts, over the 6 allowed
        [None, None, None, datetime(2000, 1, 1, tzinfo=UTC), None, None],
        [0] * 6,
    )
    async with running_gateway(settings_for(db_dsn, sim)):
        await wait_final(db_pool, timeout=20)
    rows = await db_pool.fetch("SELECT body, status, reason FROM outbound_message ORDER BY id")
    got = [(r["status"], r["reason"]) for r in rows]
    assert got == [
        ("rejected", "invalid_destination"),
        ("rejected", "empty_body"),
        ("rejected", "too_long"),
        ("expired", "expired_before_submit"),
        ("rejected", "invalid_source"),
        ("delivered", "delivered"),
    ]


async def test_lease_expiry_requeues_rows_of_a_dead_worker(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    await enqueue(db_pool, 50)
    # A worker that claimed these rows and died: its lease has run out.
    await db_pool.execute(
        "UPDATE outbound_message SET status = 'claimed', claimed_by = 'dead-worker:1', attempts = 1,"
        " claimed_until = now() - interval '1 second'"
    )
    async with running_gateway(settings_for(db_dsn, sim)):
        c = await wait_status(db_pool, "delivered", 50, timeout=30)
    assert c == {"delivered": 50}
    assert await db_pool.fetchval("SELECT min(attempts) FROM outbound_message") == 2
    # A late write of the dead worker is fenced off by its claim token.
    done = await db_pool.execute(
        "UPDATE outbound_message SET status = 'failed' WHERE claimed_by = 'dead-worker:1' AND status = 'claimed'"
    )
    assert done == "UPDATE 0"


async def test_dropped_bind_mid_window_loses_nothing(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    await enqueue(db_pool, 1500)
    sim.disconnect_after(400)
    async with running_gateway(settings_for(db_dsn, sim, window=50)):
        await sim.wait_for(lambda: sim.stats.connections >= 2, timeout=20)
        sim.disconnect_after(500)
        c = await wait_status(db_pool, "delivered", 1500, timeout=60)
    assert c == {"delivered": 1500}
    # Rows in flight on the dropped links were sent again, and the extra attempt is on record.
    assert await db_pool.fetchval("SELECT count(*) FROM outbound_message WHERE attempts >= 2") >= 1
    # Submits the SMSC accepted but whose response died with the link were sent twice (at-least-once);
    # receipts of the first copies match no row and stay parked (until they age out), nothing else does.
    duplicates = sim.stats.submits_ok - 1500
    assert 0 <= await db_pool.fetchval("SELECT count(*) FROM pending_receipt") <= duplicates


async def test_throttling_slows_the_bind_and_everything_is_delivered(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    async with SmscSimulator(SimulatorConfig(tps_limit=300, receipt_delay=0.01)) as sim:
        await enqueue(db_pool, 600)
        async with running_gateway(settings_for(db_dsn, sim, window=50)):
            c = await wait_status(db_pool, "delivered", 600, timeout=60)
        assert sim.stats.throttled > 0
    assert c == {"delivered": 600}
    # Throttling is not a failure: no retry was charged to the rows.
    assert await db_pool.fetchval("SELECT max(attempts) FROM outbound_message") == 1


async def test_error_statuses_permanent_fail_transient_retry(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    sim.fail_next(3, Status.RINVDSTADR)
    await enqueue(db_pool, 3)
    async with running_gateway(settings_for(db_dsn, sim, window=1)):
        await wait_final(db_pool, timeout=20)
        rows = await db_pool.fetch("SELECT status, error_code, reason FROM outbound_message")
        assert {(r["status"], r["error_code"], r["reason"]) for r in rows} == {("failed", 0x0B, "ESME_RINVDSTADR")}
        sim.fail_next(2, Status.RSYSERR)
        await enqueue(db_pool, 2, start=10)
        c = await wait_status(db_pool, "delivered", 2, timeout=20)
    assert c == {"failed": 3, "delivered": 2}
    assert await db_pool.fetchval("SELECT max(attempts) FROM outbound_message WHERE status = 'delivered'") == 2


async def test_transient_errors_fail_after_max_attempts(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    sim.fail_next(100, Status.RSYSERR)
    await enqueue(db_pool, 1)
    settings = settings_for(db_dsn, sim)
    settings = settings.model_copy(update={"dispatcher": settings.dispatcher.model_copy(update={"max_attempts": 3})})
    async with running_gateway(settings):
        await wait_final(db_pool, timeout=20)
    row = await db_pool.fetchrow("SELECT status, attempts, error_code, reason FROM outbound_message")
    assert dict(row) == {"status": "failed", "attempts": 3, "error_code": 8, "reason": "ESME_RSYSERR after 3 attempts"}


async def test_response_timeout_is_retried_and_recorded(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    sim.drop_next(2)
    await enqueue(db_pool, 5)
    async with running_gateway(settings_for(db_dsn, sim, response_timeout=0.5)):
        c = await wait_status(db_pool, "delivered", 5, timeout=30)
    assert c == {"delivered": 5}
    assert await db_pool.fetchval("SELECT count(*) FROM outbound_message WHERE attempts = 2") == 2


async def test_malformed_pdu_from_smsc_drops_link_and_rebinds(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    async with running_gateway(settings_for(db_dsn, sim)):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        sim.send_malformed()
        await sim.wait_for(lambda: sim.stats.connections >= 2 and sim.bound() >= 1, timeout=10)
        await enqueue(db_pool, 20)
        c = await wait_status(db_pool, "delivered", 20, timeout=20)
    assert c == {"delivered": 20}


async def test_wrong_password_keeps_retrying_without_sending(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    await enqueue(db_pool, 5)
    async with running_gateway(settings_for(db_dsn, sim, password="wrong")):
        await sim.wait_for(lambda: sim.stats.bind_failures >= 2, timeout=10)
        c = await counts(db_pool)
    assert sim.stats.bind_failures >= 2
    assert c == {"queued": 5}


async def test_mo_is_stored_then_acked(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    async with running_gateway(settings_for(db_dsn, sim)):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        delivery = await sim.inject_mo("15551230000", "12345", "JOIN news ✓")
        assert await sim.wait_for(lambda: delivery.acked, timeout=10)
    row = await db_pool.fetchrow("SELECT smsc, source, destination, body, data_coding FROM inbound_message")
    assert dict(row) == {
        "smsc": "sim",
        "source": "+15551230000",  # TON 1 (international) without '+': stored in E.164 form
        "destination": "12345",
        "body": "JOIN news ✓",
        "data_coding": 8,
    }


async def test_graceful_stop_leaves_no_row_claimed(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    await enqueue(db_pool, 3000)
    async with running_gateway(settings_for(db_dsn, sim, tps=500, window=20)):
        await wait_status(db_pool, "delivered", 100, timeout=20)
    c = await counts(db_pool)
    assert "claimed" not in c
    assert sum(c.values()) == 3000 and c.get("queued", 0) > 0
    # Rows given back were never sent: their attempt is not counted.
    assert await db_pool.fetchval("SELECT max(attempts) FROM outbound_message WHERE status = 'queued'") == 0


@pytest.mark.parametrize("n", [1])
async def test_enqueue_notify_wakes_idle_gateway_quickly(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator, n: int
) -> None:
    settings = settings_for(db_dsn, sim)
    settings = settings.model_copy(
        update={"dispatcher": settings.dispatcher.model_copy(update={"poll_interval": 30.0})}
    )
    async with running_gateway(settings):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        await asyncio.sleep(0.3)
        await enqueue(db_pool, n)
        # The fallback poll is 30 s: only the NOTIFY can make this quick.
        ok = await sim.wait_for(lambda: sim.stats.submits_ok >= n, timeout=5)
    assert ok


@pytest.mark.parametrize(
    ("method", "body", "parts"),
    [
        ("udh8", "A" * 300, 2),
        ("udh16", "€uro " * 150, 6),  # extension characters: 2 septets each
        ("sar", "Ünïcödé ✓ " * 20, 3),  # UCS-2: 67 units per part
        ("payload", "B" * 500, 1),  # one submit_sm, the SMSC splits
    ],
)
async def test_long_messages_are_split_tracked_per_part_and_delivered(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator, method: str, body: str, parts: int
) -> None:
    await enqueue(db_pool, 3, body=body)
    async with running_gateway(settings_for(db_dsn, sim, long_messages=method)):
        c = await wait_status(db_pool, "delivered", 3, timeout=30)
    assert c == {"delivered": 3}
    assert sim.stats.submits_ok == 3 * parts
    # The simulator joins what it received: the text arrives whole, in order.
    by_dest: dict[str, list[tuple[int, str]]] = {}
    for rec in sim.submits:
        by_dest.setdefault(rec.destination_addr, []).append((rec.received_at, rec.text))
    assert all("".join(t for _, t in sorted(v)) == body for v in by_dest.values())
    if parts > 1:
        rows = await db_pool.fetch("SELECT message_id, status, receipt_stat FROM message_part ORDER BY 1")
        assert len(rows) == 3 * parts and {(r["status"], r["receipt_stat"]) for r in rows} == {("delivered", "DELIVRD")}
        assert await db_pool.fetchval("SELECT min(parts) FROM outbound_message") == parts
    else:
        assert await db_pool.fetchval("SELECT count(*) FROM message_part") == 0


async def test_multipart_receipts_before_responses_and_failures_aggregate(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    config = SimulatorConfig(receipt_before_response=True, receipt_delay=0, outcomes={"DELIVRD": 1, "UNDELIV": 1})
    async with SmscSimulator(config) as sim:
        await enqueue(db_pool, 40, body="long " * 100)  # 500 chars: 4 parts
        async with running_gateway(settings_for(db_dsn, sim)):
            c = await wait_final(db_pool, timeout=30)
        outcomes = {}
        for rec in sim.submits:
            outcomes.setdefault(rec.destination_addr, []).append(rec.outcome)
    assert sum(c.values()) == 40 and set(c) <= {"delivered", "undeliverable"}
    rows = await db_pool.fetch("SELECT destination, status, receipt_stat FROM outbound_message")
    for r in rows:
        dest = r["destination"].lstrip("+")
        expected = "delivered" if all(o == "DELIVRD" for o in outcomes[dest]) else "undeliverable"
        assert r["status"] == expected, (r, outcomes[dest])
    assert await db_pool.fetchval("SELECT count(*) FROM pending_receipt") == 0


@pytest.mark.parametrize(
    ("status", "overrides", "end_state"),
    [
        (Status.RINVDSTADR, {}, ("failed", 1)),  # permanent: fail at once
        (Status.RSYSERR, {}, ("delivered", 2)),  # transient: retried with back-off
        (Status.RTHROTTLED, {}, ("delivered", 1)),  # throttle: slowed down, sent again, not an attempt
        (Status.RINVBNDSTS, {}, ("delivered", 2)),  # session: re-bind, send again
        (0x401, {}, ("failed", 1)),  # vendor code: permanent unless the carrier's table says otherwise
        (0x401, {"0x401": "transient"}, ("delivered", 2)),
    ],
)
async def test_each_error_class_leads_to_its_documented_end_state(
    db_pool: asyncpg.Pool,
    db_dsn: str,
    sim: SmscSimulator,
    status: int,
    overrides: dict[str, str],
    end_state: tuple[str, int],
) -> None:
    sim.fail_next(1, status)
    await enqueue(db_pool, 1)
    async with running_gateway(settings_for(db_dsn, sim, error_classes=overrides)):
        await wait_final(db_pool, timeout=20)
    row = await db_pool.fetchrow("SELECT status, attempts, error_code FROM outbound_message")
    assert (row["status"], row["attempts"]) == end_state
    if end_state[0] == "failed":
        assert row["error_code"] == status


async def _run_until_one_delivered(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator, start: dt_time, end: dt_time
) -> None:
    """Run the gateway with quiet hours start-end until one row is delivered, and half a second more."""
    settings = settings_for(db_dsn, sim)
    settings = settings.model_copy(
        update={
            "dispatcher": settings.dispatcher.model_copy(update={"quiet_hours_start": start, "quiet_hours_end": end})
        }
    )
    async with running_gateway(settings):
        await wait_status(db_pool, "delivered", 1, timeout=20)
        await asyncio.sleep(0.5)


async def test_quiet_hours_defer_marketing_but_not_transactional(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    local = datetime.now(ZoneInfo("America/New_York"))
    start = (local + timedelta(hours=2)).time().replace(second=0, microsecond=0)
    end = (local + timedelta(hours=3)).time().replace(second=0, microsecond=0)
    await db_pool.execute("INSERT INTO subscriber_list (short_code, name, program) VALUES ('12345', 'news', 'N')")
    await db_pool.execute(
        "INSERT INTO subscription (short_code, list_name, msisdn, status)"
        " VALUES ('12345', 'news', '12025550142', 'active')"
    )
    await db_pool.execute(
        "INSERT INTO outbound_message (source, destination, body, message_class, list_name) VALUES"
        " ('12345', '+12025550142', 'Sale!', 'marketing', 'news'),"
        " ('12345', '+12025550142', 'Your code is 1234', 'transactional', NULL)"
    )
    await _run_until_one_delivered(db_pool, db_dsn, sim, start, end)
    rows = {
        r["message_class"]: r
        for r in await db_pool.fetch(
            "SELECT message_class, status, reason, attempts, send_after - now() AS wait FROM outbound_message"
        )
    }
    assert rows["transactional"]["status"] == "delivered"
    marketing = rows["marketing"]
    assert (marketing["status"], marketing["reason"], marketing["attempts"]) == ("queued", "quiet_hours", 0)
    assert timedelta(hours=1, minutes=55) <= marketing["wait"] <= timedelta(hours=2, minutes=1)


async def test_quiet_hours_follow_the_subscribers_own_time_zone(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    """Two New York numbers; one subscriber lives in Los Angeles (attribute time_zone). With a window that is open
    in Los Angeles and closed in New York, only the Los Angeles subscriber's promotion goes."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    la = datetime.now(ZoneInfo("America/Los_Angeles"))
    start = (la - timedelta(hours=1)).time().replace(second=0, microsecond=0)
    end = (la + timedelta(hours=1)).time().replace(second=0, microsecond=0)  # New York is 3 hours later: closed
    await db_pool.execute("INSERT INTO subscriber_list (short_code, name, program) VALUES ('12345', 'news', 'N')")
    await db_pool.execute(
        "INSERT INTO subscription (short_code, list_name, msisdn, status)"
        " VALUES ('12345', 'news', '12025550142', 'active'), ('12345', 'news', '12025550143', 'active')"
    )
    await db_pool.execute(
        "SELECT smsgw_set_attributes('12345', '12025550142', '{\"time_zone\": \"America/Los_Angeles\"}'::jsonb)"
    )
    await db_pool.execute(
        "INSERT INTO outbound_message (source, destination, body, message_class, list_name) VALUES"
        " ('12345', '+12025550142', 'Sale! (LA)', 'marketing', 'news'),"
        " ('12345', '+12025550143', 'Sale! (NY)', 'marketing', 'news')"
    )
    await _run_until_one_delivered(db_pool, db_dsn, sim, start, end)
    rows = {r["destination"]: (r["status"], r["reason"]) for r in await db_pool.fetch(
        "SELECT destination, status, reason FROM outbound_message")}
    assert rows == {"+12025550142": ("delivered", "delivered"), "+12025550143": ("queued", "quiet_hours")}


async def test_transmitter_receiver_pair_for_smscs_without_transceiver(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    await enqueue(db_pool, 200)
    settings = settings_for(db_dsn, sim, bind_mode="pair", binds=2, receivers=1, interface_version=0x34)
    async with running_gateway(settings):
        c = await wait_status(db_pool, "delivered", 200, timeout=30)
        assert sim.bound() == 3 and sim.bound(receivers_only=True) == 1
        delivery = await sim.inject_mo("15551230001", "12345", "hello")
        assert await sim.wait_for(lambda: delivery.acked, timeout=10)
    assert c == {"delivered": 200}
    binds = {r["bind_name"] for r in await db_pool.fetch("SELECT DISTINCT bind_name FROM outbound_message")}
    assert binds <= {"sim-tx0", "sim-tx1"} and binds


async def test_tls_to_the_smsc(db_pool: asyncpg.Pool, db_dsn: str, self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    async with SmscSimulator(SimulatorConfig(tls_cert=cert, tls_key=key, receipt_delay=0.01)) as tls_sim:
        await enqueue(db_pool, 20)
        async with running_gateway(settings_for(db_dsn, tls_sim, tls=True, tls_ca_file=cert)):
            c = await wait_status(db_pool, "delivered", 20, timeout=20)
    assert c == {"delivered": 20}
