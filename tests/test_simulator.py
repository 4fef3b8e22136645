"""The SMSC simulator over real TCP on 127.0.0.1, driven by a tiny raw SMPP client (streams + the codec)."""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvloop
from raw_esme import RawClient, bound_client

from gateway.simulator import SimulatorConfig, SmscSimulator, serve
from gateway.smpp.codec import HEADER, PduDecodeError, encode
from gateway.smpp.pdu import (
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CommandId,
    DeliverSm,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Status,
    SubmitSm,
    SubmitSmResp,
    Tag,
    Unbind,
    UnbindResp,
    UnknownPdu,
)

_RECEIPT_RE = re.compile(
    r"id:(?P<id>\S+) sub:001 dlvrd:(?P<dlvrd>\d{3}) submit date:\d{10} done date:\d{10} "
    r"stat:(?P<stat>[A-Z]{7}) err:(?P<err>\d{3}) text:(?P<text>.*)"
)


# -- binds and session rules ------------------------------------------------------------------------------


async def test_bind_ok_and_bad_credentials() -> None:
    async with SmscSimulator(SimulatorConfig(accounts={"smsgw": "secret", "other": "pw"})) as sim:
        good = await RawClient.connect(sim)
        resp = await good.bind(BindTransceiver)
        assert isinstance(resp, BindTransceiverResp)
        assert (resp.command_status, resp.system_id) == (0, "SMSCSIM")
        assert resp.tlv_int(Tag.SC_INTERFACE_VERSION) == 0x34

        bad_password = await RawClient.connect(sim)
        resp = await bad_password.bind(BindTransmitter, password="wrong")
        assert isinstance(resp, BindTransmitterResp)
        assert resp.command_status == Status.RINVPASWD
        await bad_password.expect_closed()

        bad_system = await RawClient.connect(sim)
        resp = await bad_system.bind(BindReceiver, system_id="nobody")
        assert isinstance(resp, BindReceiverResp)
        assert resp.command_status == Status.RINVSYSID
        await bad_system.expect_closed()

        assert (sim.stats.binds, sim.stats.bind_failures) == (1, 2)
        assert sim.bound() == 1
        await good.close()


async def test_state_rules_enquire_link_and_unbind() -> None:
    async with SmscSimulator() as sim:
        client = await RawClient.connect(sim)
        # Before bind: submit_sm is refused, enquire_link is answered, unbind is refused.
        seq = client.submit()
        resp = await client.expect(SubmitSmResp)
        assert (resp.sequence_number, resp.command_status) == (seq, Status.RINVBNDSTS)
        client.send(EnquireLink(sequence_number=client.seq()))
        await client.expect(EnquireLinkResp)
        client.send(Unbind(sequence_number=client.seq()))
        assert (await client.expect(UnbindResp)).command_status == Status.RINVBNDSTS

        # A receiver bind may not submit, and may not bind twice.
        assert (await client.bind(BindReceiver)).command_status == 0
        client.submit()
        assert (await client.expect(SubmitSmResp)).command_status == Status.RINVBNDSTS
        assert (await client.bind(BindTransmitter)).command_status == Status.RALYBND

        client.send(Unbind(sequence_number=client.seq()))
        assert (await client.expect(UnbindResp)).command_status == 0
        await client.expect_closed()
        assert sim.stats.unbinds == 1
        assert sim.stats.enquire_links == 1


async def test_unknown_command_id_gets_generic_nack_and_session_survives() -> None:
    async with SmscSimulator() as sim:
        client = await bound_client(sim)
        seq = client.seq()
        client.send(UnknownPdu(sequence_number=seq, raw_command_id=0x00000222, body=b"\x01\x02"))
        nack = await client.expect(GenericNack)
        assert (nack.sequence_number, nack.command_status) == (seq, Status.RINVCMDID)
        client.send(EnquireLink(sequence_number=client.seq()))
        await client.expect(EnquireLinkResp)
        await client.close()


async def test_framing_error_gets_generic_nack_then_close() -> None:
    async with SmscSimulator() as sim:
        client = await bound_client(sim)
        client.writer.write(HEADER.pack(8, CommandId.ENQUIRE_LINK, 0, 77))
        nack = await client.expect(GenericNack)
        assert (nack.sequence_number, nack.command_status) == (77, Status.RINVCMDLEN)
        await client.expect_closed()


