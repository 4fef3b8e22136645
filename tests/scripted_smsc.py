"""A scripted SMSC for tests: an asyncio server on 127.0.0.1 that speaks raw PDUs (not the simulator).

It answers bind_transceiver, enquire_link, unbind and submit_sm (status per test: `submit_statuses` is a
queue of command_status values for the next submits, 0 after it is empty), optionally sends a DELIVRD receipt
for each accepted submit, and lets the test push anything: encoded PDUs (`deliver`) or raw bytes (`send_raw`).
It records every deliver_sm it sent and when its deliver_sm_resp came back (`acked`), and calls `on_ack` then,
so a test can look into Postgres at that moment. Writing respects TCP back-pressure (`pause_writing`), as an
SMSC whose socket is full stops sending.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.smpp import codec
from gateway.smpp.pdu import (
    BindTransceiverResp,
    CommandId,
    DeliverSm,
    EnquireLinkResp,
    SubmitSm,
    SubmitSmResp,
    UnbindResp,
)


def receipt_text(message_id: str, stat: str = "DELIVRD", err: str = "000") -> bytes:
    """The SMPP 3.4 Appendix B receipt text (bytes, Latin-1)."""
    return (
        f"id:{message_id} sub:001 dlvrd:001 submit date:2401011200 done date:2401011200 stat:{stat} err:{err} text:x"
    ).encode("latin-1")


def receipt_pdu(text: bytes, source: str = "+12025550100", dest: str = "12345") -> DeliverSm:
    return DeliverSm(source_addr=dest, destination_addr=source, esm_class=0x04, short_message=text)


def mo_pdu(text: str, source: str = "12025550199", dest: str = "12345") -> DeliverSm:
    return DeliverSm(source_addr=source, source_addr_ton=1, destination_addr=dest, short_message=text.encode())


def header(length: int, command_id: int, status: int = 0, seq: int = 1) -> bytes:
    return struct.pack(">IIII", length, command_id, status, seq)


@dataclass
class Sent:
    seq: int
    pdu: DeliverSm | None
    acked_status: int | None = None


@dataclass
class _Stats:
    binds: int = 0
    submits: int = 0
    generic_nacks: list[int] = field(default_factory=list)  # command_status of each generic_nack received


class _Conn(asyncio.Protocol):
    def __init__(self, smsc: ScriptedSmsc) -> None:
        self.smsc = smsc
        self.framer = codec.Framer(max_length=0xFFFFFFFF)
        self.transport: asyncio.Transport | None = None
        self.bound = False
        self.closed = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=64 * 1024)
        self.smsc.conns.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.writable.set()
        if self in self.smsc.conns:
            self.smsc.conns.remove(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            cid, status, seq = struct.unpack_from(">III", frame, 4)
            self.smsc.on_frame(self, cid, status, seq, frame)


class ScriptedSmsc:
    """See the module docstring. `async with ScriptedSmsc() as smsc:`; `smsc.port` to connect to."""

    def __init__(self, *, receipts: bool = True) -> None:
        self.receipts = receipts
        self.submit_statuses: collections.deque[int] = collections.deque()
        self.conns: list[_Conn] = []
        self.stats = _Stats()
        self.sent: dict[int, Sent] = {}
        self.on_ack: Callable[[Sent], None] | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._seq = 1000
        self._mid = 5000
        self._bound = asyncio.Event()

    async def __aenter__(self) -> ScriptedSmsc:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    # -- what the gateway sends ------------------------------------------------------------------------

    def on_frame(self, conn: _Conn, cid: int, status: int, seq: int, frame: bytes) -> None:
        if cid == CommandId.BIND_TRANSCEIVER:
            conn.bound = True
            self.stats.binds += 1
            conn.write(codec.encode(BindTransceiverResp(sequence_number=seq, system_id="scripted")))
            self._bound.set()
        elif cid == CommandId.ENQUIRE_LINK:
            conn.write(codec.encode(EnquireLinkResp(sequence_number=seq)))
        elif cid == CommandId.UNBIND:
            conn.write(codec.encode(UnbindResp(sequence_number=seq)))
            if conn.transport is not None:
                conn.transport.close()
        elif cid == CommandId.SUBMIT_SM:
            pdu = codec.decode(frame)
            assert isinstance(pdu, SubmitSm)
            self.stats.submits += 1
            answer = self.submit_statuses.popleft() if self.submit_statuses else 0
            if answer:
                conn.write(codec.encode(SubmitSmResp(sequence_number=seq, command_status=answer)))
                return
            self._mid += 1
            mid = str(self._mid)
            conn.write(codec.encode(SubmitSmResp(sequence_number=seq, message_id=mid)))
            if self.receipts:
                self.deliver(receipt_pdu(receipt_text(mid), source=pdu.destination_addr), conn)
        elif cid == CommandId.DELIVER_SM_RESP:
            sent = self.sent.get(seq)
            if sent is not None and sent.acked_status is None:
                sent.acked_status = status
                if self.on_ack is not None:
                    self.on_ack(sent)
        elif cid == CommandId.GENERIC_NACK:
            self.stats.generic_nacks.append(status)

    # -- what the test sends -----------------------------------------------------------------------------

    def conn(self) -> _Conn:
        bound = [c for c in self.conns if c.bound and not c.closed.is_set()]
        assert bound, "no bound connection"
        return bound[-1]

    async def wait_bound(self, binds: int = 1, timeout: float = 10.0) -> _Conn:
        """Wait until `binds` binds have happened in total and one is up; return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.stats.binds >= binds and any(c.bound and not c.closed.is_set() for c in self.conns):
                return self.conn()
            await asyncio.sleep(0.01)
        raise AssertionError(f"{binds} binds not reached in {timeout} s (binds: {self.stats.binds})")

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def deliver(self, pdu: DeliverSm, conn: _Conn | None = None) -> Sent:
        """Send a deliver_sm with a fresh sequence number; its ack is recorded in `sent`."""
        seq = self.next_seq()
        sent = Sent(seq, pdu)
        self.sent[seq] = sent
        (conn or self.conn()).write(codec.encode(_with_seq(pdu, seq)))
        return sent

    def send_raw(self, data: bytes, conn: _Conn | None = None) -> None:
        (conn or self.conn()).write(data)

    def track_raw(self, seq: int) -> Sent:
        """Record a deliver_sm sent as raw bytes with sequence number `seq`, so its ack is recorded."""
        sent = Sent(seq, None)
        self.sent[seq] = sent
        return sent

    @property
    def unacked(self) -> int:
        return sum(1 for s in self.sent.values() if s.acked_status is None)


def _with_seq(pdu: DeliverSm, seq: int) -> DeliverSm:
    return dataclasses.replace(pdu, sequence_number=seq)
