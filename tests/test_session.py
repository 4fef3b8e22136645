"""Sans-IO session tests: bytes in, events out, timers driven by an explicit `now`."""

from __future__ import annotations

import pytest

from gateway.smpp import codec
from gateway.smpp import session as s
from gateway.smpp.pdu import (
    BindTransceiver,
    BindTransceiverResp,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
)


def frames(data: bytes) -> list:
    return [codec.decode(f) for f in codec.Framer().feed(data)]


def bound_session(window: int = 3, **kw: float) -> s.Session:
    sess = s.Session(window=window, **kw)
    sess.bind(BindTransceiver(system_id="esme", password="pw"), now=0.0)
    (bind,) = frames(sess.data_to_send())
    events = sess.receive_data(codec.encode(BindTransceiverResp(sequence_number=bind.sequence_number,
                                                                system_id="smsc")), now=0.0)
    assert events == [s.Bound("smsc", None)]
    assert sess.state is s.State.BOUND_TRX
    return sess


def test_bind_sends_bind_transceiver_and_password_is_not_in_repr() -> None:
    sess = s.Session()
    sess.bind(BindTransceiver(system_id="esme", password="hunter2"), now=0.0)
    (pdu,) = frames(sess.data_to_send())
    assert isinstance(pdu, BindTransceiver) and pdu.password == "hunter2"
    assert "hunter2" not in repr(pdu)
    assert sess.state is s.State.BINDING


def test_bind_refused_closes_session() -> None:
    sess = s.Session()
    seq = sess.bind(BindTransceiver(system_id="esme", password="bad"), now=0.0)
    events = sess.receive_data(codec.encode(BindTransceiverResp(sequence_number=seq, command_status=0x0E)), 0.0)
    assert isinstance(events[0], s.BindFailed) and events[0].status == 0x0E
    assert sess.state is s.State.CLOSED


def test_bind_timeout() -> None:
    sess = s.Session(bind_timeout=10)
    sess.bind(BindTransceiver(system_id="esme", password="pw"), now=0.0)
    assert sess.next_deadline() == 10.0
    assert sess.handle_timer(9.9) == []
    events = sess.handle_timer(10.0)
    assert isinstance(events[0], s.BindFailed) and events[0].status == -1


def test_window_is_never_exceeded_and_frees_on_response() -> None:
    sess = bound_session(window=2)
    a = sess.send_request(SubmitSm(destination_addr="1"), 0.0, "a")
    sess.send_request(SubmitSm(destination_addr="2"), 0.0, "b")
    assert sess.window_free == 0
    with pytest.raises(s.WindowFullError):
        sess.send_request(SubmitSm(destination_addr="3"), 0.0, "c")
    events = sess.receive_data(codec.encode(SubmitSmResp(sequence_number=a, message_id="m1")), 0.1)
    assert events == [s.ResponseReceived(0x04, SubmitSmResp(sequence_number=a, message_id="m1"), "a")]
    assert sess.window_free == 1


def test_responses_out_of_order_match_by_sequence_number() -> None:
    sess = bound_session(window=5)
    seqs = [sess.send_request(SubmitSm(destination_addr=str(i)), 0.0, i) for i in range(3)]
    data = b"".join(codec.encode(SubmitSmResp(sequence_number=q, message_id=f"id{q}")) for q in reversed(seqs))
    events = sess.receive_data(data, 0.0)
    assert [e.context for e in events] == [2, 1, 0]


def test_response_timeout_frees_the_slot() -> None:
    sess = bound_session(window=1, response_timeout=5, late_grace=0, probe_overdue=False)
    seq = sess.send_request(SubmitSm(destination_addr="1"), 1.0, "ctx")
    assert sess.next_deadline() == 6.0
    events = sess.handle_timer(6.0)
    assert events == [s.RequestTimedOut(0x04, seq, "ctx")]
    assert sess.window_free == 1
    # Without a grace, a late response is dropped as unmatched, not delivered twice.
    late = sess.receive_data(codec.encode(SubmitSmResp(sequence_number=seq, message_id="x")), 7.0)
    assert isinstance(late[0], s.ProtocolViolation) and not late[0].fatal