async def test_body_decode_error_gets_matching_resp() -> None:
    async with SmscSimulator() as sim:
        client = await bound_client(sim)
        good = encode(SubmitSm(sequence_number=9, short_message=b"abc"))
        # sm_length says 3 but the body ends after one octet of the message.
        broken = good[:-2]
        client.writer.write(HEADER.pack(len(broken), CommandId.SUBMIT_SM, 0, 9) + broken[16:])
        resp = await client.expect(SubmitSmResp)
        assert (resp.sequence_number, resp.command_status) == (9, Status.RINVMSGLEN)
        client.send(EnquireLink(sequence_number=client.seq()))
        await client.expect(EnquireLinkResp)
        await client.close()


async def test_ignore_enquire_link() -> None:
    async with SmscSimulator(SimulatorConfig(ignore_enquire_link=True)) as sim:
        client = await bound_client(sim)
        client.send(EnquireLink(sequence_number=client.seq()))
        with pytest.raises(TimeoutError):
            await client.read(timeout=0.2)
        sim.ignore_enquire_link = False
        client.send(EnquireLink(sequence_number=client.seq()))
        await client.expect(EnquireLinkResp)
        await client.close()


# -- submits and receipts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "pattern"), [("decimal", r"[0-9]+"), ("hex", r"[0-9A-F]+")])
async def test_submit_resp_ids(fmt: str, pattern: str) -> None:
    async with SmscSimulator(SimulatorConfig(message_id_format=fmt)) as sim:
        client = await bound_client(sim, BindTransmitter)
        sequences = [client.submit(f"m{i}") for i in range(5)]
        resps = [await client.expect(SubmitSmResp) for _ in sequences]
        assert [r.sequence_number for r in resps] == sequences
        assert all(r.command_status == 0 and re.fullmatch(pattern, r.message_id) for r in resps)
        numbers = [int(r.message_id, 16 if fmt == "hex" else 10) for r in resps]
        assert numbers == sorted(set(numbers))
        assert [s.message_id for s in sim.submits] == [r.message_id for r in resps]
        assert sim.submits[0].text == "m0" and sim.submits[0].bind == 1
        assert sim.stats.submits_ok == 5
        await client.close()


async def test_receipt_text_and_tlvs_hex_resp_decimal_receipt() -> None:
    config = SimulatorConfig(message_id_format="hex", receipt_id_format="decimal", receipt_delay=0.02)
    async with SmscSimulator(config) as sim:
        client = await bound_client(sim)
        client.submit("Hello from the short code", registered_delivery=1, source_addr="4242")
        resp = await client.expect(SubmitSmResp)
        receipt = await client.expect(DeliverSm)
        client.ack(receipt)

        assert receipt.esm_class == 0x04 and receipt.is_receipt
        assert (receipt.source_addr, receipt.destination_addr) == ("447700900001", "4242")
        match = _RECEIPT_RE.fullmatch(receipt.short_message.decode("ascii"))
        assert match is not None, receipt.short_message
        assert match["id"] == str(int(resp.message_id, 16))
        assert (match["stat"], match["dlvrd"], match["err"]) == ("DELIVRD", "001", "000")
        assert match["text"] == "Hello from the short"
        assert receipt.tlv_str(Tag.RECEIPTED_MESSAGE_ID) == match["id"]
        assert receipt.tlv_int(Tag.MESSAGE_STATE) == 2
        await sim.wait_for(lambda: sim.stats.receipts_acked == 1, 1.0)
        assert sim.receipts[0].acked and sim.receipts[0].attempts == 1
        await client.close()


async def test_receipt_redelivered_after_connection_drop() -> None:
    config = SimulatorConfig(receipt_delay=0.0, redelivery_delay=0.05)
    async with SmscSimulator(config) as sim:
        client = await bound_client(sim)
        client.submit("first", registered_delivery=1)
        resp = await client.expect(SubmitSmResp)
        first = await client.expect(DeliverSm)
        await client.close()  # gone before the deliver_sm_resp

        again = await bound_client(sim)
        second = await again.expect(DeliverSm)
        assert second.short_message == first.short_message
        assert second.tlv_str(Tag.RECEIPTED_MESSAGE_ID) == resp.message_id
        again.ack(second)
        await sim.wait_for(lambda: sim.stats.receipts_acked == 1, 1.0)
        assert (sim.receipts[0].attempts, sim.stats.receipts_sent, sim.stats.redeliveries) == (2, 2, 1)
        await again.close()


