"""SMPP 3.4 ESME session state machine, without I/O.

Rule of this module: it never reads a clock and never touches a socket. Bytes go in through
`receive_data(data, now)`, events come out as a list; requests go out through `send_request(pdu, now)`
and the bytes to write accumulate in `data_to_send()`. Timers (response timeouts, bind timeout,
enquire_link keep-alive and probes) are driven by `handle_timer(now)` at `next_deadline()`; only timers
write enquire_link. The asyncio layer in `client.py` owns the socket and the clock. While the caller has
paused reading (`pause_timers`), no timer runs: an unread response is not a late one, and resuming shifts every
deadline by the time spent paused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.smpp import codec
from gateway.smpp.pdu import (
    RESPONSE_FOR,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CommandId,
    DataSm,
    DeliverSm,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Pdu,
    Status,
    Unbind,
    UnbindResp,
    UnknownPdu,
    _Bind,
    status_name,
)

if TYPE_CHECKING:
    from gateway.metrics import PduCounts

MAX_SEQUENCE = 0x7FFFFFFF


class State(enum.Enum):
    OPEN = "open"  # TCP up, not bound
    BINDING = "binding"
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    UNBINDING = "unbinding"
    CLOSED = "closed"


BOUND_STATES = frozenset({State.BOUND_TX, State.BOUND_RX, State.BOUND_TRX})
_BIND_STATE = {
    CommandId.BIND_TRANSMITTER: State.BOUND_TX,
    CommandId.BIND_RECEIVER: State.BOUND_RX,
    CommandId.BIND_TRANSCEIVER: State.BOUND_TRX,
}
# Requests that occupy a slot of the submit window. enquire_link and unbind must always get through.
_WINDOWED = frozenset({CommandId.SUBMIT_SM, CommandId.DATA_SM})


class SessionError(codec.SmppError):
    """A local misuse of the session (sending while not bound, window full)."""


class NotBoundError(SessionError):
    pass


class WindowFullError(SessionError):
    pass


# -- events -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    pass


@dataclass(frozen=True, slots=True)
class Bound(Event):
    system_id: str  # the SMSC's system_id from bind_resp
    interface_version: int | None


@dataclass(frozen=True, slots=True)
class BindFailed(Event):
    status: int  # command_status of bind_resp, or -1 for a timeout
    reason: str


@dataclass(frozen=True, slots=True)
class ResponseReceived(Event):
    """The answer to one of our requests (generic_nack included); `context` is what the caller passed."""

    request_command_id: int
    response: Pdu
    context: Any


@dataclass(frozen=True, slots=True)
class RequestTimedOut(Event):
    request_command_id: int
    sequence_number: int
    context: Any


@dataclass(frozen=True, slots=True)
class RequestOverdue(Event):
    """No response within the response timeout: the window slot is free again, but the sequence number is kept
    for `late_grace` seconds. A response within the grace arrives as `ResponseReceived` with this context (the
    SMSC did take the request: record it, do not send it again); after the grace comes `RequestTimedOut`.

    With `Session(probe_overdue=True)`, only once the link is known to be alive: an overdue request the SMSC
    may never have read (nothing it sent since proves it read that far) is *suspect* and keeps its slot while
    an enquire_link probes the link; the probe's answer (or any answer to a later request) releases it as
    overdue, no answer within the response timeout ends the link (`LinkDead`). So a half-open link never gets
    more than one window of submits."""

    request_command_id: int
    sequence_number: int
    context: Any


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """deliver_sm / data_sm from the SMSC. The caller answers with `send_response` when it is safe."""

    pdu: DeliverSm | DataSm


@dataclass(frozen=True, slots=True)
class Unbound(Event):
    by_peer: bool


@dataclass(frozen=True, slots=True)
class LinkDead(Event):
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolViolation(Event):
    """The peer sent something we could not use. `fatal` means the connection must close now."""

    reason: str
    fatal: bool


@dataclass(slots=True)
class _Pending:
    command_id: int
    deadline: float
    context: Any


class Session:
    """One SMPP connection from the ESME side."""

    def __init__(
        self,
        *,
        window: int = 10,
        response_timeout: float = 30.0,
        late_grace: float | None = None,
        bind_timeout: float = 10.0,
        enquire_link_interval: float = 30.0,
        pdu_counts: PduCounts | None = None,
        probe_overdue: bool = True,
    ) -> None:
        """`probe_overdue`: a submit past its response timeout keeps its window slot until the SMSC is known to
        have read it, and an enquire_link probes the link at once (see `RequestOverdue`), so that a half-open link
        gets one window, not one per timeout. False: the slot is freed at the timeout whatever the link's state
        (resends one window per timeout into a dead link; kept for the sans-IO tests of the plain timeout)."""
        self.window = window
        # PDUs by command_id, sent and received (metrics.PduCounts of the bind: kept across reconnects).
        self._sent: dict[int, int] = pdu_counts.sent if pdu_counts is not None else {}
        self._received: dict[int, int] = pdu_counts.received if pdu_counts is not None else {}
        self.response_timeout = response_timeout
        # A submit_sm_resp may come after its timeout on a link that is fine (a slow SMSC): keep its sequence
        # number this long more (default: one more response_timeout) so the answer is used, not thrown away.
        self.late_grace = response_timeout if late_grace is None else late_grace
        self.bind_timeout = bind_timeout
        self.enquire_link_interval = enquire_link_interval
        self.state = State.OPEN
        self._framer = codec.Framer()
        self._out = bytearray()
        self._next_seq = 1
        # Insertion order == deadline order for one timeout value, so the oldest pending request is first.
        self._pending: dict[int, _Pending] = {}
        # Windowed requests past their response timeout, within the grace (deadline = end of the grace); their
        # window slot is already free. Insertion order == deadline order here too.
        self._late: dict[int, _Pending] = {}
        self.probe_overdue = probe_overdue
        # Windowed requests past their response timeout that nothing proves the SMSC has read (the link may be
        # half-open): they keep their window slot, so a dead link is never fed more than one window, and an
        # enquire_link probes at once. Insertion order == deadline order. `_proven`: every request whose deadline
        # is at most this was read by the SMSC (it answered an enquire_link, or a request, sent after them).
        self._suspect: dict[int, _Pending] = {}
        self._proven = float("-inf")
        self._windowed = 0
        self._last_received = 0.0
        self._enquire_seq: int | None = None
        self._bind_seq: int | None = None
        self._paused_at: float | None = None

    # -- properties ----------------------------------------------------------------------------------

    @property
    def framer(self) -> codec.Framer:
        """The framer (read it, never feed it): the connection looks at where the next frame starts while reading
        is paused (client.py, enquire_links answered during a pause)."""
        return self._framer

    @property
    def is_bound(self) -> bool:
        return self.state in BOUND_STATES

    @property
    def can_transmit(self) -> bool:
        return self.state in (State.BOUND_TX, State.BOUND_TRX)

    @property
    def in_flight(self) -> int:
        """Windowed requests (submit_sm, data_sm) awaiting their response."""
        return self._windowed

    @property
    def awaiting(self) -> int:
        """Windowed requests whose outcome is still open: in the window, or late within the grace."""
        return self._windowed + len(self._late)

    @property
    def window_free(self) -> int:
        return max(0, self.window - self._windowed) if self.can_transmit else 0

    def pause_timers(self, now: float) -> None:
        """Reading is paused by the caller: responses sit unread in the socket, so neither response timeouts
        nor the enquire_link keep-alive may run until `resume_timers`."""
        if self._paused_at is None:
            self._paused_at = now

    def resume_timers(self, now: float) -> None:
        """Reading resumes: every pending deadline moves by the time spent paused, the keep-alive restarts."""
        if self._paused_at is None:
            return
        shift = max(0.0, now - self._paused_at)
        self._paused_at = None
        for p in self._pending.values():  # the same shift for all keeps the insertion == deadline order
            p.deadline += shift
        for p in self._late.values():
            p.deadline += shift
        for p in self._suspect.values():
            p.deadline += shift
        self._proven += shift  # compared with the deadlines above: moves with them
        self._last_received += shift  # the quiet time we caused is not the link's

    def _emit(self, pdu: Pdu, sequence_number: int | None = None) -> None:
        """Encode `pdu` onto the output (and count it), numbered `sequence_number` when given."""
        self._out += codec.encode(pdu, sequence_number)
        cid = pdu.command_id
        self._sent[cid] = self._sent.get(cid, 0) + 1

    def data_to_send(self) -> bytes:
        """Bytes queued for the socket since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- requests ------------------------------------------------------------------------------------

    def _sequence(self) -> int:
        seq = self._next_seq
        self._next_seq = 1 if seq >= MAX_SEQUENCE else seq + 1
        # Only after a wrap with a very old request still awaited.
        while seq in self._pending or seq in self._late or seq in self._suspect:
            seq = self._next_seq
            self._next_seq = 1 if seq >= MAX_SEQUENCE else seq + 1
        return seq

    def bind(self, pdu: _Bind, now: float) -> int:
        """Queue a bind request; the outcome arrives as `Bound` or `BindFailed`."""
        if self.state is not State.OPEN:
            raise SessionError(f"bind in state {self.state.value}")
        if not isinstance(pdu, BindTransmitter | BindReceiver | BindTransceiver):
            raise SessionError("not a bind PDU")
        seq = self._sequence()
        self._emit(pdu, seq)
        self._pending[seq] = _Pending(pdu.command_id, now + self.bind_timeout, None)
        self._bind_seq = seq
        self._last_received = now
        self.state = State.BINDING
        return seq

    def send_request(self, pdu: Pdu, now: float, context: Any = None) -> int:
        """Queue a request (submit_sm, data_sm, ...) with a fresh sequence number; return that number.

        Raises:
            NotBoundError: the session cannot transmit now.
            WindowFullError: the submit window is full.
            PduEncodeError: the PDU does not encode.
        """
        cid = pdu.command_id
        if cid in _WINDOWED:
            if not self.can_transmit:
                raise NotBoundError(f"cannot send {CommandId(cid).name.lower()} in state {self.state.value}")
            if self._windowed >= self.window:
                raise WindowFullError(f"window of {self.window} is full")
        elif not self.is_bound:
            raise NotBoundError(f"cannot send {CommandId(cid).name.lower()} in state {self.state.value}")
        seq = self._sequence()
        # Emit (encode) before recording: an encode error must leave no phantom pending request.
        self._emit(pdu, seq)
        self._pending[seq] = _Pending(cid, now + self.response_timeout, context)
        if cid in _WINDOWED:
            self._windowed += 1
        return seq

    def send_response(self, pdu: Pdu) -> None:
        """Queue a response to a request from the peer (deliver_sm_resp, data_sm_resp)."""
        if self.state is State.CLOSED:
            return
        self._emit(pdu)

    def unbind(self, now: float) -> None:
        """Start a clean unbind; `Unbound` follows (or a timeout, then the caller closes)."""
        if not self.is_bound:
            self.state = State.CLOSED
            return
        seq = self._sequence()
        self._emit(Unbind(sequence_number=seq))
        self._pending[seq] = _Pending(CommandId.UNBIND, now + min(self.response_timeout, 5.0), None)
        self.state = State.UNBINDING

    def connection_lost(self) -> list[Event]:
        """The socket is gone: every pending request times out now, in order (late ones first: older)."""
        events: list[Event] = [RequestTimedOut(p.command_id, seq, p.context) for seq, p in self._late.items()]
        self._late.clear()
        events += [RequestTimedOut(p.command_id, seq, p.context) for seq, p in self._suspect.items()]
        self._suspect.clear()
        events += [
            RequestTimedOut(p.command_id, seq, p.context)
            for seq, p in self._pending.items()
            if p.command_id in _WINDOWED
        ]
        self._pending.clear()
        self._windowed = 0
        self.state = State.CLOSED
        return events

    # -- incoming ------------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the socket; return the events they produce, in order."""
        if self.state is State.CLOSED:
            return []
        self._last_received = now
        events: list[Event] = []
        try:
            frames = self._framer.feed(data)
        except codec.PduDecodeError as exc:
            self._emit(GenericNack(sequence_number=exc.sequence_number, command_status=exc.status))
            self.state = State.CLOSED
            return [ProtocolViolation(str(exc), fatal=True)]
        for frame in frames:
            try:
                pdu = codec.decode(frame)
            except codec.PduDecodeError as exc:
                self._received[-1] = self._received.get(-1, 0) + 1  # counted as command 'other'
                events.append(self._answer_decode_error(exc))
                if exc.fatal:
                    self.state = State.CLOSED
                    break
                continue
            cid = -1 if isinstance(pdu, UnknownPdu) else pdu.command_id
            received = self._received
            received[cid] = received.get(cid, 0) + 1
            self._handle_pdu(pdu, now, events)
            if self.state is State.CLOSED:
                break
        if self._framer.failed and self.state is not State.CLOSED:
            events.extend(self.receive_data(b"", now))  # raise the framing error held back behind good frames
        return events

    def _answer_decode_error(self, exc: codec.PduDecodeError) -> Event:
        cid = exc.command_id
        if cid & 0x80000000:
            # A broken response: never answer a response; fail nothing (the request times out).
            return ProtocolViolation(f"undecodable response: {exc}", fatal=exc.fatal)
        resp_cls = RESPONSE_FOR.get(cid)
        if resp_cls is not None and not exc.fatal:
            self._emit(resp_cls(sequence_number=exc.sequence_number, command_status=exc.status))
        else:
            self._emit(GenericNack(sequence_number=exc.sequence_number, command_status=exc.status))
        return ProtocolViolation(f"undecodable request: {exc}", fatal=exc.fatal)

    def _handle_pdu(self, pdu: Pdu, now: float, events: list[Event]) -> None:
        if isinstance(pdu, UnknownPdu):
            # alert_notification has no response PDU and is never answered (spec §4.12.1): a nack would be a lie.
            if not pdu.is_response and pdu.raw_command_id != CommandId.ALERT_NOTIFICATION:
                self._emit(
                    GenericNack(sequence_number=pdu.sequence_number, command_status=Status.RINVCMDID)
                )
            events.append(ProtocolViolation(f"unknown command_id 0x{pdu.raw_command_id:08X}", fatal=False))
            return
        if pdu.is_response:
            self._handle_response(pdu, events)
            return
        cid = pdu.command_id
        if cid == CommandId.ENQUIRE_LINK:
            self._emit(EnquireLinkResp(sequence_number=pdu.sequence_number))
        elif cid == CommandId.UNBIND:
            self._emit(UnbindResp(sequence_number=pdu.sequence_number))
            events.extend(self.connection_lost())
            events.append(Unbound(by_peer=True))
        elif cid in (CommandId.DELIVER_SM, CommandId.DATA_SM):
            if self.state in (State.BOUND_RX, State.BOUND_TRX) or (
                cid == CommandId.DATA_SM and self.state is State.BOUND_TX
            ):
                events.append(RequestReceived(pdu))  # type: ignore[arg-type]
            else:
                resp_cls = RESPONSE_FOR[cid]
                self._emit(
                    resp_cls(sequence_number=pdu.sequence_number, command_status=Status.RINVBNDSTS)
                )
                events.append(ProtocolViolation(f"{CommandId(cid).name.lower()} in state {self.state.value}",
                                                fatal=False))
        elif cid == CommandId.OUTBIND:
            # We always dial out ourselves; an outbind on our own connection is meaningless.
            events.append(ProtocolViolation("outbind on an ESME-initiated connection ignored", fatal=False))
        else:
            resp_cls = RESPONSE_FOR.get(cid, GenericNack)
            status = Status.RINVBNDSTS if resp_cls is not GenericNack else Status.RINVCMDID
            self._emit(resp_cls(sequence_number=pdu.sequence_number, command_status=status))
            events.append(ProtocolViolation(f"unexpected request {CommandId(cid).name.lower()}", fatal=False))

    def _handle_response(self, pdu: Pdu, events: list[Event]) -> None:
        seq = pdu.sequence_number
        pending = self._pending.pop(seq, None)
        if pending is None and self._suspect:
            pending = self._suspect.pop(seq, None)  # overdue but still holding its slot: handled as in time
        if pending is None:
            late = self._late.pop(seq, None)
            if late is not None:  # after its timeout, within the grace: the SMSC has it; its slot is free already
                if not (isinstance(pdu, GenericNack) or pdu.command_id == late.command_id | 0x80000000):
                    events.append(ProtocolViolation(
                        f"response 0x{pdu.command_id:08X} to request 0x{late.command_id:08X} seq {seq}", fatal=False))
                events.append(ResponseReceived(late.command_id, pdu, late.context))
                return
            events.append(ProtocolViolation(f"response 0x{pdu.command_id:08X} seq {seq} matches no request",
                                            fatal=False))
            return
        if pending.command_id in _WINDOWED:
            self._windowed -= 1
            if self._suspect and pending.deadline > self._proven:
                self._proven = pending.deadline  # sent after the suspects: the SMSC read them (TCP keeps order)
        if isinstance(pdu, GenericNack) or pdu.command_id == pending.command_id | 0x80000000:
            pass
        else:
            events.append(ProtocolViolation(
                f"response 0x{pdu.command_id:08X} to request 0x{pending.command_id:08X} seq {seq}", fatal=False))
        if seq == self._bind_seq:
            self._bind_seq = None
            if pdu.command_status == 0 and not isinstance(pdu, GenericNack):
                self.state = _BIND_STATE[CommandId(pending.command_id)]
                events.append(Bound(getattr(pdu, "system_id", ""),
                                    getattr(pdu, "tlv_int", lambda _t: None)(0x0210)))
            else:
                self.state = State.CLOSED
                events.append(BindFailed(pdu.command_status, f"bind refused: {status_name(pdu.command_status)}"))
            return
        if seq == self._enquire_seq:
            self._enquire_seq = None
            # Everything sent before this enquire_link was read: suspects are released by the next timer run.
            self._proven = max(self._proven, pending.deadline)
            return
        if pending.command_id == CommandId.UNBIND:
            events.extend(self.connection_lost())
            events.append(Unbound(by_peer=False))
            return
        events.append(ResponseReceived(pending.command_id, pdu, pending.context))

    # -- timers --------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `handle_timer` must next run, or None when nothing is armed."""
        if self.state is State.CLOSED or self._paused_at is not None:
            return None
        deadline: float | None = None
        if self._pending:
            deadline = next(iter(self._pending.values())).deadline
            if self._enquire_seq is not None or self._bind_seq is not None:
                # Those use other timeouts than submits: look at every pending entry only then (rare).
                deadline = min(p.deadline for p in self._pending.values())
        if self._late:
            late = next(iter(self._late.values())).deadline
            deadline = late if deadline is None else min(deadline, late)
        if self._suspect:
            first = next(iter(self._suspect.values())).deadline  # in the past: due at once
            if first <= self._proven or (self._enquire_seq is None and self.is_bound):
                deadline = first if deadline is None else min(deadline, first)  # release them, or probe
        if self.is_bound and self._enquire_seq is None:
            keepalive = self._last_received + self.enquire_link_interval
            deadline = keepalive if deadline is None else min(deadline, keepalive)
        return deadline

    def handle_timer(self, now: float) -> list[Event]:
        """Expire timed-out requests and send enquire_link when the link has been quiet."""
        events: list[Event] = []
        if self.state is State.CLOSED or self._paused_at is not None:
            return events
        expired: list[int] = []
        for seq, p in self._pending.items():
            if p.deadline > now:
                if self._enquire_seq is None and self._bind_seq is None:
                    break
                continue
            expired.append(seq)
        for seq in expired:
            p = self._pending.pop(seq)
            if seq == self._bind_seq:
                self._bind_seq = None
                self.state = State.CLOSED
                events.append(BindFailed(-1, f"no bind response within {self.bind_timeout:g} s"))
                return events
            if seq == self._enquire_seq:
                self._enquire_seq = None
                self.state = State.CLOSED
                events.extend(self.connection_lost())
                events.append(LinkDead(f"no enquire_link_resp within {self.response_timeout:g} s"))
                return events
            if p.command_id == CommandId.UNBIND:
                events.extend(self.connection_lost())
                events.append(Unbound(by_peer=False))
                return events
            if p.command_id in _WINDOWED:
                if self._suspect or (self.probe_overdue and p.deadline > self._proven):
                    # Nothing since proves the SMSC read it: the link may be dead. Keep the slot (no new submit
                    # goes into a link that may swallow it) until a probe answers. Behind earlier suspects too,
                    # so that they are released in order.
                    self._suspect[seq] = p
                    continue
                self._windowed -= 1
                self._overdue(seq, p, events)
                continue
            events.append(RequestTimedOut(p.command_id, seq, p.context))
        if self._suspect:
            self._release_proven(events)
            if self._suspect and self._enquire_seq is None and self.is_bound:
                self._send_enquire(now)  # the probe: its answer releases them, its timeout is LinkDead
        over = [seq for seq, p in self._late.items() if p.deadline <= now]
        for seq in over:
            p = self._late.pop(seq)
            events.append(RequestTimedOut(p.command_id, seq, p.context))
        if (
            self.is_bound
            and self._enquire_seq is None
            and now - self._last_received >= self.enquire_link_interval
        ):
            self._send_enquire(now)
        return events

    def _send_enquire(self, now: float) -> None:
        """enquire_link, as keep-alive or as probe: its answer proves the SMSC read all we sent before it."""
        seq = self._sequence()
        self._emit(EnquireLink(sequence_number=seq))
        self._pending[seq] = _Pending(CommandId.ENQUIRE_LINK, now + self.response_timeout, None)
        self._enquire_seq = seq

    def _overdue(self, seq: int, p: _Pending, events: list[Event]) -> None:
        """A windowed request past its timeout on a live link (its slot already freed): late, or timed out."""
        if self.late_grace > 0:
            # The window moves on, but the answer is still listened for: the SMSC has the request.
            p.deadline += self.late_grace
            self._late[seq] = p
            events.append(RequestOverdue(p.command_id, seq, p.context))
        else:
            events.append(RequestTimedOut(p.command_id, seq, p.context))

    def _release_proven(self, events: list[Event]) -> None:
        """Suspects the SMSC is now known to have read are only late: free their slots (oldest first)."""
        while self._suspect:
            seq, p = next(iter(self._suspect.items()))
            if p.deadline > self._proven:
                break
            del self._suspect[seq]
            self._windowed -= 1
            self._overdue(seq, p, events)