def _late_script(steps: list[tuple[float, str]], grace: float = 5.0) -> list[list[str]]:
    """Run a submit sent at t=1 (timeout 5, so overdue at 6) through timer ticks ('tick'), its response
    ('resp'), a lost link ('lost') or a second submit ('send'); return the event names of each step."""
    sess = bound_session(window=1, response_timeout=5, late_grace=grace, probe_overdue=False)
    seq = sess.send_request(SubmitSm(destination_addr="1"), 1.0, "ctx")
    out: list[list[str]] = []
    for now, step in steps:
        if step == "tick":
            events = sess.handle_timer(now)
        elif step == "resp":
            events = sess.receive_data(codec.encode(SubmitSmResp(sequence_number=seq, message_id="m1")), now)
        elif step == "lost":
            events = sess.connection_lost()
        elif step == "send":
            sess.send_request(SubmitSm(destination_addr="2"), now, "second")
            events = []
        else:
            raise AssertionError(step)
        out.append([f"{type(e).__name__}:{getattr(e, 'context', '')}" for e in events])
    return out


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # in time: an ordinary response
        ([(3.0, "resp")], [["ResponseReceived:ctx"]]),
        # past the timeout: overdue (slot free), then the late answer is delivered with the original context
        ([(6.0, "tick"), (8.0, "resp")], [["RequestOverdue:ctx"], ["ResponseReceived:ctx"]]),
        # the grace runs out: the timeout is reported as before, and a later answer matches nothing
        ([(6.0, "tick"), (11.0, "tick"), (12.0, "resp")],
         [["RequestOverdue:ctx"], ["RequestTimedOut:ctx"], ["ProtocolViolation:"]]),
        # a timer that fires long after both deadlines reports both at once, in order
        ([(20.0, "tick")], [["RequestOverdue:ctx", "RequestTimedOut:ctx"]]),
        # the link drops during the grace: the timeout is reported at once
        ([(6.0, "tick"), (7.0, "lost")], [["RequestOverdue:ctx"], ["RequestTimedOut:ctx"]]),
        # the freed slot takes a new submit while the first one is still awaited late
        ([(6.0, "tick"), (6.5, "send"), (8.0, "resp")], [["RequestOverdue:ctx"], [], ["ResponseReceived:ctx"]]),
    ],
)
def test_late_submit_sm_resp_within_the_grace_is_delivered(
    steps: list[tuple[float, str]], expected: list[list[str]]
) -> None:
    assert _late_script(steps) == expected


def test_late_requests_keep_their_sequence_numbers_and_deadlines() -> None:
    sess = bound_session(window=1, response_timeout=5, late_grace=3, probe_overdue=False)
    seq = sess.send_request(SubmitSm(destination_addr="1"), 1.0, "ctx")
    sess.handle_timer(6.0)
    assert (sess.window_free, sess.in_flight, sess.awaiting) == (1, 0, 1)
    assert sess.next_deadline() == 9.0  # end of the grace (the keep-alive is later)
    sess._next_seq = seq  # a wrap must not hand out a sequence number that is still awaited
    assert sess.send_request(SubmitSm(destination_addr="2"), 6.0, "b") != seq
    # Paused reading shifts the grace like any deadline: an unread answer is not a missing one.
    sess.pause_timers(7.0)
    assert sess.handle_timer(100.0) == []
    sess.resume_timers(10.0)
    assert sess.handle_timer(11.9) == []
    assert sess.handle_timer(12.0) == [s.RequestTimedOut(0x04, seq, "ctx")]  # 9 + 3 paused
    assert [e.context for e in sess.handle_timer(14.0)] == ["b"]  # overdue: 6 + 5 + 3 paused


def test_enquire_link_sent_when_idle_and_dead_link_detected() -> None:
    sess = bound_session(enquire_link_interval=30, response_timeout=5)
    sess.data_to_send()
    assert sess.next_deadline() == 30.0
    assert sess.handle_timer(30.0) == []
    (el,) = frames(sess.data_to_send())
    assert isinstance(el, EnquireLink)
    events = sess.handle_timer(35.0)
    assert isinstance(events[-1], s.LinkDead)
    assert sess.state is s.State.CLOSED


def test_enquire_link_resp_keeps_link_alive() -> None:
    sess = bound_session(enquire_link_interval=30, response_timeout=5)
    sess.handle_timer(30.0)
    (el,) = frames(sess.data_to_send())
    assert sess.receive_data(codec.encode(EnquireLinkResp(sequence_number=el.sequence_number)), 31.0) == []
    assert sess.handle_timer(36.0) == []
    assert sess.is_bound