async def test_receipt_nack_and_timeout_are_redelivered() -> None:
    config = SimulatorConfig(receipt_delay=0.0, redelivery_delay=0.02, deliver_timeout=0.15)
    async with SmscSimulator(config) as sim:
        client = await bound_client(sim)
        client.submit("x", registered_delivery=1)
        await client.expect(SubmitSmResp)
        first = await client.expect(DeliverSm)
        client.ack(first, Status.RX_T_APPN)
        second = await client.expect(DeliverSm)  # after the nack
        third = await client.expect(DeliverSm)  # second one unanswered: resent after deliver_timeout
        assert len({first.sequence_number, second.sequence_number, third.sequence_number}) == 3
        client.ack(second)  # too late: that attempt was already given up
        client.ack(third)
        await sim.wait_for(lambda: sim.stats.receipts_acked == 1, 1.0)
        assert (sim.stats.deliver_nacks, sim.stats.deliver_timeouts) == (1, 1)
        await client.close()


async def test_receipts_wait_for_a_receiver_bind() -> None:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.0)) as sim:
        tx = await bound_client(sim, BindTransmitter)
        tx.submit("queued", registered_delivery=1)
        await tx.expect(SubmitSmResp)
        await asyncio.sleep(0.05)
        assert sim.stats.receipts_sent == 0  # a transmitter bind never gets deliver_sm

        rx = await bound_client(sim, BindReceiver)
        receipt = await rx.expect(DeliverSm)
        assert receipt.is_receipt
        rx.ack(receipt)
        await sim.wait_for(lambda: sim.stats.receipts_acked == 1, 1.0)
        await tx.close()
        await rx.close()


async def test_outcomes_are_seeded_and_failure_only_receipts() -> None:
    config = SimulatorConfig(receipt_delay=0.0, outcomes={"DELIVRD": 1.0, "UNDELIV": 1.0}, seed=7)
    async with SmscSimulator(config) as sim:
        client = await bound_client(sim)
        for i in range(20):
            client.submit(f"m{i}", registered_delivery=2)
        await sim.wait_for(lambda: len(sim.submits) == 20, 1.0)
        outcomes = [s.outcome for s in sim.submits]
        failures = outcomes.count("UNDELIV")
        assert 0 < failures < 20
        seen = []
        while len(seen) < 20 + failures:
            pdu = await client.read()
            assert pdu is not None
            if isinstance(pdu, DeliverSm):
                client.ack(pdu)
            seen.append(pdu)
        stats = [_RECEIPT_RE.fullmatch(p.short_message.decode())["stat"] for p in seen if isinstance(p, DeliverSm)]
        assert stats == ["UNDELIV"] * failures
        await client.close()

    async with SmscSimulator(config) as again:  # same seed, same outcomes
        client = await bound_client(again)
        for i in range(20):
            client.submit(f"m{i}", registered_delivery=2)
        await again.wait_for(lambda: len(again.submits) == 20, 1.0)
        assert [s.outcome for s in again.submits] == outcomes
        await client.close()


async def test_receipt_before_response() -> None:
    async with SmscSimulator(SimulatorConfig(receipt_before_response=True)) as sim:
        client = await bound_client(sim)
        client.submit("race", registered_delivery=1)
        receipt = await client.expect(DeliverSm)
        resp = await client.expect(SubmitSmResp)
        assert receipt.tlv_str(Tag.RECEIPTED_MESSAGE_ID) == resp.message_id
        client.ack(receipt)
        await client.close()


# -- limits and faults --------------------------------------------------------------------------------------


async def test_tps_limit_throttles_above_rate() -> None:
    async with SmscSimulator(SimulatorConfig(tps_limit=20)) as sim:
        client = await bound_client(sim, BindTransmitter)
        for _ in range(60):
            client.submit(registered_delivery=1)
        statuses = [(await client.expect(SubmitSmResp)).command_status for _ in range(60)]
        ok = statuses.count(0)
        assert 20 <= ok <= 22  # the burst (1 s of tokens) plus what refills while they arrive
        assert statuses.count(Status.RTHROTTLED) == 60 - ok
        assert (sim.stats.submits_ok, sim.stats.throttled) == (ok, 60 - ok)
        assert [s.status for s in sim.submits].count(Status.RTHROTTLED) == 60 - ok
        assert len(sim.receipts) == ok  # throttled messages are not delivered

        await asyncio.sleep(0.25)  # about 5 tokens come back
        for _ in range(10):
            client.submit()
        statuses = [(await client.expect(SubmitSmResp)).command_status for _ in range(10)]
        assert 4 <= statuses.count(0) <= 7
        await client.close()


