"""Bad input at the protocol level, SMSC side: the simulator over real loopback TCP fed arbitrary bytes.

Rule of this module: one fresh `SmscSimulator` per example, bounded (50 derandomized examples in CI). A hostile ESME
connects (maybe binds properly first), writes hostile octets in arbitrary pieces and half-closes; whatever the
simulator writes back must be whole, well-formed PDUs. Then a probe ESME must still bind, submit and get its receipt
(so the timer task that sends receipts is alive too), and no exception may have been logged, by the simulator (its
catch-alls around PDU handlers and in the ticker would otherwise hide a crash) or by asyncio (an exception out of
`data_received`). Hostile submits on a bound connection request receipts with random data_coding, esm_class (UDHI
with a broken UDH) and octets, so the receipt builder meets garbage as well. SMSGW_FUZZ_EXAMPLES=N runs N random
examples instead, as in tests/test_session_fuzz.py.
"""

from __future__ import annotations

import asyncio
import logging

from hypothesis import example, given
from hypothesis import strategies as st
from test_session_fuzz import CUTS, HOSTILE_FRAMES, fuzz_settings, written_pdus

from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.smpp import codec
from gateway.smpp.pdu import (
    BindTransceiver,
    BindTransceiverResp,
    CommandId,
    DeliverSm,
    DeliverSmResp,
    Pdu,
    SubmitSm,
    SubmitSmResp,
)

_TIMEOUT_S = 3.0


class _Crashes(logging.Handler):
    """Collects records that carry an exception: how a swallowed crash shows (a plain error such as "receipt
    cannot be encoded, dropped" is a decision, not a crash)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None:
            self.records.append(record)


@st.composite
def hostile_submits(draw: st.DrawFn) -> bytes:
    """A submit_sm asking for a receipt, with random coding, esm_class and octets; then maybe a few octets of its
    body changed (an address byte >= 0x80 makes a receipt our encoder refuses)."""
    text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
    frame = bytearray(codec.encode(SubmitSm(
        sequence_number=draw(st.integers(1, 0xFFFFFFFF)),
        source_addr=draw(text),
        destination_addr=draw(text),
        esm_class=draw(st.sampled_from([0, 0x40, 0x43, 0xFF])),
        registered_delivery=draw(st.sampled_from([1, 2, 0x11, 0xFF])),
        data_coding=draw(st.sampled_from([0, 3, 8, 0x18, 0xF0, 0xF4, 0xFF])),
        short_message=draw(st.binary(max_size=80)),
    )))
    for _ in range(draw(st.integers(0, 3))):
        frame[draw(st.integers(16, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the simulator closes the connection."""
    out = bytearray()
    async with asyncio.timeout(_TIMEOUT_S):
        try:
            while chunk := await reader.read(65536):
                out += chunk
        except ConnectionResetError:  # closed with our unread octets in its buffer: what came before still counts
            pass
    return bytes(out)


async def _hostile(sim: SmscSimulator, data: bytes, cuts: tuple[int, ...], bind_first: bool) -> list[Pdu]:
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    try:
        if bind_first:
            writer.write(codec.encode(BindTransceiver(sequence_number=1, system_id="smsgw", password="secret")))
        points = sorted({c for c in cuts if 0 < c < len(data)})
        try:
            for a, b in zip([0, *points], [*points, len(data)], strict=True):
                writer.write(data[a:b])
                await writer.drain()
                await asyncio.sleep(0)  # let the simulator read this piece on its own
            writer.write_eof()
        except OSError:  # the simulator closed first (a framing error closes at once): read what it said
            pass
        return written_pdus(await _read_all(reader), canonical=False)
    finally:
        writer.close()


async def _probe(sim: SmscSimulator) -> None:
    """A normal ESME: bind, submit with a receipt requested, get submit_sm_resp and its receipt."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    framer = codec.Framer()
    inbox: list[Pdu] = []

    async def next_pdu() -> Pdu:
        while not inbox:
            chunk = await reader.read(65536)
            assert chunk, "the simulator closed the probe's connection"
            inbox.extend(codec.decode(frame) for frame in framer.feed(chunk))
        return inbox.pop(0)

    try:
        async with asyncio.timeout(_TIMEOUT_S):
            writer.write(codec.encode(BindTransceiver(sequence_number=1, system_id="smsgw", password="secret")))
            resp = await next_pdu()
            assert isinstance(resp, BindTransceiverResp) and resp.command_status == 0, resp
            writer.write(codec.encode(SubmitSm(sequence_number=2, source_addr="12345", destination_addr="15551234567",
                                               short_message=b"probe", registered_delivery=1)))
            message_id = None
            while True:
                pdu = await next_pdu()
                if isinstance(pdu, SubmitSmResp):
                    assert pdu.sequence_number == 2 and pdu.command_status == 0, pdu
                    message_id = pdu.message_id
                elif isinstance(pdu, DeliverSm):  # receipts for the hostile ESME's submits may come here too
                    writer.write(codec.encode(DeliverSmResp(sequence_number=pdu.sequence_number)))
                    if message_id is not None and f"id:{message_id} ".encode() in pdu.short_message:
                        return
                else:
                    raise AssertionError(f"unexpected {pdu!r}")
    finally:
        writer.close()


async def _scenario(data: bytes, cuts: tuple[int, ...], bind_first: bool) -> None:
    crashes = _Crashes()
    loggers = [logging.getLogger("gateway.simulator"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(crashes)
    try:
        async with SmscSimulator(SimulatorConfig(receipt_delay=0.0)) as sim:
            answers = await _hostile(sim, data, cuts, bind_first)
            for pdu in answers:  # an SMSC answers; its only requests are deliver_sm (receipts) and unbind
                cid = getattr(pdu, "raw_command_id", pdu.command_id)
                assert pdu.is_response or cid in (CommandId.DELIVER_SM, CommandId.UNBIND), pdu
            await _probe(sim)
        await asyncio.sleep(0.05)  # receipts for the hostile submits: built by the ticker meanwhile
    finally:
        for logger in loggers:
            logger.removeHandler(crashes)
    assert not crashes.records, [r.getMessage() for r in crashes.records]


@fuzz_settings(ci_examples=50)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.lists(st.one_of(HOSTILE_FRAMES, hostile_submits()), min_size=1, max_size=5).map(b"".join),
        st.lists(hostile_submits(), min_size=1, max_size=5).map(b"".join),  # framing intact: receipts get built
    ),
    cuts=CUTS,
    bind_first=st.booleans(),
)
@example(data=b"\xff\xff\xff\xff", cuts=(), bind_first=True)  # 0xFFFFFFFF: generic_nack, close
@example(data=codec.HEADER.pack(16, CommandId.ALERT_NOTIFICATION, 0, 5), cuts=(2,), bind_first=False)
def test_simulator_survives_arbitrary_bytes(data: bytes, cuts: tuple[int, ...], bind_first: bool) -> None:
    asyncio.run(_scenario(data, cuts, bind_first))
