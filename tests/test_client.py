"""The asyncio SMPP client against the simulator over real loopback TCP."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.smpp import session as s
from gateway.smpp.client import BindError, ConnectionClosedError, RequestTimeoutError, SmppConnection, connect
from gateway.smpp.pdu import BindTransceiver, DataSm, DeliverSm, DeliverSmResp, SubmitSm, SubmitSmResp


async def open_bound(
    sim: SmscSimulator, *, password: str = "secret", **session_kw: float
) -> tuple[SmppConnection, list[DeliverSm | DataSm]]:
    received: list[DeliverSm | DataSm] = []

    def on_request(conn: SmppConnection, pdu: DeliverSm | DataSm) -> None:
        received.append(pdu)
        conn.send_response(DeliverSmResp(sequence_number=pdu.sequence_number))

    conn = await connect("127.0.0.1", sim.port, s.Session(**session_kw), name="t", on_request=on_request)
    await conn.bind(BindTransceiver(system_id="smsgw", password=password))
    return conn, received


async def test_bind_submit_receipt_unbind() -> None:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as sim:
        conn, received = await open_bound(sim)
        resp = await conn.send_request(SubmitSm(destination_addr="15551234567", registered_delivery=1,
                                                short_message=b"hi"))
        assert isinstance(resp, SubmitSmResp) and resp.command_status == 0 and resp.message_id
        assert await sim.wait_for(lambda: sim.stats.receipts_acked == 1, timeout=5)
        assert received[0].is_receipt
        await conn.unbind(timeout=2)
        assert conn.is_closed
        assert await sim.wait_for(lambda: sim.stats.unbinds == 1, timeout=2)


async def test_bind_with_wrong_password_raises_bind_error() -> None:
    async with SmscSimulator() as sim:
        with pytest.raises(BindError) as err:
            await open_bound(sim, password="nope")
        assert err.value.status in (0x0E, 0x0F)


async def test_window_is_never_exceeded_on_the_wire() -> None:
    async with SmscSimulator() as sim:
        sim.response_delay = 0.2
        conn, _ = await open_bound(sim, window=5)
        futures = []
        for _ in range(5):
            futures.append(conn.send_request(SubmitSm(destination_addr="1", short_message=b"x")))
        assert not conn.can_submit
        with pytest.raises(s.WindowFullError):
            conn.send_request(SubmitSm(destination_addr="1", short_message=b"x"))
        await asyncio.gather(*futures)
        assert conn.can_submit
        await conn.unbind(timeout=2)


async def test_enquire_link_keeps_an_idle_link_alive() -> None:
    async with SmscSimulator() as sim:
        conn, _ = await open_bound(sim, enquire_link_interval=0.1, response_timeout=1.0)
        assert await sim.wait_for(lambda: sim.stats.enquire_links >= 3, timeout=5)
        assert not conn.is_closed
        await conn.unbind(timeout=2)


async def test_unanswered_enquire_link_drops_the_link() -> None:
    async with SmscSimulator(SimulatorConfig(ignore_enquire_link=True)) as sim:
        conn, _ = await open_bound(sim, enquire_link_interval=0.1, response_timeout=0.3)
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert "enquire_link" in conn.close_reason


async def test_response_timeout_fails_the_future() -> None:
    async with SmscSimulator() as sim:
        sim.drop_next(1)
        conn, _ = await open_bound(sim, response_timeout=0.2)
        with pytest.raises(RequestTimeoutError):
            await conn.send_request(SubmitSm(destination_addr="1", short_message=b"x"))
        assert conn.session.in_flight == 0
        await conn.unbind(timeout=2)


async def test_abrupt_disconnect_fails_in_flight_requests() -> None:
    async with SmscSimulator() as sim:
        sim.response_delay = 1.0
        conn, _ = await open_bound(sim)
        fut = conn.send_request(SubmitSm(destination_addr="1", short_message=b"x"))
        await asyncio.sleep(0.05)
        sim.disconnect_all()
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(fut, 5)
        assert conn.is_closed


async def test_tls_bind_and_submit(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    async with SmscSimulator(SimulatorConfig(tls_cert=cert, tls_key=key)) as sim:
        context = ssl.create_default_context(cafile=cert)  # verifies the chain and the 127.0.0.1 name
        conn = await connect("127.0.0.1", sim.port, s.Session(), name="tls", on_request=lambda c, p: None,
                             ssl_context=context)
        await conn.bind(BindTransceiver(system_id="smsgw", password="secret"))
        resp = await conn.send_request(SubmitSm(destination_addr="15551234567", short_message=b"over TLS"))
        assert resp.command_status == 0 and sim.submits[0].text == "over TLS"
        await conn.unbind(timeout=2)
        # A client that does not trust the certificate never gets a session.
        with pytest.raises(ssl.SSLError):
            await connect("127.0.0.1", sim.port, s.Session(), name="tls", on_request=lambda c, p: None,
                          ssl_context=ssl.create_default_context())
