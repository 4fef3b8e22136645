"""A raw ESME for tests of SMSCs (the simulator): PDUs written with the codec, read back in arrival order."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import TypeVar

import pytest

from gateway.simulator import SmscSimulator
from gateway.smpp.codec import Framer, decode, encode
from gateway.smpp.pdu import BindTransceiver, DeliverSmResp, Pdu, SubmitSm, _Bind

P = TypeVar("P", bound=Pdu)

_READ_TIMEOUT_S = 2.0


class RawClient:
    """An ESME reduced to bytes: send PDUs, read PDUs in arrival order, see the connection close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = Framer()
        self.inbox: deque[Pdu] = deque()
        self.sequence = itertools.count(1)

    @classmethod
    async def connect(cls, sim: SmscSimulator) -> RawClient:
        return await cls.connect_to(sim.port)

    @classmethod
    async def connect_to(cls, port: int) -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), _READ_TIMEOUT_S)
        return cls(reader, writer)

    def send(self, pdu: Pdu) -> None:
        self.writer.write(encode(pdu))

    def seq(self) -> int:
        return next(self.sequence)

    async def read(self, timeout: float = _READ_TIMEOUT_S) -> Pdu | None:
        """The next PDU, or None once the simulator has closed the connection."""
        async with asyncio.timeout(timeout):
            while not self.inbox:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    self.writer.close()
                    return None
                self.inbox.extend(decode(frame) for frame in self.framer.feed(data))
        return self.inbox.popleft()

    async def expect(self, kind: type[P], timeout: float = _READ_TIMEOUT_S) -> P:
        pdu = await self.read(timeout)
        assert isinstance(pdu, kind), f"expected {kind.__name__}, got {pdu!r}"
        return pdu

    async def expect_closed(self, timeout: float = _READ_TIMEOUT_S) -> None:
        pdu = await self.read(timeout)
        assert pdu is None, f"expected the connection to close, got {pdu!r}"

    async def bind(
        self, kind: type[_Bind] = BindTransceiver, system_id: str = "smsgw", password: str = "secret"
    ) -> Pdu:
        self.send(kind(sequence_number=self.seq(), system_id=system_id, password=password))
        resp = await self.read()
        assert resp is not None
        return resp

    def submit(self, text: str = "hello", registered_delivery: int = 0, **fields: object) -> int:
        sequence = self.seq()
        fields.setdefault("source_addr", "12345")
        fields.setdefault("destination_addr", "447700900001")
        self.send(
            SubmitSm(
                sequence_number=sequence,
                short_message=text.encode("ascii"),
                registered_delivery=registered_delivery,
                **fields,  # type: ignore[arg-type]
            )
        )
        return sequence

    def ack(self, pdu: Pdu, status: int = 0) -> None:
        self.send(DeliverSmResp(sequence_number=pdu.sequence_number, command_status=status))

    async def silent(self, seconds: float) -> None:
        """Nothing arrives (and the connection stays open) for `seconds`."""
        with pytest.raises(TimeoutError):
            await self.read(seconds)

    async def close(self, abort: bool = False) -> None:
        """Close the connection; `abort`: reset it at once, as the kernel does for a killed process."""
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), _READ_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            pass


async def bound_client(
    sim: SmscSimulator, kind: type[_Bind] = BindTransceiver, system_id: str = "smsgw", password: str = "secret"
) -> RawClient:
    client = await RawClient.connect(sim)
    resp = await client.bind(kind, system_id, password)
    assert resp.command_status == 0, resp
    return client
