"""Thin asyncio layer over the sans-IO `Session`: owns the socket, the clock and the futures.

Rule of this module: protocol decisions live in `session.py`; this file only moves bytes, arms one
timer from `Session.next_deadline()`, and resolves futures keyed by sequence number. Every network
wait has a timeout.

Reading can be paused by flow control (`pause_reading`): from then on nothing the SMSC sends is acted on
until `resume_reading` (only a PDU the session had already begun to read is finished), and the session's timers
stop meanwhile (an unread response is not a late one). The socket is still read while paused, because a strict
SMSC drops a bind whose enquire_links go unanswered, and a database stall must not cost the bind: the bytes read
are held, undecoded and in arrival order, except each complete enquire_link request, which is taken out and given
to the session at once so that it is answered. Everything else (deliver_sm, submit_sm_resp, enquire_link_resp,
unbind, anything unknown) waits for `resume_reading`: the SMSC's deliver_sm stay unacknowledged and our window
stays full, as before. Past `HELD_CAP` held octets the transport itself stops reading, and a bad command_length
ends the scan (the session rejects it after resume): then the SMSC's enquire_links wait too, as they always did.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from gateway.smpp import codec
from gateway.smpp import session as s
from gateway.smpp.pdu import CommandId, DataSm, DeliverSm, Pdu, _Bind

log = logging.getLogger(__name__)

# Received bytes are decoded this much at a time, so that a pause asked for by a handler (the writer is full)
# takes effect within a few PDUs instead of after the whole read (uvloop reads up to 256 KiB at once).
FEED_CHUNK = 4096

# Octets held while reading is paused, beyond which the transport itself stops reading (one more read can land:
# at most 256 KiB with uvloop). An SMSC that honours its window has at most a window of deliver_sm outstanding:
# 1 MiB is a window of 10 of the largest PDUs the framer accepts (70,000 octets), or thousands of ordinary
# receipts and MOs, so a well-behaved link never reaches it and keeps its enquire_links answered for the whole
# stall. Only an SMSC that ignores its window gets here, and then per connection memory stays bounded; past the
# cap its enquire_links wait in the socket with the rest, as they did before held bytes were scanned.
HELD_CAP = 1 << 20

_ENQUIRE_LINK = int(CommandId.ENQUIRE_LINK).to_bytes(4, "big")


class ConnectionClosedError(s.SessionError):
    """The connection closed before the request was answered (the request may have reached the SMSC)."""


class RequestTimeoutError(s.SessionError):
    """No response within the response timeout (the request may have reached the SMSC)."""


class TlsVerificationError(ssl.SSLCertVerificationError):
    """The SMSC's TLS certificate could not be verified (chain or host name): no session is started.

    An OSError (through ssl.SSLError), like every other failure to reach an SMSC, so the bind loop retries it
    with back-off; the message says what failed and which setting fixes it.
    """

    def __str__(self) -> str:  # ssl.SSLError would print the args tuple
        return str(self.args[0]) if self.args else "TLS certificate verification failed"


def tls_context(ca_file: Path | None = None, *, verify: bool = True, smsc: str = "") -> ssl.SSLContext:
    """The client TLS context for an SMSC: the chain verified against `ca_file` (or the system's CAs) and the
    host name checked, TLS 1.2 at least. `verify=False` turns both checks off and logs a warning (once per call,
    i.e. once per SMSC at start): anyone on the path can then read and change the traffic, passwords included."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False  # must go before verify_mode: CERT_NONE is refused while it is on
        context.verify_mode = ssl.CERT_NONE
        log.warning(
            "TLS certificate verification is OFF for this SMSC (tls_verify = false): the link can be intercepted",
            extra={"smsc": smsc},
        )
    return context


class BindError(s.SessionError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


RequestHandler = Callable[["SmppConnection", DeliverSm | DataSm], None]


class SmppConnection(asyncio.Protocol):
    """One TCP connection to an SMSC carrying one SMPP session.

    `on_request` is called for every deliver_sm / data_sm; the caller answers it later with
    `send_response` (after the message is committed). `on_close` is called once when the
    connection is gone, whatever the reason.
    """

    def __init__(
        self,
        session: s.Session,
        *,
        name: str,
        on_request: RequestHandler,
        on_close: Callable[[SmppConnection, str], None] | None = None,
        on_window: Callable[[SmppConnection], None] | None = None,
    ) -> None:
        self.session = session
        self.name = name
        self._on_request = on_request
        self._on_close = on_close
        self._on_window = on_window
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._bind_future: asyncio.Future[s.Bound] | None = None
        self._unbind_future: asyncio.Future[None] | None = None
        self._closed = asyncio.Event()
        self.close_reason = ""
        self.peer_system_id = ""
        self._write_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._read_paused = False
        self._read_paused_at = 0.0
        self._held = bytearray()  # read from the socket while paused, not yet given to the session
        self._transport_paused = False  # by us, past HELD_CAP
        # The scan of `_held` for enquire_links (see `_scan_held`). `_cut`: octets of a frame the session's framer
        # had started when holding began (0: `_held` starts on a frame boundary); `_cut_head`: that frame's first
        # octets (up to 4, for its command_length). `_scan`: offset in `_held` of the first frame not looked at
        # yet, or None once a bad header stopped the scan for good.
        self._cut = 0
        self._cut_head = b""
        self._scan: int | None = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, so no isinstance check here.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._held or self._read_paused:
            self._held += data  # behind what is held already, to keep the order
            if self._read_paused:
                self._scan_held()
            else:
                self._feed_held()
            return
        self._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.close_reason or (f"connection lost: {exc}" if exc else "connection closed by peer")
        self._finish(reason)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._writable.clear()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._writable.set()
        if self._read_paused:
            self._scan_held()  # enquire_links held while our answers could not be written
        if self._on_window is not None:
            self._on_window(self)

    def pause_reading(self) -> None:
        """Stop acting on what the SMSC sends (flow control): PDUs are held unread, and the SMSC stops sending
        when its window is full; only its enquire_links are answered meanwhile (see the module docstring).
        Response and keep-alive timers stop too. Safe on a closed connection."""
        if self._read_paused or self.is_closed:
            return
        now = self._loop.time()
        self._read_paused = True
        self._read_paused_at = now
        if not self._held:
            self._hold_from_here()
        self.session.pause_timers(now)
        self._rearm()
        self._scan_held()  # bytes still held from a previous pause (resumed, paused again before they were fed)

    def resume_reading(self) -> None:
        """Read again; what was held while paused is decoded first (on the next loop turn)."""
        if not self._read_paused:
            return
        self._read_paused = False
        if self.is_closed:
            return
        self.session.resume_timers(self._loop.time())
        self._rearm()
        if self._transport_paused:
            self._transport_paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
        if self._held:
            # Not inline: the caller (the writer, running acks) must not re-enter the request handler.
            self._loop.call_soon(self._feed_held)

    # -- API -----------------------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    @property
    def can_submit(self) -> bool:
        """Bound for transmit, a free window slot, and the socket buffer is not full."""
        return not self._write_paused and self.session.window_free > 0 and not self.is_closed

    async def bind(self, pdu: _Bind) -> s.Bound:
        """Bind and wait for the outcome (bounded by the session's bind timeout).

        Raises:
            BindError: the SMSC refused the bind, or no answer in time.
            ConnectionClosedError: the connection dropped meanwhile.
        """
        self._bind_future = self._loop.create_future()
        self.session.bind(pdu, self._loop.time())
        self._flush()
        self._rearm()
        # The session's own bind timer resolves the future; the outer wait is a safety net.
        return await asyncio.wait_for(self._bind_future, self.session.bind_timeout + 5)

    def send_request(self, pdu: Pdu) -> asyncio.Future[Pdu]:
        """Send a request now; the future gets its response PDU (generic_nack included).

        The future fails with RequestTimeoutError or ConnectionClosedError.

        Raises:
            NotBoundError, WindowFullError, PduEncodeError: raised at once, nothing was sent.
        """
        fut: asyncio.Future[Pdu] = self._loop.create_future()
        self.session.send_request(pdu, self._loop.time(), fut)
        self._flush()
        self._rearm()
        return fut

    def send_response(self, pdu: Pdu) -> None:
        """Answer a request of the SMSC (deliver_sm_resp, data_sm_resp)."""
        if self.is_closed:
            return
        self.session.send_response(pdu)
        self._flush()

    async def unbind(self, timeout: float = 5.0) -> None:
        """Unbind cleanly and close; never raises, never waits longer than `timeout`."""
        if self.is_closed:
            return
        if self.session.is_bound:
            self._unbind_future = self._loop.create_future()
            self.session.unbind(self._loop.time())
            self._flush()
            self._rearm()
            try:
                await asyncio.wait_for(asyncio.shield(self._unbind_future), timeout)
            except (TimeoutError, ConnectionClosedError):
                pass
        self.close("unbound")
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
        except TimeoutError:
            self.abort("close timed out")

    def close(self, reason: str) -> None:
        """Close after flushing what is queued."""
        if not self.close_reason:
            self.close_reason = reason
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self, reason: str) -> None:
        """Drop the connection at once."""
        if not self.close_reason:
            self.close_reason = reason
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- internals -----------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Give received bytes to the session a chunk at a time; hold the rest as soon as reading is paused."""
        now = self._loop.time()
        if len(data) <= FEED_CHUNK:
            self._dispatch(self.session.receive_data(data, now))
        else:
            view = memoryview(data)
            for pos in range(0, len(view), FEED_CHUNK):
                if self.is_closed:
                    break
                if self._read_paused:
                    self._held += view[pos:]  # pause_reading saw `_held` empty and took the framer's state
                    break
                self._dispatch(self.session.receive_data(bytes(view[pos : pos + FEED_CHUNK]), now))
        self._flush()
        self._rearm()
        if self._read_paused:
            self._scan_held()

    def _feed_held(self) -> None:
        if self._read_paused or self.is_closed or not self._held:
            return
        data = bytes(self._held)
        self._held.clear()
        self._feed(data)

    def _hold_from_here(self) -> None:
        """Holding starts (nothing is held): note where the next frame boundary is in what will be held.

        The session's framer may hold the start of a frame (reads do not end on PDU boundaries): the first octets
        held then finish that frame, and nothing can be given to the session before them. The framer tells (read
        only): framing every read twice on the hot path would be the alternative."""
        framer = self.session.framer
        self._cut = framer.buffered
        self._cut_head = framer.head if self._cut else b""
        self._scan = 0

    def _scan_held(self) -> None:
        """While paused: give the session every complete enquire_link held (it answers them), oldest first, and
        pause the transport once more than HELD_CAP octets are held. Every other frame stays held, in order.

        enquire_link_resp (the answer to our keep-alive or probe) stays held: our timers are stopped while paused,
        so using it now gains nothing, and the session then sees the responses in wire order, which its probe
        logic reasons with. unbind stays held: answering it would end the session in front of held responses
        (submit_sm_resp with message_ids), turning known outcomes into unknown ones; if the SMSC gives up waiting
        and closes, its unacknowledged deliver_sm are sent again, as before."""
        if not self._read_paused or self.is_closed:
            return
        # Our answers wait in the socket's buffer: the SMSC is not reading, more enquire_links stay held (and count
        # towards the cap), so a flood of them cannot grow our write buffer either.
        if (
            self._scan is not None
            and not self._write_paused
            and self.session.state is not s.State.CLOSED
            and (self._cut == 0 or self._finish_cut())
        ):
            links = self._take_enquire_links()
            if links:
                for link in links:
                    # The pause's own start as the time: resume_timers counts the paused time as ours, not the link's.
                    self._dispatch(self.session.receive_data(link, self._read_paused_at))
                self._flush()
                self._rearm()
        # _read_paused again: a handler run above may have resumed reading.
        if self._read_paused and len(self._held) > HELD_CAP and not self._transport_paused and not self.is_closed:
            if self._transport is not None and not self._transport.is_closing():
                self._transport_paused = True
                self._transport.pause_reading()

    def _finish_cut(self) -> bool:
        """Give the session the rest of the frame it had started, once held; True when `_held` then starts on a
        frame boundary. That frame was already being read when the pause came, like the rest of a feed chunk."""
        held = self._held
        head = self._cut_head + bytes(held[: 4 - len(self._cut_head)])
        if len(head) < 4:
            return False
        length = int.from_bytes(head, "big")
        if not codec.MIN_PDU_LENGTH <= length <= self.session.framer.max_length:
            self._scan = None  # the session rejects it after resume, as it always did
            return False
        rest = length - self._cut
        if len(held) < rest:
            return False
        frame_end = bytes(held[:rest])
        del held[:rest]
        self._cut = 0
        self._cut_head = b""
        self._dispatch(self.session.receive_data(frame_end, self._read_paused_at))
        self._flush()
        self._rearm()
        return not self.is_closed and self._read_paused and self.session.state is not s.State.CLOSED

    def _take_enquire_links(self) -> list[bytes]:
        """Cut every complete enquire_link out of `_held` past `_scan`; advance `_scan` over the complete frames.
        Only the octets not scanned before are looked at, and rebuilt once: a flood of enquire_links costs linear
        time, not a copy of everything held per enquire_link."""
        held = self._held
        assert self._scan is not None
        start = pos = self._scan
        end = len(held)
        max_length = self.session.framer.max_length
        links: list[bytes] = []
        kept: list[bytes] = []
        kept_from = start
        while end - pos >= 4:
            length = int.from_bytes(held[pos : pos + 4], "big")
            if not codec.MIN_PDU_LENGTH <= length <= max_length:
                self._scan = None  # cannot be resynchronised: left for the session to reject after resume
                break
            if end - pos < length:
                break
            # Only a bare header: an enquire_link with a body is malformed, and the session answers that after resume.
            if length == codec.MIN_PDU_LENGTH and held[pos + 4 : pos + 8] == _ENQUIRE_LINK:
                kept.append(bytes(held[kept_from:pos]))
                links.append(bytes(held[pos : pos + length]))
                kept_from = pos + length
            pos += length
        if links:
            kept.append(bytes(held[kept_from:]))
            held[start:] = b"".join(kept)
            pos -= codec.MIN_PDU_LENGTH * len(links)
        if self._scan is not None:
            self._scan = pos
        return links

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _rearm(self) -> None:
        deadline = self.session.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and not self.is_closed:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        events = self.session.handle_timer(self._loop.time())
        self._dispatch(events)
        self._flush()
        self._rearm()

    def _dispatch(self, events: list[s.Event]) -> None:
        window_moved = False
        for ev in events:
            if isinstance(ev, s.ResponseReceived):
                _resolve(ev.context, ev.response)
                window_moved = True
            elif isinstance(ev, s.RequestReceived):
                try:
                    self._on_request(self, ev.pdu)
                except Exception:  # a handler bug must not kill the connection; the SMSC will redeliver
                    log.exception("request handler failed", extra={"bind": self.name})
            elif isinstance(ev, s.RequestTimedOut):
                _fail(ev.context, RequestTimeoutError(f"no response to seq {ev.sequence_number}"))
                window_moved = True
            elif isinstance(ev, s.RequestOverdue):
                window_moved = True  # the slot is free; the future stays open for a late answer (the grace)
            elif isinstance(ev, s.Bound):
                self.peer_system_id = ev.system_id
                if self._bind_future is not None and not self._bind_future.done():
                    self._bind_future.set_result(ev)
            elif isinstance(ev, s.BindFailed):
                if self._bind_future is not None and not self._bind_future.done():
                    self._bind_future.set_exception(BindError(ev.status, ev.reason))
                self.close(ev.reason)
            elif isinstance(ev, s.Unbound):
                if self._unbind_future is not None and not self._unbind_future.done():
                    self._unbind_future.set_result(None)
                self.close("unbound by peer" if ev.by_peer else "unbound")
            elif isinstance(ev, s.LinkDead):
                log.warning("link dead", extra={"bind": self.name, "reason": ev.reason})
                self.abort(ev.reason)
            elif isinstance(ev, s.ProtocolViolation):
                log.warning("protocol violation", extra={"bind": self.name, "reason": ev.reason, "fatal": ev.fatal})
                if ev.fatal:
                    self._flush()
                    self.close(f"protocol error: {ev.reason}")
        if window_moved and self._on_window is not None:
            self._on_window(self)

    def _finish(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        events = self.session.connection_lost()
        err = ConnectionClosedError(reason)
        for ev in events:
            if isinstance(ev, s.RequestTimedOut):
                _fail(ev.context, err)
        for fut in (self._bind_future, self._unbind_future):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionClosedError(reason))
                fut.exception()  # mark retrieved: nobody may be waiting any more
        self._held.clear()
        self._cut = 0
        self._scan = 0
        self._closed.set()
        self._writable.set()
        if self._on_close is not None:
            self._on_close(self, reason)


def _resolve(context: Any, pdu: Pdu) -> None:
    if isinstance(context, asyncio.Future) and not context.done():
        context.set_result(pdu)


def _fail(context: Any, exc: Exception) -> None:
    if isinstance(context, asyncio.Future) and not context.done():
        context.set_exception(exc)


async def connect(
    host: str,
    port: int,
    session: s.Session,
    *,
    name: str,
    on_request: RequestHandler,
    on_close: Callable[[SmppConnection, str], None] | None = None,
    on_window: Callable[[SmppConnection], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> SmppConnection:
    """Open a TCP (or TLS) connection to an SMSC; the session is not bound yet.

    Raises:
        TlsVerificationError: the SMSC's certificate failed verification (names the reason and the fix).
        OSError, TimeoutError: the SMSC is unreachable (the TLS handshake counts against `timeout` too).
    """
    loop = asyncio.get_running_loop()
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(
                lambda: SmppConnection(
                    session, name=name, on_request=on_request, on_close=on_close, on_window=on_window
                ),
                host,
                port,
                ssl=ssl_context,
            ),
            timeout,
        )
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or exc.reason or str(exc)
        raise TlsVerificationError(
            f"TLS certificate verification failed for {host}:{port}: {reason} (trust the SMSC's CA with"
            " tls_ca_file; tls_verify = false turns verification off)"
        ) from exc
    return proto