async def test_response_delay_keeps_order_and_max_window() -> None:
    async with SmscSimulator(SimulatorConfig(response_delay=0.2, max_window=3)) as sim:
        client = await bound_client(sim, BindTransmitter)
        loop = asyncio.get_running_loop()
        started = loop.time()
        sequences = [client.submit() for _ in range(5)]
        resps = [await client.expect(SubmitSmResp) for _ in sequences]
        assert loop.time() - started >= 0.18
        assert [r.sequence_number for r in resps] == sequences
        assert [r.command_status for r in resps] == [0, 0, 0, Status.RMSGQFUL, Status.RMSGQFUL]
        assert sim.stats.queue_full == 2

        sim.response_delay = 0.0
        client.submit()
        assert (await client.expect(SubmitSmResp, timeout=0.1)).command_status == 0
        await client.close()


async def test_fail_next_and_drop_next() -> None:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.0)) as sim:
        client = await bound_client(sim)
        sim.fail_next(2, Status.RSUBMITFAIL)
        for _ in range(3):
            client.submit(registered_delivery=1)
        statuses = [(await client.expect(SubmitSmResp)).command_status for _ in range(3)]
        assert statuses == [Status.RSUBMITFAIL, Status.RSUBMITFAIL, 0]
        client.ack(await client.expect(DeliverSm))  # only the accepted one has a receipt

        sim.drop_next(1)
        dropped = client.submit(registered_delivery=1)
        answered = client.submit()
        client.send(EnquireLink(sequence_number=client.seq()))
        resp = await client.expect(SubmitSmResp)
        assert resp.sequence_number == answered
        await client.expect(EnquireLinkResp)  # nothing for `dropped` came before it
        record = next(s for s in sim.submits if s.sequence_number == dropped)
        assert (record.status, record.message_id, record.receipt) == (None, "", None)
        assert (sim.stats.errors_injected, sim.stats.dropped, len(sim.receipts)) == (2, 1, 1)
        await client.close()


async def test_disconnect_after() -> None:
    async with SmscSimulator() as sim:
        client = await bound_client(sim)
        sim.disconnect_after(3)
        sequences = [client.submit() for _ in range(5)]
        got = []
        while (pdu := await client.read()) is not None:
            got.append(pdu)
        assert all(isinstance(p, SubmitSmResp) and p.sequence_number in sequences[:2] for p in got)
        assert [s.status for s in sim.submits][2] is None
        assert len(sim.submits) == 3  # the rest were never read
        assert sim.stats.disconnects_injected == 1

        again = await bound_client(sim)  # the server itself is fine
        again.submit()
        assert (await again.expect(SubmitSmResp)).command_status == 0
        await again.close()


async def test_disconnect_all_and_send_malformed() -> None:
    async with SmscSimulator() as sim:
        first = await bound_client(sim)
        second = await bound_client(sim, BindReceiver)
        sim.send_malformed()
        with pytest.raises(PduDecodeError) as info:
            await first.read()
        assert info.value.fatal and info.value.status == Status.RINVCMDLEN
        with pytest.raises(PduDecodeError):
            await second.read()
        assert sim.stats.malformed_sent == 2

        sim.disconnect_all()
        await first.expect_closed()
        await second.expect_closed()
        await sim.wait_for(lambda: sim.bound() == 0, 1.0)


# -- MO ---------------------------------------------------------------------------------------------------


async def test_inject_mo_redelivered_until_acked() -> None:
    async with SmscSimulator(SimulatorConfig(redelivery_delay=0.02)) as sim:
        queued = await sim.inject_mo("447700900123", "12345", "STOP")  # nobody bound yet: kept
        client = await bound_client(sim, BindReceiver)
        mo = await client.expect(DeliverSm)
        assert not mo.is_receipt and mo.esm_class == 0
        assert (mo.source_addr, mo.destination_addr, mo.data_coding, mo.short_message) == (
            "447700900123",
            "12345",
            0,
            b"STOP",
        )
        client.ack(mo, Status.RX_T_APPN)  # "try again later"
        again = await client.expect(DeliverSm)
        assert again.short_message == b"STOP"
        await client.close()  # gone without answering

        client = await bound_client(sim, BindReceiver)
        third = await client.expect(DeliverSm)
        assert third.short_message == b"STOP"
        client.ack(third)
        await sim.wait_for(lambda: sim.stats.mos_acked == 1, 1.0)
        assert queued.acked and queued.attempts == 3 and queued.nacks == 1

        unicode_mo = await sim.inject_mo("447700900123", "12345", "Привет", system_id="smsgw")
        pdu = await client.expect(DeliverSm)
        assert (pdu.data_coding, pdu.short_message) == (8, "Привет".encode("utf-16-be"))
        client.ack(pdu)
        await sim.wait_for(lambda: unicode_mo.acked, 1.0)
        assert (sim.stats.mos_sent, sim.stats.mos_acked) == (4, 2)
        await client.close()


