"""The simulator behaves like a real SMSC where the fault suite depends on it, so that "lost" counts only what
the gateway lost: receipts owed to a bind that is gone wait for the account's next bind (and only that
account's), unacknowledged receipts and MOs are sent again, and a stalled (half-open) connection accepts
exactly what it read. Driven by a raw SMPP client over loopback (bytes and the codec, no gateway code).
"""

from __future__ import annotations

import pytest
from raw_esme import RawClient, bound_client

from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.smpp.pdu import (
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    DeliverSm,
    EnquireLink,
    SubmitSmResp,
    Tag,
    _Bind,
)

pytestmark = pytest.mark.chaos

ACCOUNTS = {"smsgw": "secret", "other": "secret2"}


async def bound(sim: SmscSimulator, kind: type[_Bind] = BindTransceiver, system_id: str = "smsgw") -> RawClient:
    return await bound_client(sim, kind, system_id, ACCOUNTS[system_id])


def submit(esme: RawClient, text: str) -> int:
    """A marked submit_sm asking for a receipt."""
    return esme.submit(text, registered_delivery=1, destination_addr="12025550100")


def _config(**kw: float) -> SimulatorConfig:
    return SimulatorConfig(accounts=dict(ACCOUNTS), **kw)  # type: ignore[arg-type]


async def test_receipt_for_a_bind_that_is_gone_waits_for_the_same_account_to_bind_again() -> None:
    async with SmscSimulator(_config(receipt_delay=0.2)) as sim:
        esme = await bound(sim)
        submit(esme, "chaos receipt")
        resp = await esme.expect(SubmitSmResp)
        await esme.close(abort=True)  # gone (kill -9) before the receipt is due
        other = await bound(sim, BindReceiver, system_id="other")
        await other.silent(0.5)  # due by now, but never to another account
        assert sim.stats.receipts_sent == 0
        again = await bound(sim, BindReceiver)
        receipt = await again.expect(DeliverSm)
        assert receipt.is_receipt and receipt.tlv_str(Tag.RECEIPTED_MESSAGE_ID) == resp.message_id
        again.ack(receipt)
        await sim.wait_for(lambda: sim.stats.receipts_acked == 1, 2)
        await again.silent(0.3)  # acknowledged: not sent again
        await other.close()
        await again.close()


async def test_unacknowledged_receipt_is_sent_again_to_the_next_bind_after_a_kill() -> None:
    async with SmscSimulator(_config(receipt_delay=0.0, redelivery_delay=0.05)) as sim:
        esme = await bound(sim)
        submit(esme, "chaos unacked")
        await esme.expect(SubmitSmResp)
        first = await esme.expect(DeliverSm)
        await esme.close(abort=True)  # read, never acknowledged (not yet stored, then the process died)
        again = await bound(sim)
        second = await again.expect(DeliverSm)
        assert second.short_message == first.short_message
        again.ack(second)
        await sim.wait_for(lambda: sim.stats.receipts_acked == 1, 2)
        assert sim.receipts[0].attempts == 2
        await again.close()


async def test_unacknowledged_mo_is_sent_again_until_acknowledged_and_waits_for_a_bind() -> None:
    async with SmscSimulator(_config(deliver_timeout=0.3, redelivery_delay=0.05)) as sim:
        delivery = await sim.inject_mo("+12025550100", "12345", "chaos mo")  # nobody bound yet: it waits
        esme = await bound(sim)
        first = await esme.expect(DeliverSm)
        second = await esme.expect(DeliverSm, timeout=2)  # no deliver_sm_resp within 0.3 s: sent again
        assert second.short_message == first.short_message == b"chaos mo"
        assert second.sequence_number != first.sequence_number
        esme.ack(second)
        await sim.wait_for(lambda: delivery.acked, 2)
        await esme.silent(0.5)
        assert delivery.attempts == 2 and sim.stats.mos_acked == 1
        await esme.close()


async def test_stall_then_abort_accepts_only_what_was_read_before_it() -> None:
    async with SmscSimulator(_config(receipt_delay=0.0)) as sim:
        esme = await bound(sim)
        submit(esme, "chaos before")
        await esme.expect(SubmitSmResp)
        await esme.expect(DeliverSm)  # its receipt (left unacknowledged on purpose)
        assert sim.stall(0.6, then="abort") == 1
        submit(esme, "chaos during")
        esme.send(EnquireLink(sequence_number=esme.seq()))
        await esme.silent(0.4)  # no submit_sm_resp, no enquire_link_resp, no FIN: half-open
        assert await esme.read(2) is None  # then the connection is dropped
        assert [r.text for r in sim.submits] == ["chaos before"]  # never read, never accepted: no record
        again = await bound(sim, BindReceiver)
        receipt = await again.expect(DeliverSm)  # the unacknowledged one, on the next bind
        assert b"chaos before" in receipt.short_message
        again.ack(receipt)
        await again.silent(0.3)  # and nothing for the submit that was never read
        assert len(sim.receipts) == 1
        await again.close()


async def test_stall_then_resume_accepts_what_it_reads_and_other_links_keep_working() -> None:
    async with SmscSimulator(_config(receipt_delay=0.0, deliver_timeout=0.3, redelivery_delay=0.05)) as sim:
        stalled = await bound(sim, BindTransmitter)  # receipts then go to `fresh` only: deterministic
        sim.stall(0.8, then="resume")
        submit(stalled, "chaos during")
        # A fresh connection is not affected: the fault is that one link, as with a dead NAT entry.
        fresh = await bound(sim, BindReceiver)
        mo = await sim.inject_mo("+12025550100", "12345", "chaos mo")
        delivered = await fresh.expect(DeliverSm)
        assert delivered.short_message == b"chaos mo"
        fresh.ack(delivered)
        await sim.wait_for(lambda: mo.acked, 2)
        await stalled.silent(0.4)
        assert sim.submits == []
        resp = await stalled.expect(SubmitSmResp, timeout=2)  # it woke up: read, accepted, answered
        assert resp.command_status == 0 and [r.text for r in sim.submits] == ["chaos during"]
        receipt = await fresh.expect(DeliverSm)
        assert b"chaos during" in receipt.short_message
        fresh.ack(receipt)
        await sim.wait_for(lambda: sim.stats.receipts_acked == 1, 2)
        await stalled.close()
        await fresh.close()


async def test_deliver_sm_in_flight_on_a_stalled_link_is_resent_on_another_bind() -> None:
    async with SmscSimulator(_config(deliver_timeout=0.3, redelivery_delay=0.05)) as sim:
        stalled = await bound(sim, BindReceiver)
        mo = await sim.inject_mo("+12025550100", "12345", "chaos mo")
        first = await stalled.expect(DeliverSm)
        sim.stall(5.0)
        stalled.ack(first)  # written into the dead path: the SMSC never reads it
        other = await bound(sim, BindReceiver)
        second = await other.expect(DeliverSm, timeout=2)  # after deliver_timeout, on the live bind
        assert second.short_message == first.short_message and not mo.acked
        other.ack(second)
        await sim.wait_for(lambda: mo.acked, 2)
        assert mo.attempts == 2
        assert sim.end_stall("abort") == 1
        await stalled.close()
        await other.close()


def test_stall_arguments_are_checked() -> None:
    sim = SmscSimulator(_config())
    with pytest.raises(ValueError, match="then"):
        sim.stall(1.0, then="later")
    with pytest.raises(ValueError, match="seconds"):
        sim.stall(-1.0)