def test_peer_enquire_link_and_unbind_are_answered() -> None:
    sess = bound_session()
    sess.receive_data(codec.encode(EnquireLink(sequence_number=77)), 0.0)
    assert frames(sess.data_to_send()) == [EnquireLinkResp(sequence_number=77)]
    events = sess.receive_data(codec.encode(Unbind(sequence_number=78)), 0.0)
    assert events[-1] == s.Unbound(by_peer=True)
    assert frames(sess.data_to_send()) == [UnbindResp(sequence_number=78)]


def test_deliver_sm_is_an_event_and_answered_only_by_the_caller() -> None:
    sess = bound_session()
    mo = DeliverSm(sequence_number=9, source_addr="15551234567", destination_addr="12345", short_message=b"STOP")
    events = sess.receive_data(codec.encode(mo), 0.0)
    assert events == [s.RequestReceived(mo)]
    assert sess.data_to_send() == b""  # no automatic ack: stored first, then answered
    sess.send_response(DeliverSmResp(sequence_number=9))
    assert frames(sess.data_to_send()) == [DeliverSmResp(sequence_number=9)]


def test_unknown_command_gets_generic_nack_and_session_survives() -> None:
    sess = bound_session()
    raw = codec.HEADER.pack(16, 0x00000999, 0, 5)
    events = sess.receive_data(raw, 0.0)
    assert isinstance(events[0], s.ProtocolViolation) and not events[0].fatal
    assert frames(sess.data_to_send()) == [GenericNack(sequence_number=5, command_status=0x03)]
    assert sess.is_bound


def test_bad_command_length_is_fatal_with_generic_nack() -> None:
    sess = bound_session()
    events = sess.receive_data(b"\x00\x00\x00\x05garbage-garbage", 0.0)
    assert isinstance(events[0], s.ProtocolViolation) and events[0].fatal
    assert sess.state is s.State.CLOSED
    (nack,) = frames(sess.data_to_send())
    assert isinstance(nack, GenericNack) and nack.command_status == 0x02


def test_generic_nack_fails_the_matching_request() -> None:
    sess = bound_session()
    seq = sess.send_request(SubmitSm(destination_addr="1"), 0.0, "ctx")
    events = sess.receive_data(codec.encode(GenericNack(sequence_number=seq, command_status=0x03)), 0.0)
    assert events == [s.ResponseReceived(0x04, GenericNack(sequence_number=seq, command_status=0x03), "ctx")]


def test_connection_lost_times_out_pending_submits() -> None:
    sess = bound_session()
    sess.send_request(SubmitSm(destination_addr="1"), 0.0, "a")
    events = sess.connection_lost()
    assert [e.context for e in events] == ["a"]
    assert sess.window_free == 0 and sess.state is s.State.CLOSED


def test_sequence_numbers_wrap_to_one() -> None:
    sess = bound_session(window=10)
    sess._next_seq = s.MAX_SEQUENCE
    assert sess.send_request(SubmitSm(destination_addr="1"), 0.0) == s.MAX_SEQUENCE
    assert sess.send_request(SubmitSm(destination_addr="1"), 0.0) == 1


def test_submit_before_bind_raises() -> None:
    with pytest.raises(s.NotBoundError):
        s.Session().send_request(SubmitSm(destination_addr="1"), 0.0)


def test_clean_unbind() -> None:
    sess = bound_session()
    sess.data_to_send()
    sess.unbind(0.0)
    (u,) = frames(sess.data_to_send())
    assert isinstance(u, Unbind)
    assert sess.receive_data(codec.encode(UnbindResp(sequence_number=u.sequence_number)), 0.1)[-1] == s.Unbound(
        by_peer=False
    )


def test_response_sharing_a_read_with_garbage_is_delivered_before_the_link_closes() -> None:
    sess = bound_session()
    seq = sess.send_request(SubmitSm(destination_addr="1"), 0.0, "ctx")
    data = codec.encode(SubmitSmResp(sequence_number=seq, message_id="m1")) + b"\x00\x00\x00\x05junk-junk-junk!!"
    events = sess.receive_data(data, 0.0)
    assert isinstance(events[0], s.ResponseReceived) and events[0].context == "ctx"
    assert isinstance(events[1], s.ProtocolViolation) and events[1].fatal
    assert sess.state is s.State.CLOSED