async def test_inject_mo_long_text_goes_in_message_payload() -> None:
    async with SmscSimulator() as sim:
        client = await bound_client(sim)
        text = "é" * 300  # GSM-7 encodable, 300 septets: too long for short_message
        await sim.inject_mo("447700900123", "12345", text)
        pdu = await client.expect(DeliverSm)
        assert pdu.short_message == b""
        assert len(pdu.tlvs[Tag.MESSAGE_PAYLOAD]) == 300
        client.ack(pdu)
        await sim.wait_for(lambda: sim.stats.mos_acked == 1, 1.0)
        await client.close()


async def test_stop_closes_connections() -> None:
    sim = SmscSimulator()
    await sim.start()
    client = await bound_client(sim)
    stopping = asyncio.create_task(sim.stop(unbind_timeout=1.0))
    unbind = await client.expect(Unbind)
    client.send(UnbindResp(sequence_number=unbind.sequence_number))
    await client.expect_closed()
    await asyncio.wait_for(stopping, 2.0)
    with pytest.raises(OSError):
        await RawClient.connect(sim)


class _ReadyLog(logging.Handler):
    """Captures the simulator's log and signals the "ready" line that carries the port."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.text: list[str] = []
        self.port = 0
        self.ready = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(f"{record.getMessage()} {vars(record)!r}")  # the extra fields too
        if record.getMessage().startswith("SMSC simulator ready"):
            self.port = record.port  # type: ignore[attr-defined]
            self.ready.set()


async def test_serve_runs_until_stop_is_set() -> None:
    logger = logging.getLogger("gateway.simulator")
    handler, level = _ReadyLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(SimulatorConfig(accounts={"smsgw": "pw-s3crt"}), stop=stop))
    try:
        await asyncio.wait_for(handler.ready.wait(), 2.0)
        client = await RawClient.connect_to(handler.port)
        assert (await client.bind(password="wrong")).command_status == Status.RINVPASWD
        await client.expect_closed()
        client = await RawClient.connect_to(handler.port)
        assert (await client.bind(password="pw-s3crt")).command_status == 0
        stop.set()
        unbind = await client.expect(Unbind)  # serve() unbinds politely before closing
        client.send(UnbindResp(sequence_number=unbind.sequence_number))
        await client.expect_closed()
        await asyncio.wait_for(task, 3.0)
    finally:
        stop.set()
        await asyncio.wait_for(task, 3.0)
        logger.removeHandler(handler)
        logger.setLevel(level)
    # The passwords this test used (the account's and the wrong one), in any record's text or extra fields.
    assert not any("pw-s3crt" in line or "wrong" in line for line in handler.text), handler.text


def test_runs_under_uvloop() -> None:
    """Production runs uvloop, whose transports do not subclass asyncio.Transport."""

    async def scenario() -> None:
        async with SmscSimulator(SimulatorConfig(receipt_delay=0.0)) as sim:
            client = await bound_client(sim)
            client.submit("uv", registered_delivery=1)
            await client.expect(SubmitSmResp)
            client.ack(await client.expect(DeliverSm))
            await sim.wait_for(lambda: sim.stats.receipts_acked == 1, 1.0)
            await client.close()

    # Its own thread and loop, away from the session loop the async tests share.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(uvloop.run, asyncio.wait_for(scenario(), 3.0)).result(timeout=5.0)


async def test_without_records_a_long_run_keeps_only_counters() -> None:
    """`smsgw simulate-smsc` (keep_records=False) must not grow with every submit: counters only."""
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.0, keep_records=False)) as sim:
        client = await RawClient.connect(sim)
        await client.bind()
        for _ in range(5):
            client.submit("hi", registered_delivery=1)
            await client.expect(SubmitSmResp)
            client.ack(await client.expect(DeliverSm))
        await sim.wait_for(lambda: sim.stats.receipts_acked == 5, 1.0)
        assert sim.stats.submits_ok == 5
        assert (sim.submits, sim.receipts, sim.mos) == ([], [], [])
        await client.close()
