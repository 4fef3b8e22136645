"""SmppConnection while reading is paused for back-pressure, against the scripted SMSC over loopback TCP.

While paused, the SMSC's enquire_links are answered at once (a strict SMSC drops a bind whose keep-alive goes
unanswered), and nothing else it sends is acted on: deliver_sm stay unacknowledged, responses unread, in order,
until resume. Held bytes are bounded (`HELD_CAP`, then the transport stops reading), and a malformed header is
left for the session to reject after resume.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from scripted_smsc import ScriptedSmsc, Sent, _Conn, header, mo_pdu

from gateway.smpp import codec
from gateway.smpp import session as s
from gateway.smpp.client import HELD_CAP, SmppConnection, connect
from gateway.smpp.pdu import BindTransceiver, CommandId, DataSm, DeliverSm, DeliverSmResp, SubmitSm, SubmitSmResp, Tag

ENQUIRE_LINK_RESP = CommandId.ENQUIRE_LINK | 0x80000000
ONE_READ = 256 * 1024  # the most one read of asyncio's (and uvloop's) TCP transport delivers


class Link:
    """A bound SmppConnection to a ScriptedSmsc, with what each side saw."""

    def __init__(self, smsc: ScriptedSmsc) -> None:
        self.smsc = smsc
        self.conn: SmppConnection
        self.smsc_conn: _Conn
        self.received: list[DeliverSm | DataSm] = []  # deliver_sm given to our handler, in order
        self.frames: list[tuple[int, int, int]] = []  # (command_id, command_status, seq) the SMSC got from us
        original = smsc.on_frame

        def on_frame(conn: _Conn, cid: int, status: int, seq: int, frame: bytes) -> None:
            self.frames.append((cid, status, seq))
            original(conn, cid, status, seq, frame)

        smsc.on_frame = on_frame  # type: ignore[method-assign]

    def on_request(self, conn: SmppConnection, pdu: DeliverSm | DataSm) -> None:
        self.received.append(pdu)
        conn.send_response(DeliverSmResp(sequence_number=pdu.sequence_number))

    def enquire_link_resps(self) -> list[int]:
        return [seq for cid, _, seq in self.frames if cid == ENQUIRE_LINK_RESP]

    def texts(self) -> list[bytes]:
        return [p.short_message for p in self.received]


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    async with ScriptedSmsc(receipts=False) as smsc:
        lk = Link(smsc)
        # No keep-alive of ours during a test: only the SMSC's enquire_links are on the wire.
        session = s.Session(window=10, response_timeout=10.0, enquire_link_interval=600.0)
        lk.conn = await connect("127.0.0.1", smsc.port, session, name="paused", on_request=lk.on_request)
        await lk.conn.bind(BindTransceiver(system_id="smsgw", password="secret"))
        lk.smsc_conn = await smsc.wait_bound()
        try:
            yield lk
        finally:
            lk.conn.abort("test over")
            await asyncio.wait_for(lk.conn.wait_closed(), 5)


async def until(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def enquire_link(seq: int) -> bytes:
    return header(16, CommandId.ENQUIRE_LINK, seq=seq)


def deliver(smsc: ScriptedSmsc, text: str) -> tuple[Sent, bytes]:
    """A deliver_sm as bytes, numbered and tracked by the SMSC (its ack is recorded), not sent yet."""
    seq = smsc.next_seq()
    pdu = mo_pdu(text)
    sent = Sent(seq, pdu)
    smsc.sent[seq] = sent
    return sent, codec.encode(pdu, seq)


async def send_in_pieces(smsc: ScriptedSmsc, data: bytes, cuts: list[int]) -> None:
    """Write `data` cut at the offsets `cuts`, each piece its own TCP segment (a pause between them)."""
    bounds = [0, *cuts, len(data)]
    for a, b in itertools.pairwise(bounds):
        smsc.send_raw(data[a:b])
        await asyncio.sleep(0.05)


async def test_enquire_link_is_answered_while_deliver_sm_waits_for_resume(link: Link) -> None:
    link.conn.pause_reading()
    first, first_bytes = deliver(link.smsc, "first")
    second, second_bytes = deliver(link.smsc, "second")
    link.smsc.send_raw(first_bytes + enquire_link(4242) + second_bytes)

    await until(lambda: link.enquire_link_resps() == [4242], "enquire_link_resp while paused")
    assert (ENQUIRE_LINK_RESP, 0, 4242) in link.frames
    await asyncio.sleep(0.2)
    assert link.received == [] and first.acked_status is None and second.acked_status is None
    assert not link.conn.is_closed

    link.conn.resume_reading()
    await until(lambda: second.acked_status is not None, "deliver_sm acknowledged after resume")
    assert link.texts() == [b"first", b"second"] and first.acked_status == 0 == second.acked_status
    acks = [seq for cid, _, seq in link.frames if cid == CommandId.DELIVER_SM_RESP]
    assert acks == [first.seq, second.seq]
    assert link.conn.session.is_bound


async def test_enquire_links_among_held_pdus_cut_at_awkward_places(link: Link) -> None:
    link.conn.pause_reading()
    submit = link.conn.send_request(SubmitSm(destination_addr="15551234567", short_message=b"out"))
    await until(lambda: link.smsc.stats.submits == 1, "submit_sm reached the SMSC")  # its resp is now held

    a, a_bytes = deliver(link.smsc, "a")
    b, b_bytes = deliver(link.smsc, "b")
    c, c_bytes = deliver(link.smsc, "c")
    stream = a_bytes + enquire_link(901) + enquire_link(902) + b_bytes + enquire_link(903) + c_bytes
    el1 = len(a_bytes)
    b_at = el1 + 32
    el3 = b_at + len(b_bytes)
    # A cut inside a deliver_sm's command_length, one in an enquire_link's header (between command_id and
    # command_status), one between two enquire_links' sequence number and length, one inside the last header.
    cuts = [2, el1 + 7, el1 + 16 + 14, b_at + 3, el3 + 1, el3 + 16 + 9]
    await send_in_pieces(link.smsc, stream, cuts)

    await until(lambda: link.enquire_link_resps() == [901, 902, 903], "three enquire_link_resp while paused")
    await asyncio.sleep(0.2)
    assert link.received == [] and not submit.done()
    assert {a.acked_status, b.acked_status, c.acked_status} == {None}

    link.conn.resume_reading()
    await until(lambda: c.acked_status is not None, "every deliver_sm acknowledged")
    resp = await asyncio.wait_for(submit, 5)
    assert isinstance(resp, SubmitSmResp) and resp.command_status == 0 and resp.message_id
    assert link.texts() == [b"a", b"b", b"c"]
    assert [seq for cid, _, seq in link.frames if cid == CommandId.DELIVER_SM_RESP] == [a.seq, b.seq, c.seq]
    assert link.conn.session.is_bound and link.conn.session.in_flight == 0


@pytest.mark.parametrize("started", [2, 10])
async def test_pause_inside_a_frame_finishes_it_then_answers_enquire_links(link: Link, started: int) -> None:
    """The session had read the first octets of a deliver_sm (fewer than the command_length, or more) when the
    pause came: the held bytes start inside a frame, and the enquire_link behind it is still found."""
    first, first_bytes = deliver(link.smsc, "started before the pause")
    then, then_bytes = deliver(link.smsc, "after")
    link.smsc.send_raw(first_bytes[:started])
    await until(lambda: link.conn.session._framer.buffered == started, "the first octets in the session's framer")
    link.conn.pause_reading()
    await send_in_pieces(link.smsc, first_bytes[started:] + enquire_link(77) + then_bytes, [5])

    await until(lambda: link.enquire_link_resps() == [77], "enquire_link_resp while paused")
    await asyncio.sleep(0.2)
    assert then.acked_status is None and b"after" not in link.texts()

    link.conn.resume_reading()
    await until(lambda: then.acked_status is not None, "deliver_sm acknowledged after resume")
    assert link.texts() == [b"started before the pause", b"after"] and first.acked_status == 0


async def test_held_bytes_are_capped_then_the_transport_stops_reading(link: Link) -> None:
    link.conn.pause_reading()
    link.smsc.send_raw(enquire_link(1))
    await until(lambda: link.enquire_link_resps() == [1], "enquire_link_resp before the flood")

    # 4 kB MOs until the SMSC's own socket is full (it stops being writable) or 6,000 of them (24 MB).
    sent: list[Sent] = []
    for n in range(6000):
        try:
            await asyncio.wait_for(link.smsc_conn.writable.wait(), 1.0)
        except TimeoutError:
            break
        payload = f"flood {n} ".encode().ljust(4000, b"x")
        pdu = DeliverSm(source_addr="12025550199", destination_addr="12345", tlvs={Tag.MESSAGE_PAYLOAD: payload})
        sent.append(link.smsc.deliver(pdu, link.smsc_conn))
        if n % 50 == 0:
            await asyncio.sleep(0)
    assert not link.smsc_conn.writable.is_set(), "the SMSC was never held back"

    held = len(link.conn._held)
    assert HELD_CAP < held <= HELD_CAP + ONE_READ  # read on up to the cap, then no more
    assert link.conn._transport is not None and not link.conn._transport.is_reading()
    samples = []
    for _ in range(5):
        await asyncio.sleep(0.1)
        samples.append(len(link.conn._held))
    assert samples == [held] * 5
    assert link.received == [] and link.smsc.unacked == len(sent)

    link.conn.resume_reading()
    await until(lambda: link.smsc.unacked == 0, "every deliver_sm acknowledged after resume", timeout=60)
    assert [p.sequence_number for p in link.received] == [x.seq for x in sent]
    assert link.conn.session.is_bound and not link.conn._held


@pytest.mark.parametrize("length", [8, 0x7FFFFFFF])
async def test_malformed_header_while_paused_is_rejected_after_resume(link: Link, length: int) -> None:
    link.conn.pause_reading()
    a, a_bytes = deliver(link.smsc, "before the garbage")
    garbage = struct.pack(">IIII", length, CommandId.DELIVER_SM, 0, 31337)
    link.smsc.send_raw(a_bytes + enquire_link(950) + garbage + enquire_link(951))

    await until(lambda: link.enquire_link_resps() == [950], "the enquire_link before the garbage answered")
    await asyncio.sleep(0.3)
    # The scan stopped at the bad header: nothing behind it is looked at, nothing is rejected yet.
    assert link.enquire_link_resps() == [950] and link.smsc.stats.generic_nacks == []
    assert not link.conn.is_closed and a.acked_status is None

    link.conn.resume_reading()
    await asyncio.wait_for(link.conn.wait_closed(), 5)
    assert "protocol error" in link.conn.close_reason
    # Decoded in the read that ends the session, as without a pause: too late to acknowledge, so sent again.
    assert link.texts() == [b"before the garbage"] and a.acked_status is None
    assert link.smsc.stats.generic_nacks == [0x02]  # ESME_RINVCMDLEN
    assert link.enquire_link_resps() == [950]


async def test_unbind_while_paused_waits_for_resume(link: Link) -> None:
    """unbind is held: answering it first would end the session in front of held deliver_sm and responses."""
    link.conn.pause_reading()
    a, a_bytes = deliver(link.smsc, "before the unbind")
    link.smsc.send_raw(a_bytes + header(16, CommandId.UNBIND, seq=66) + enquire_link(67))
    await asyncio.sleep(0.3)
    assert not any(cid == CommandId.UNBIND_RESP for cid, _, _ in link.frames)
    assert not link.conn.is_closed and a.acked_status is None

    link.conn.resume_reading()
    await asyncio.wait_for(link.conn.wait_closed(), 5)
    assert link.conn.close_reason == "unbound by peer"
    assert link.texts() == [b"before the unbind"]
    assert (CommandId.UNBIND_RESP, 0, 66) in link.frames


async def test_pause_asked_by_the_handler_mid_read_holds_the_rest_and_answers_enquire_links(link: Link) -> None:
    """The handler pauses at the first deliver_sm of a large read: the rest of the read (cut at a feed chunk, not
    at a PDU boundary) is held, and the enquire_link at its end is answered while paused."""
    def pausing(conn: SmppConnection, pdu: DeliverSm | DataSm) -> None:
        link.received.append(pdu)
        conn.pause_reading()  # the writer is full: acknowledge later

    link.conn._on_request = pausing
    pieces = [deliver(link.smsc, f"mo {n} ".ljust(150, "x")) for n in range(100)]  # about 25 kB: several chunks
    link.smsc.send_raw(b"".join(b for _, b in pieces) + enquire_link(500))

    await until(lambda: link.enquire_link_resps() == [500], "enquire_link_resp while paused")
    await asyncio.sleep(0.2)
    decoded = len(link.received)
    assert 1 <= decoded < 100 and link.conn._held  # one feed chunk decoded, the rest held
    assert len(link.conn._held) == sum(len(b) for _, b in pieces[decoded:])  # the cut frame was finished

    link.conn._on_request = link.on_request
    for sent, _ in pieces[:decoded]:
        link.conn.send_response(DeliverSmResp(sequence_number=sent.seq))
    link.conn.resume_reading()
    await until(lambda: link.smsc.unacked == 0, "every deliver_sm acknowledged after resume")
    assert [p.sequence_number for p in link.received] == [sent.seq for sent, _ in pieces]
