"""SMSC simulator: an SMPP 3.4 server for the tests, the demo, the benchmark and ``smsgw simulate-smsc``.

Rule of this module: it must keep up with the gateway at benchmark rates (>= 6,000 submit_sm/s with
receipts), so every connection is a plain `asyncio.Protocol` whose writes are batched into one
``transport.write`` per event-loop tick, and everything that happens *later* (held-back responses,
receipts, redeliveries, deliver_sm_resp timeouts) sits in one heap or time-ordered deque drained by a
single periodic task: never one ``call_later`` per message.

It behaves like a strict but ordinary SMSC (reference §7 legal states, generic_nack rules, receipts in
the Appendix B text form plus TLVs, at-least-once deliver_sm) and injects faults on demand from a test
while it runs (`fail_next`, `drop_next`, `disconnect_after`, `send_malformed`, `response_delay`, `stall`, ...).
A misbehaving connection is logged and closed; it never takes the server down.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Final, cast

from gateway.smpp.codec import HEADER, Framer, PduDecodeError, PduEncodeError, decode, encode, is_response_id
from gateway.smpp.gsm import DC_GSM7, DC_IA5, DC_LATIN1, DC_UCS2, decode_short_message, encode_text, gsm7_encode
from gateway.smpp.pdu import (
    RESPONSE_BIT,
    RESPONSE_FOR,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CommandId,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    EsmClass,
    GenericNack,
    Pdu,
    Status,
    SubmitSm,
    SubmitSmResp,
    Tag,
    Unbind,
    UnbindResp,
    UnknownPdu,
    _Bind,
    status_name,
)
from gateway.smpp.receipt import STAT_TO_STATE, format_receipt_text
from throughput.token_bucket import TokenBucket

__all__ = [
    "RECEIPT_STATS",
    "Delivery",
    "SimulatorConfig",
    "SimulatorStats",
    "SmscSimulator",
    "SubmitRecord",
    "serve",
]

log = logging.getLogger(__name__)

# Final states a receipt can report (the `outcomes` keys); ENROUTE is intermediate and not simulated.
RECEIPT_STATS: Final = ("DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "DELETED", "UNKNOWN", "ACCEPTD")
# States that registered_delivery=2 ("on failure only") does not report.
_SUCCESS_STATS: Final = frozenset({"DELIVRD", "ACCEPTD"})
# The `err:` field is carrier-specific (reference §6); these values only have to be stable and distinct.
_RECEIPT_ERR: Final[dict[str, int]] = {
    "DELIVRD": 0,
    "ACCEPTD": 0,
    "UNDELIV": 1,
    "EXPIRED": 2,
    "REJECTD": 3,
    "DELETED": 4,
    "UNKNOWN": 5,
}
_ID_FORMATS: Final = ("decimal", "hex")
_MAX_SEQUENCE: Final = 0x7FFFFFFF
_WAIT_POLL_S: Final = 0.01
_IDLE_WAIT_S: Final = 1.0
_CLOSE_WAIT_S: Final = 1.0
_SHORT_MESSAGE_MAX: Final = 254
# command_length 5 cannot be valid (the header alone is 16): the peer must answer generic_nack 0x02 and close.
_MALFORMED_LENGTH: Final = 5


# -- configuration and records ------------------------------------------------------------------------


@dataclass
class SimulatorConfig:
    """How the simulated SMSC behaves. Only loopback is intended; port 0 picks a free port.

    ``message_id_format`` is how submit_sm_resp writes the id; ``receipt_id_format`` how the receipt text
    and the receipted_message_id TLV write the *same number*, so a hex-resp / decimal-receipt SMSC can be
    simulated. ``outcomes`` are weights over `RECEIPT_STATS`, drawn with a `random.Random(seed)` in the
    order submits are accepted.
    """

    host: str = "127.0.0.1"
    port: int = 0
    # system_id -> password. Wrong credentials get bind_resp ESME_RINVSYSID / ESME_RINVPASWD, then a close.
    accounts: dict[str, str] = field(default_factory=lambda: {"smsgw": "secret"})
    message_id_format: str = "decimal"
    receipt_id_format: str = "decimal"
    receipt_delay: float = 0.05  # seconds after the submit_sm_resp is written
    receipt_jitter: float = 0.0  # plus uniform(0, jitter)
    outcomes: dict[str, float] = field(default_factory=lambda: {"DELIVRD": 1.0})
    receipt_tlvs: bool = True  # receipted_message_id + message_state (+ network_error_code on failure)
    receipt_before_response: bool = False  # the DLR-before-submit_sm_resp race
    # The same race for only a share of the receipts (0-1), drawn per receipt; receipt_before_response = all.
    receipt_before_response_ratio: float = 0.0
    tps_limit: float | None = None  # accepted submit_sm/s over the whole simulator; above it ESME_RTHROTTLED
    max_window: int | None = None  # unanswered submits per bind above this get ESME_RMSGQFUL
    seed: int = 1
    # TLS: serve SMPP over TLS with this certificate chain and key (PEM files); None = plain TCP.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # -- extras ---------------------------------------------------------------------------------------
    response_delay: float = 0.0  # initial value of `SmscSimulator.response_delay`
    ignore_enquire_link: bool = False  # initial value of `SmscSimulator.ignore_enquire_link`
    redelivery_delay: float = 0.2  # wait before resending a deliver_sm that was nacked or lost with its link
    deliver_timeout: float = 10.0  # a deliver_sm without deliver_sm_resp after this long is resent
    # First message id. Large enough that hex and decimal spellings of every id differ.
    message_id_start: int = 0x2A000000
    system_id: str = "SMSCSIM"  # our system_id in bind_resp
    # Keep every submit, receipt and MO in `submits` / `receipts` / `mos` for a test to inspect. A long-running
    # `smsgw simulate-smsc` turns it off: a million submits would hold over a gigabyte. Counters stay either way.
    keep_records: bool = True
    tick_interval: float = 0.003  # period of the task that drains the timed queues

    def __post_init__(self) -> None:
        for name in ("message_id_format", "receipt_id_format"):
            if getattr(self, name) not in _ID_FORMATS:
                raise ValueError(f"{name} must be one of {_ID_FORMATS}, got {getattr(self, name)!r}")
        unknown = set(self.outcomes) - set(RECEIPT_STATS)
        if unknown:
            raise ValueError(f"unknown receipt outcomes {sorted(unknown)}; expected some of {RECEIPT_STATS}")
        if any(weight < 0 for weight in self.outcomes.values()) or sum(self.outcomes.values()) <= 0:
            raise ValueError("outcome weights must be >= 0 with a positive sum")
        if self.tps_limit is not None and self.tps_limit <= 0:
            raise ValueError("tps_limit must be positive (None means unlimited)")
        if self.max_window is not None and self.max_window < 1:
            raise ValueError("max_window must be >= 1 (None means unlimited)")
        for name in ("receipt_delay", "receipt_jitter", "response_delay", "redelivery_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 <= self.receipt_before_response_ratio <= 1:
            raise ValueError("receipt_before_response_ratio must be within 0-1")
        if self.deliver_timeout <= 0 or not 0 < self.tick_interval <= 0.1:
            raise ValueError("deliver_timeout must be > 0 and tick_interval in (0, 0.1]")


@dataclass(slots=True, eq=False)
class SubmitRecord:
    """One submit_sm received on a bound transmitter, whatever its fate.

    ``status`` is the command_status answered, or None when no answer was sent (`drop_next`,
    `disconnect_after`). ``message_id`` is empty unless the submit was accepted. The message fields are
    read from the decoded PDU rather than copied.
    """

    received_at: float  # time.monotonic()
    system_id: str
    bind: int  # connection number
    pdu: SubmitSm = field(repr=False)
    message_id: str = ""
    status: int | None = None
    outcome: str | None = None  # the receipt state drawn for it (registered_delivery 1 or 2)
    receipt: Delivery | None = field(default=None, repr=False)

    @property
    def sequence_number(self) -> int:
        return self.pdu.sequence_number

    @property
    def source_addr(self) -> str:
        return self.pdu.source_addr

    @property
    def destination_addr(self) -> str:
        return self.pdu.destination_addr

    @property
    def data_coding(self) -> int:
        return self.pdu.data_coding

    @property
    def short_message(self) -> bytes:
        return self.pdu.short_message

    @property
    def esm_class(self) -> int:
        return self.pdu.esm_class

    @property
    def registered_delivery(self) -> int:
        return self.pdu.registered_delivery

    @property
    def tlvs(self) -> dict[int, bytes]:
        return self.pdu.tlvs

    @property
    def text(self) -> str:
        """The message text without UDH, from short_message or message_payload."""
        return decode_short_message(_user_data(self.pdu), self.pdu.data_coding)


@dataclass(slots=True, eq=False)
class Delivery:
    """A deliver_sm the simulator owes an ESME (a receipt or an MO), resent until acknowledged.

    A receipt's PDU is built when it is first sent (its done date is then). ``attempts`` counts sends,
    ``nacks`` non-zero deliver_sm_resp (or generic_nack) answers.
    """

    kind: str  # "receipt" | "mo"
    system_id: str | None  # None: any receiver bind
    created_at: float
    pdu: DeliverSm | None = None
    submit: SubmitRecord | None = field(default=None, repr=False)
    stat: str | None = None
    receipt_id: str = ""
    attempts: int = 0
    nacks: int = 0
    acked_at: float | None = None
    failed: str = ""  # why it was given up (it could not be encoded); never retried
    # The PDU encoded with sequence_number 0; each send patches in its own number.
    frame: bytes | None = field(default=None, repr=False)
    # Where the current attempt is in flight, if it is.
    conn: _Connection | None = field(default=None, repr=False)
    sequence_number: int = 0

    @property
    def acked(self) -> bool:
        return self.acked_at is not None


@dataclass(slots=True)
class SimulatorStats:
    """Counters since start. receipts_sent / mos_sent count every send, redeliveries included."""

    connections: int = 0
    binds: int = 0
    bind_failures: int = 0
    unbinds: int = 0
    submits_ok: int = 0
    throttled: int = 0
    queue_full: int = 0
    errors_injected: int = 0
    dropped: int = 0
    disconnects_injected: int = 0
    receipts_sent: int = 0
    receipts_acked: int = 0
    mos_sent: int = 0
    mos_acked: int = 0
    redeliveries: int = 0
    deliver_nacks: int = 0
    deliver_timeouts: int = 0
    enquire_links: int = 0
    generic_nacks_sent: int = 0
    generic_nacks_received: int = 0
    decode_errors: int = 0
    malformed_sent: int = 0
    stalls_injected: int = 0  # connections stalled by `stall` (half-open links)


def _user_data(pdu: SubmitSm | DeliverSm) -> bytes:
    data = pdu.short_message or pdu.tlvs.get(Tag.MESSAGE_PAYLOAD, b"")
    if pdu.esm_class & EsmClass.UDHI and data:
        data = data[1 + data[0] :]  # UDHL octet + UDH
    return data


def _format_id(number: int, fmt: str) -> str:
    return f"{number:X}" if fmt == "hex" else str(number)


def _encode_as(text: str, data_coding: int) -> bytes:
    """Encode an MO text for an explicit data_coding (the caller chose it, so failures raise)."""
    if data_coding == DC_UCS2:
        return text.encode("utf-16-be")
    if data_coding == DC_LATIN1:
        return text.encode("latin-1")
    if data_coding == DC_IA5:
        return text.encode("ascii")
    if data_coding == DC_GSM7 or 0xF0 <= data_coding <= 0xF3 or 0x10 <= data_coding <= 0x13:
        return gsm7_encode(text)
    return text.encode("latin-1")


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# -- one connection -------------------------------------------------------------------------------------


class _State(Enum):
    OPEN = "open"
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    UNBINDING = "unbinding"  # we sent unbind and wait for unbind_resp
    CLOSED = "closed"


_BOUND: Final = frozenset({_State.BOUND_TX, _State.BOUND_RX, _State.BOUND_TRX})
_CAN_RECEIVE: Final = frozenset({_State.BOUND_RX, _State.BOUND_TRX})
_CAN_SUBMIT: Final = frozenset({_State.BOUND_TX, _State.BOUND_TRX})
_BIND_STATE: Final[dict[type[Pdu], _State]] = {
    BindTransmitter: _State.BOUND_TX,
    BindReceiver: _State.BOUND_RX,
    BindTransceiver: _State.BOUND_TRX,
}


class _Connection(asyncio.Protocol):
    """Moves bytes for one ESME connection; the simulator decides what each PDU means.

    Writes go to a list that is joined and written once per loop tick (`call_soon`), so a burst of
    pipelined submits costs one syscall for all its responses.
    """

    def __init__(self, sim: SmscSimulator, number: int) -> None:
        self.sim = sim
        self.number = number
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.framer = Framer()
        self.state = _State.OPEN
        self.system_id = ""
        self.closing = False
        self.pending: dict[int, Delivery] = {}  # deliver_sm awaiting deliver_sm_resp, by sequence number
        self.unanswered = 0  # submit_sm whose response is held back by response_delay
        # Half-open (`SmscSimulator.stall`): nothing is read and nothing written, the socket stays open.
        self.stalled = False
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._sequence = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCPTransport does not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.sim._connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _State.CLOSED
        self.closing = True
        self._out.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.sim._connection_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            frames = self.framer.feed(data)
        except PduDecodeError as exc:
            self.sim._framing_error(self, exc)
            return
        handle = self.sim._handle_frame
        for frame in frames:
            if self.closing:  # unbind, a failed bind or disconnect_after: ignore the rest
                break
            handle(self, frame)

    def pause_writing(self) -> None:
        # The ESME does not read: stop reading its submits too instead of buffering without bound.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing and not self.stalled:
            self.transport.resume_reading()

    # -- output --------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closing or self.stalled:
            return  # a stalled link loses what we send on it (the peer never sees it)
        self._out.append(data)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_handle = None
        if not self._out or self.transport is None:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self.transport.write(data)

    def next_sequence(self) -> int:
        self._sequence = self._sequence % _MAX_SEQUENCE + 1
        return self._sequence

    def close(self) -> None:
        """Close after what is queued has been written."""
        if self.closing or self.transport is None:
            return
        self.flush()
        self.closing = True
        self.sim._detach(self)
        self.transport.close()

    def abort(self) -> None:
        """Drop the connection now; queued output is lost."""
        if self.transport is None:
            return
        self._out.clear()
        self.closing = True
        self.sim._detach(self)
        self.transport.abort()

    def stall(self) -> None:
        """Stop reading and writing, keep the socket open (no FIN, no RST): a half-open link.

        What the ESME sends from now on stays unread in the socket buffers; what we had queued for it and
        not yet written is lost, like anything written into a dead path.
        """
        if self.transport is None or self.closing or self.stalled:
            return
        self.stalled = True
        self._out.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.transport.pause_reading()

    def unstall(self) -> None:
        """Read and write again: what the ESME sent meanwhile is read now and handled like any PDU."""
        if not self.stalled:
            return
        self.stalled = False
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()


@dataclass(slots=True)
class _HeldResponse:
    due: float
    conn: _Connection
    frame: bytes
    receipt: Delivery | None  # scheduled once the response is written


# -- the simulator -------------------------------------------------------------------------------------


class SmscSimulator:
    """An SMPP 3.4 SMSC on loopback. Use ``async with SmscSimulator(config) as sim:``.

    Records every submit (`submits`), receipt (`receipts`) and MO (`mos`) and keeps counters in `stats`.
    ``response_delay`` and ``ignore_enquire_link`` are plain attributes a test may change while it runs.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.submits: list[SubmitRecord] = []
        self.receipts: list[Delivery] = []
        self.mos: list[Delivery] = []
        self.stats = SimulatorStats()
        self.response_delay: float = self.config.response_delay
        self.ignore_enquire_link: bool = self.config.ignore_enquire_link

        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._port = 0
        self._connections: dict[int, _Connection] = {}
        self._connection_numbers = itertools.count(1)
        self._receivers: dict[str, list[_Connection]] = {}  # bound RX/TRX connections by system_id
        self._round_robin = itertools.count()
        # Timed work, drained by the ticker: receipts and redeliveries by due time (heap), held-back
        # responses (deque: due times never decrease), deliver_sm in flight by send time (deque).
        self._due: list[tuple[float, int, Delivery]] = []
        self._due_order = itertools.count()
        self._held: deque[_HeldResponse] = deque()
        self._held_last_due = 0.0
        self._in_flight: deque[tuple[float, _Connection, int, Delivery]] = deque()
        self._waiting: dict[str | None, deque[Delivery]] = {}  # due, but no receiver bind for it yet
        self._wake = asyncio.Event()

        self._message_numbers = itertools.count(self.config.message_id_start)
        # Two generators so that turning jitter on does not change which outcome each message gets.
        self._outcome_rng = random.Random(self.config.seed)
        self._jitter_rng = random.Random(self.config.seed + 1)
        self._early_rng = random.Random(self.config.seed + 2)
        names = [name for name, weight in self.config.outcomes.items() if weight > 0]
        self._outcome_names = names
        self._outcome_cumulative = list(itertools.accumulate(self.config.outcomes[name] for name in names))
        self._bucket: TokenBucket | None = None

        self._fail_remaining = 0
        self._fail_status = int(Status.RSYSERR)
        self._drop_remaining = 0
        self._disconnect_countdown = 0
        self._stall_timers: list[asyncio.TimerHandle] = []

        self._handlers: dict[type[Pdu], Callable[[_Connection, Pdu], None]] = {
            BindTransmitter: self._on_bind,  # type: ignore[dict-item]
            BindReceiver: self._on_bind,  # type: ignore[dict-item]
            BindTransceiver: self._on_bind,  # type: ignore[dict-item]
            SubmitSm: self._on_submit,  # type: ignore[dict-item]
            DeliverSmResp: self._on_deliver_sm_resp,  # type: ignore[dict-item]
            EnquireLink: self._on_enquire_link,
            Unbind: self._on_unbind,
            UnbindResp: self._on_unbind_resp,
            GenericNack: self._on_generic_nack,
            EnquireLinkResp: self._on_ignored_response,
        }

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen and start the timer task.

        Raises:
            RuntimeError: already started.
            OSError: the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("simulator already started")
        loop = asyncio.get_running_loop()
        if self.config.tps_limit is not None:
            rate = self.config.tps_limit
            self._bucket = TokenBucket(rate, burst=max(1.0, rate), now=time.monotonic())
        ssl_context = None
        if self.config.tls_cert is not None:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        self._server = await loop.create_server(
            lambda: _Connection(self, next(self._connection_numbers)), self.config.host, self.config.port,
            ssl=ssl_context,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._run_ticker(), name=f"smsc-simulator-{self._port}")
        log.debug("SMSC simulator listening", extra={"host": self.config.host, "port": self._port})

    async def stop(self, unbind_timeout: float = 0.0) -> None:
        """Stop listening, close every connection and cancel the timer task.

        With ``unbind_timeout`` > 0, bound ESMEs first get an unbind and that long to answer and close.
        Never waits longer than ``unbind_timeout`` plus about two seconds.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for handle in self._stall_timers:
            handle.cancel()
        self._stall_timers.clear()
        if unbind_timeout > 0:
            for conn in list(self._connections.values()):
                if conn.state in _BOUND and not conn.closing:
                    self._detach(conn)
                    conn.state = _State.UNBINDING
                    conn.write(encode(Unbind(sequence_number=conn.next_sequence())))
            await self._wait_quietly(lambda: not self._connections, unbind_timeout)
        for conn in list(self._connections.values()):
            conn.close()
        if not await self._wait_quietly(lambda: not self._connections, _CLOSE_WAIT_S):
            for conn in list(self._connections.values()):
                conn.abort()  # a peer that does not read would keep close() pending forever
            await self._wait_quietly(lambda: not self._connections, _CLOSE_WAIT_S)
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await asyncio.wait_for(self._ticker, _CLOSE_WAIT_S)
            except (asyncio.CancelledError, TimeoutError):
                pass
            self._ticker = None
        try:
            await asyncio.wait_for(server.wait_closed(), _CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("SMSC simulator server did not close in time", extra={"timeout_s": _CLOSE_WAIT_S})
        log.info("SMSC simulator stopped", extra={"port": self._port, **asdict(self.stats)})

    async def __aenter__(self) -> SmscSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The listening port (the one picked when the config said 0)."""
        if not self._port:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return self.config.host, self.port

    def bound(self, system_id: str | None = None, *, receivers_only: bool = False) -> int:
        """Number of live bound connections (of one system_id; only RX/TRX ones if asked)."""
        states = _CAN_RECEIVE if receivers_only else _BOUND
        return sum(
            1
            for conn in self._connections.values()
            if conn.state in states and not conn.closing and (system_id is None or conn.system_id == system_id)
        )

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll ``predicate`` every 10 ms until it is true; return True.

        Raises:
            TimeoutError: still false after ``timeout`` seconds.
        """
        if not await self._wait_quietly(predicate, timeout):
            raise TimeoutError(f"condition not met within {timeout:.2f}s")
        return True

    async def _wait_quietly(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_WAIT_POLL_S)
        return True

    # -- faults on demand ----------------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = Status.RSYSERR) -> None:
        """Answer the next ``n`` submit_sm with ``status`` (no message id, no receipt)."""
        if status == 0:
            raise ValueError("fail_next needs a non-zero command_status")
        self._fail_remaining = n
        self._fail_status = int(status)

    def drop_next(self, n: int) -> None:
        """Never answer the next ``n`` submit_sm (no response, no receipt): a lost or ambiguous submit."""
        self._drop_remaining = n

    def disconnect_after(self, n: int) -> None:
        """Abort the connection that receives the ``n``-th next submit_sm, without answering it.

        Answers to earlier submits that are not yet written are lost with the connection.
        """
        if n < 1:
            raise ValueError("disconnect_after needs n >= 1")
        self._disconnect_countdown = n

    def disconnect_all(self) -> None:
        """Abort every connection now (TCP reset, queued output lost)."""
        conns = list(self._connections.values())
        log.warning("fault: aborting all connections", extra={"count": len(conns)})
        for conn in conns:
            conn.abort()

    def stall(self, seconds: float | None = None, *, then: str = "resume") -> int:
        """Half-open fault: every connection open now stops reading and answering; no FIN, no RST.

        Realistic semantics (an SMSC whose process froze, or a path that silently drops packets):

        - submit_sm read *before* the stall were handled as usual: answered, accepted, receipts planned. An
          answer still queued but not yet written when the stall begins is lost; the message stays accepted
          and its receipt comes (to a live receiver bind of the account, now or when one binds again).
        - submit_sm sent *during* the stall stay unread in the socket: not accepted, no record, no receipt.
        - no deliver_sm goes to a stalled connection (it leaves the receiver rotation); deliver_sm already in
          flight on it are resent elsewhere after ``deliver_timeout``, or at once when it closes.
        - enquire_link is not answered, so a live ESME notices and re-binds on a fresh connection, which
          works normally: the fault is per connection, not the whole SMSC.

        After ``seconds`` (None: until `end_stall`) ``then`` decides: ``"resume"`` reads again, handling what
        was sent meanwhile like any PDU (the process woke up: those submits *are* accepted, their answers
        go to a peer that may be gone, their receipts come later); ``"abort"`` drops the connections
        (what was never read was never accepted). Returns the number of connections stalled.

        Raises:
            ValueError: ``then`` is neither "resume" nor "abort", or ``seconds`` is negative.
        """
        if then not in ("resume", "abort"):
            raise ValueError(f"then must be 'resume' or 'abort', got {then!r}")
        if seconds is not None and seconds < 0:
            raise ValueError("seconds must be >= 0")
        conns = [c for c in self._connections.values() if not c.closing and not c.stalled]
        for conn in conns:
            conn.stall()
            self._detach(conn)
        self.stats.stalls_injected += len(conns)
        log.warning("fault: connections stalled (half-open)", extra={"count": len(conns), "seconds": seconds})
        if seconds is not None and conns:
            handle = asyncio.get_running_loop().call_later(seconds, self._end_stall, conns, then)
            self._stall_timers.append(handle)
        return len(conns)

    def end_stall(self, then: str = "resume") -> int:
        """End every stall now (``then`` as in `stall`); returns the number of connections it ended."""
        if then not in ("resume", "abort"):
            raise ValueError(f"then must be 'resume' or 'abort', got {then!r}")
        for handle in self._stall_timers:
            handle.cancel()
        self._stall_timers.clear()
        return self._end_stall([c for c in self._connections.values() if c.stalled], then)

    def _end_stall(self, conns: list[_Connection], then: str) -> int:
        ended = [c for c in conns if c.stalled]
        for conn in ended:
            if then == "abort":
                conn.abort()
                continue
            conn.unstall()
            if conn.state in _CAN_RECEIVE and not conn.closing:
                self._receivers.setdefault(conn.system_id, []).append(conn)
                self._release_waiting(conn.system_id)
        if ended:
            log.warning("fault: stall ended", extra={"count": len(ended), "then": then})
        return len(ended)

    def send_malformed(self) -> None:
        """Write a PDU header claiming command_length 5 to every bound connection."""
        for conn in list(self._connections.values()):
            if conn.closing or conn.state not in _BOUND:
                continue
            conn.write(HEADER.pack(_MALFORMED_LENGTH, CommandId.ENQUIRE_LINK, 0, conn.next_sequence()))
            conn.flush()
            self.stats.malformed_sent += 1
            log.warning("fault: malformed PDU sent", extra={"bind": conn.number})

    def clear_faults(self) -> None:
        """Cancel pending fail_next / drop_next / disconnect_after and the slow/half-dead link settings."""
        self._fail_remaining = self._drop_remaining = self._disconnect_countdown = 0
        self.response_delay = 0.0
        self.ignore_enquire_link = False

    # -- MO ------------------------------------------------------------------------------------------------

    async def inject_mo(
        self,
        source: str,
        destination: str,
        text: str | bytes,
        *,
        data_coding: int | None = None,
        esm_class: int = 0,
        tlvs: dict[int, bytes] | None = None,
        system_id: str | None = None,
        source_ton: int = 1,
        source_npi: int = 1,
        dest_ton: int = 0,
        dest_npi: int = 0,
    ) -> Delivery:
        """Send an MO deliver_sm to a receiver bind of ``system_id`` (None: any), now or when one binds.

        A str is encoded GSM-7 when it can be, else UCS-2 (or as ``data_coding`` says); bytes go as they
        are with data_coding 0 unless given. Over 254 octets the text goes in message_payload. Resent
        until a deliver_sm_resp with status 0 arrives; the returned `Delivery` shows its progress.

        Raises:
            PduEncodeError: an address does not fit its field.
            UnicodeEncodeError, gsm.UnencodableError: ``text`` cannot be written in ``data_coding``.
        """
        if isinstance(text, str):
            if data_coding is None:
                encoded = encode_text(text)
                payload, coding = encoded.payload, encoded.data_coding
            else:
                payload, coding = _encode_as(text, data_coding), data_coding
        else:
            payload, coding = bytes(text), DC_GSM7 if data_coding is None else data_coding
        extra = dict(tlvs or {})
        if len(payload) > _SHORT_MESSAGE_MAX:
            extra[Tag.MESSAGE_PAYLOAD] = payload
            payload = b""
        pdu = DeliverSm(
            source_addr_ton=source_ton,
            source_addr_npi=source_npi,
            source_addr=source,
            dest_addr_ton=dest_ton,
            dest_addr_npi=dest_npi,
            destination_addr=destination,
            esm_class=esm_class,
            data_coding=coding,
            short_message=payload,
            tlvs=extra,
        )
        delivery = Delivery(kind="mo", system_id=system_id, created_at=time.monotonic(), pdu=pdu, frame=encode(pdu))
        if self.config.keep_records:
            self.mos.append(delivery)
        log.info(
            "MO queued",
            extra={"source": source, "destination": destination, "data_coding": coding, "system_id": system_id},
        )
        self._dispatch(delivery, time.monotonic())
        return delivery

    # -- connection events -------------------------------------------------------------------------------

    def _connection_made(self, conn: _Connection) -> None:
        self._connections[conn.number] = conn
        self.stats.connections += 1
        log.info("connection accepted", extra={"bind": conn.number, "peer": conn.peer})

    def _connection_lost(self, conn: _Connection, exc: Exception | None) -> None:
        self._connections.pop(conn.number, None)
        self._detach(conn)
        pending = list(conn.pending.values())
        conn.pending.clear()
        now = time.monotonic()
        for delivery in pending:
            self._retry(delivery, now)
        log.info(
            "connection closed",
            extra={
                "bind": conn.number,
                "system_id": conn.system_id,
                "unacked_deliveries": len(pending),
                "reason": str(exc) if exc else "closed",
            },
        )

    def _detach(self, conn: _Connection) -> None:
        """No new deliver_sm goes to this connection."""
        receivers = self._receivers.get(conn.system_id)
        if receivers and conn in receivers:
            receivers.remove(conn)

    def _framing_error(self, conn: _Connection, exc: PduDecodeError) -> None:
        self.stats.decode_errors += 1
        log.warning("framing error, closing", extra={"bind": conn.number, "error": str(exc)})
        self._send_generic_nack(conn, exc.sequence_number, exc.status)
        conn.close()

    # -- incoming PDUs -----------------------------------------------------------------------------------

    def _handle_frame(self, conn: _Connection, frame: bytes) -> None:
        try:
            pdu = decode(frame)
        except PduDecodeError as exc:
            self._decode_error(conn, exc)
            return
        handler = self._handlers.get(type(pdu))
        try:
            if handler is not None:
                handler(conn, pdu)
            elif pdu.is_response:
                log.debug("unexpected response dropped", extra={"bind": conn.number, "pdu": repr(pdu)})
            else:
                # Unknown command ids, and requests an SMSC does not take (deliver_sm, data_sm, outbind).
                self._send_generic_nack(conn, pdu.sequence_number, Status.RINVCMDID)
        except Exception:
            # A bug here must cost one PDU, not the connection or the server.
            log.exception("failed to handle a PDU", extra={"bind": conn.number, "pdu": repr(pdu)})
            if not pdu.is_response:
                self._send_generic_nack(conn, pdu.sequence_number, Status.RSYSERR)

    def _decode_error(self, conn: _Connection, exc: PduDecodeError) -> None:
        self.stats.decode_errors += 1
        if exc.fatal:
            self._framing_error(conn, exc)
            return
        log.warning(
            "undecodable PDU",
            extra={
                "bind": conn.number,
                "command_id": f"0x{exc.command_id:08X}",
                "status": status_name(exc.status),
                "error": str(exc),
            },
        )
        if is_response_id(exc.command_id):
            return  # never answer a response
        self._send_error_response(conn, exc.command_id, exc.sequence_number, exc.status)

    def _send_error_response(self, conn: _Connection, command_id: int, sequence_number: int, status: int) -> None:
        # Error responses carry no body (spec §4.1.2, §4.4.2); UnknownPdu lets the codec write exactly that.
        conn.write(
            encode(
                UnknownPdu(
                    sequence_number=sequence_number,
                    command_status=status,
                    raw_command_id=command_id | RESPONSE_BIT,
                )
            )
        )

    def _send_generic_nack(self, conn: _Connection, sequence_number: int, status: int) -> None:
        self.stats.generic_nacks_sent += 1
        conn.write(encode(GenericNack(sequence_number=sequence_number, command_status=status)))

    def _on_bind(self, conn: _Connection, pdu: _Bind) -> None:
        if conn.state is not _State.OPEN:
            self._send_error_response(conn, pdu.command_id, pdu.sequence_number, Status.RALYBND)
            return
        expected = self.config.accounts.get(pdu.system_id)
        if expected is None:
            status = Status.RINVSYSID
        elif pdu.password != expected:
            status = Status.RINVPASWD
        else:
            status = Status.ROK
        if status:
            self.stats.bind_failures += 1
            # The password is never logged, only which check failed.
            log.warning(
                "bind refused",
                extra={"bind": conn.number, "system_id": pdu.system_id, "status": status_name(status)},
            )
            self._send_error_response(conn, pdu.command_id, pdu.sequence_number, status)
            conn.close()
            return
        state = _BIND_STATE[type(pdu)]
        conn.state = state
        conn.system_id = pdu.system_id
        self.stats.binds += 1
        resp_cls = RESPONSE_FOR[pdu.command_id]
        conn.write(
            encode(
                resp_cls(  # type: ignore[call-arg]
                    sequence_number=pdu.sequence_number,
                    system_id=self.config.system_id,
                    tlvs={Tag.SC_INTERFACE_VERSION: b"\x34"},
                )
            )
        )
        log.info("bound", extra={"bind": conn.number, "system_id": pdu.system_id, "mode": state.value})
        if state in _CAN_RECEIVE:
            self._receivers.setdefault(pdu.system_id, []).append(conn)
            self._release_waiting(pdu.system_id)

    def _on_submit(self, conn: _Connection, pdu: SubmitSm) -> None:
        if conn.state not in _CAN_SUBMIT:
            conn.write(encode(SubmitSmResp(sequence_number=pdu.sequence_number, command_status=Status.RINVBNDSTS)))
            return
        now = time.monotonic()
        record = SubmitRecord(received_at=now, system_id=conn.system_id, bind=conn.number, pdu=pdu)
        if self.config.keep_records:
            self.submits.append(record)
        if self._disconnect_countdown:
            self._disconnect_countdown -= 1
            if not self._disconnect_countdown:
                self.stats.disconnects_injected += 1
                log.warning("fault: disconnect_after reached, aborting", extra={"bind": conn.number})
                conn.abort()
                return
        if self._drop_remaining:
            self._drop_remaining -= 1
            self.stats.dropped += 1
            return
        config = self.config
        if self._fail_remaining:
            self._fail_remaining -= 1
            status = self._fail_status
            self.stats.errors_injected += 1
        elif config.max_window is not None and conn.unanswered >= config.max_window:
            status = Status.RMSGQFUL
            self.stats.queue_full += 1
        elif self._bucket is not None and not self._bucket.take(now):
            status = Status.RTHROTTLED
            self.stats.throttled += 1
        else:
            status = Status.ROK
        record.status = status
        receipt: Delivery | None = None
        if status == Status.ROK:
            number = next(self._message_numbers)
            record.message_id = _format_id(number, config.message_id_format)
            self.stats.submits_ok += 1
            receipt = self._plan_receipt(record, number, now)
        frame = encode(
            SubmitSmResp(sequence_number=pdu.sequence_number, command_status=status, message_id=record.message_id)
        )
        early = config.receipt_before_response_ratio
        if receipt is not None and (
            config.receipt_before_response or (early and self._early_rng.random() < early)
        ):
            self._dispatch(receipt, now)
            receipt = None
        if self.response_delay > 0:
            # One global deque stays ordered because a due time is never earlier than the previous one,
            # so responses keep their order even when response_delay shrinks while running.
            due = max(now + self.response_delay, self._held_last_due)
            self._held_last_due = due
            conn.unanswered += 1
            self._held.append(_HeldResponse(due, conn, frame, receipt))
            self._wake.set()
            return
        conn.write(frame)
        if receipt is not None:
            self._schedule_receipt(receipt, now)

    def _on_deliver_sm_resp(self, conn: _Connection, pdu: DeliverSmResp) -> None:
        self._settle(conn, pdu.sequence_number, pdu.command_status)

    def _on_generic_nack(self, conn: _Connection, pdu: GenericNack) -> None:
        self.stats.generic_nacks_received += 1
        log.info(
            "generic_nack received",
            extra={
                "bind": conn.number,
                "sequence_number": pdu.sequence_number,
                "status": status_name(pdu.command_status),
            },
        )
        if pdu.sequence_number in conn.pending:
            self._settle(conn, pdu.sequence_number, pdu.command_status or Status.RUNKNOWNERR)

    def _on_enquire_link(self, conn: _Connection, pdu: EnquireLink) -> None:
        self.stats.enquire_links += 1
        if self.ignore_enquire_link:
            return
        conn.write(encode(EnquireLinkResp(sequence_number=pdu.sequence_number)))

    def _on_unbind(self, conn: _Connection, pdu: Unbind) -> None:
        if conn.state is _State.OPEN:
            conn.write(encode(UnbindResp(sequence_number=pdu.sequence_number, command_status=Status.RINVBNDSTS)))
            return
        self.stats.unbinds += 1
        conn.write(encode(UnbindResp(sequence_number=pdu.sequence_number)))
        log.info("unbind", extra={"bind": conn.number, "system_id": conn.system_id})
        conn.close()

    def _on_unbind_resp(self, conn: _Connection, pdu: UnbindResp) -> None:
        if conn.state is _State.UNBINDING:
            conn.close()

    def _on_ignored_response(self, conn: _Connection, pdu: Pdu) -> None:
        """Responses to requests we never send (we send no enquire_link): nothing to do."""

    # -- receipts and deliveries ---------------------------------------------------------------------------

    def _plan_receipt(self, record: SubmitRecord, number: int, now: float) -> Delivery | None:
        requested = record.pdu.registered_delivery & 0x03
        if requested not in (1, 2):
            return None
        point = self._outcome_rng.random() * self._outcome_cumulative[-1]
        stat = self._outcome_names[bisect.bisect_right(self._outcome_cumulative, point)]
        record.outcome = stat
        if requested == 2 and stat in _SUCCESS_STATS:
            return None
        delivery = Delivery(
            kind="receipt",
            system_id=record.system_id,
            created_at=now,
            submit=record,
            stat=stat,
            receipt_id=_format_id(number, self.config.receipt_id_format),
        )
        record.receipt = delivery
        if self.config.keep_records:
            self.receipts.append(delivery)
        return delivery

    def _schedule_receipt(self, delivery: Delivery, now: float) -> None:
        delay = self.config.receipt_delay
        if self.config.receipt_jitter:
            delay += self._jitter_rng.uniform(0.0, self.config.receipt_jitter)
        self._push(delivery, now + delay)

    def _push(self, delivery: Delivery, due: float) -> None:
        heapq.heappush(self._due, (due, next(self._due_order), delivery))
        self._wake.set()

    def _retry(self, delivery: Delivery, now: float) -> None:
        delivery.conn = None
        self._push(delivery, now + self.config.redelivery_delay)

    def _build_receipt(self, delivery: Delivery) -> DeliverSm:
        record = delivery.submit
        assert record is not None and delivery.stat is not None
        submitted = record.pdu
        wall_now = time.time()
        # received_at is monotonic; the text wants wall-clock dates (UTC: the SMSC's clock, as it pleases).
        submit_wall = wall_now - (time.monotonic() - record.received_at)
        err = _RECEIPT_ERR[delivery.stat]
        text = format_receipt_text(
            delivery.receipt_id,
            delivery.stat,
            submit_date=_utc(submit_wall),
            done_date=_utc(wall_now),
            err=err,
            text=decode_short_message(_user_data(submitted), submitted.data_coding),
        )
        tlvs: dict[int, bytes] = {}
        if self.config.receipt_tlvs:
            tlvs[Tag.RECEIPTED_MESSAGE_ID] = delivery.receipt_id.encode("ascii") + b"\x00"
            tlvs[Tag.MESSAGE_STATE] = bytes((STAT_TO_STATE[delivery.stat],))
            if delivery.stat not in _SUCCESS_STATS:
                tlvs[Tag.NETWORK_ERROR_CODE] = b"\x03" + err.to_bytes(2, "big")  # 3 = GSM
        return DeliverSm(
            source_addr_ton=submitted.dest_addr_ton,
            source_addr_npi=submitted.dest_addr_npi,
            source_addr=submitted.destination_addr,
            dest_addr_ton=submitted.source_addr_ton,
            dest_addr_npi=submitted.source_addr_npi,
            destination_addr=submitted.source_addr,
            esm_class=EsmClass.DELIVERY_RECEIPT,
            data_coding=DC_GSM7,
            short_message=text,
            tlvs=tlvs,
        )

    def _pick_receiver(self, system_id: str | None) -> _Connection | None:
        if system_id is None:
            candidates = [conn for conns in self._receivers.values() for conn in conns]
        else:
            candidates = self._receivers.get(system_id) or []
        if not candidates:
            return None
        return candidates[next(self._round_robin) % len(candidates)]

    def _dispatch(self, delivery: Delivery, now: float) -> None:
        if delivery.acked or delivery.failed:
            return
        conn = self._pick_receiver(delivery.system_id)
        if conn is None:
            self._waiting.setdefault(delivery.system_id, deque()).append(delivery)
            return
        if delivery.frame is None:
            try:
                if delivery.pdu is None:
                    delivery.pdu = self._build_receipt(delivery)
                delivery.frame = encode(delivery.pdu)
            except PduEncodeError as exc:
                # The ESME sent addresses our encoder refuses (the decoder is lenient): give this one up.
                delivery.failed = str(exc)
                log.error("receipt cannot be encoded, dropped", extra={"id": delivery.receipt_id, "error": str(exc)})
                return
        sequence = conn.next_sequence()
        frame = delivery.frame
        conn.write(frame[:12] + sequence.to_bytes(4, "big") + frame[16:])
        if delivery.attempts:
            self.stats.redeliveries += 1
        delivery.attempts += 1
        delivery.conn = conn
        delivery.sequence_number = sequence
        conn.pending[sequence] = delivery
        self._in_flight.append((now, conn, sequence, delivery))
        if delivery.kind == "receipt":
            self.stats.receipts_sent += 1
        else:
            self.stats.mos_sent += 1
        self._wake.set()

    def _release_waiting(self, system_id: str) -> None:
        now = time.monotonic()
        for key in (system_id, None):
            queued = self._waiting.pop(key, None)
            if queued:
                log.info("releasing queued deliveries", extra={"system_id": key, "count": len(queued)})
                for delivery in queued:
                    self._dispatch(delivery, now)

    def _settle(self, conn: _Connection, sequence_number: int, status: int) -> None:
        delivery = conn.pending.pop(sequence_number, None)
        if delivery is None:
            log.debug(
                "deliver_sm_resp for nothing in flight",
                extra={"bind": conn.number, "sequence_number": sequence_number},
            )
            return
        delivery.conn = None
        if status == 0:
            if delivery.acked_at is None:
                delivery.acked_at = time.monotonic()
                if delivery.kind == "receipt":
                    self.stats.receipts_acked += 1
                else:
                    self.stats.mos_acked += 1
            return
        delivery.nacks += 1
        self.stats.deliver_nacks += 1
        # Per message, so debug: an ESME refusing thousands per second must not flood the log.
        log.debug(
            "deliver_sm refused, will resend",
            extra={"bind": conn.number, "kind": delivery.kind, "status": status_name(status)},
        )
        self._retry(delivery, time.monotonic())

    # -- the timer task ------------------------------------------------------------------------------------

    async def _run_ticker(self) -> None:
        interval = self.config.tick_interval
        while True:
            try:
                self._tick(time.monotonic())
            except Exception:
                log.exception("simulator tick failed")
            if self._due or self._held or self._in_flight:
                await asyncio.sleep(interval)
                continue
            # Nothing timed is pending: sleep until something is scheduled (bounded, to stay robust).
            self._wake.clear()
            try:
                async with asyncio.timeout(_IDLE_WAIT_S):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _tick(self, now: float) -> None:
        held = self._held
        while held and held[0].due <= now:
            item = held.popleft()
            conn = item.conn
            conn.unanswered -= 1
            conn.write(item.frame)  # a no-op when the connection is gone
            if item.receipt is not None:
                # The message was accepted even if its response was lost: the receipt still comes.
                self._schedule_receipt(item.receipt, now)

        due = self._due
        while due and due[0][0] <= now:
            self._dispatch(heapq.heappop(due)[2], now)

        in_flight = self._in_flight
        deadline = now - self.config.deliver_timeout
        while in_flight:
            sent_at, conn, sequence, delivery = in_flight[0]
            if delivery.conn is conn and delivery.sequence_number == sequence:
                if sent_at > deadline:
                    break  # the oldest live attempt is not late yet
                del conn.pending[sequence]
                self.stats.deliver_timeouts += 1
                log.debug("deliver_sm_resp timed out, will resend", extra={"bind": conn.number, "kind": delivery.kind})
                self._retry(delivery, now)
            in_flight.popleft()


async def serve(config: SimulatorConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run a simulator until ``stop`` is set (or the task is cancelled); for ``smsgw simulate-smsc``."""
    sim = SmscSimulator(config)
    await sim.start()
    log.info(
        "SMSC simulator ready",
        extra={"host": config.host, "port": sim.port, "system_ids": ",".join(sorted(config.accounts))},
    )
    try:
        # Deliberately unbounded: this is the service's lifetime, ended by `stop` or cancellation.
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await sim.stop(unbind_timeout=1.0)
