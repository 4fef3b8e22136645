"""Outbound dispatch for one SMSC: the wiring of its binds to admission, the send buffer and response handling.

Rule of this module: this file only wires. Which claimed rows may be sent is `admission.py`; how many wait and
for how long (cap, leases) is `send_buffer.py`; what an answer means is `response_outcome.py`. Every claimed
row leaves through exactly one writer call (mark, settle) or, on a crash, through the lease reaper. Just before
the submit_sm of a row taken from the buffer, a consent change announced since its admission sends the row
back to the queue instead (it is admitted again, with a fresh consent lookup). The split follows River:
producer (router + admission), executor (one submit_sm per bind), batch completer (`results.py`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial

import asyncpg

from gateway import metrics
from gateway.admission import Admission
from gateway.clean import clean_text
from gateway.error_policy import ErrorPolicy
from gateway.inbound import InboundHandler
from gateway.rate_share import Share
from gateway.response_outcome import Action, GroupOutcome, Outcome, response_outcome, settle_failure
from gateway.results import ResultWriter
from gateway.send_buffer import RENEW_EVERY, Item, SendBuffer, buffer_cap
from gateway.settings import DispatcherSettings, SmscSettings
from gateway.smpp import session as smpp_session
from gateway.smpp.client import BindError, ConnectionClosedError, SmppConnection, connect, tls_context
from gateway.smpp.codec import PduEncodeError
from gateway.smpp.pdu import (
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    Pdu,
    SubmitSm,
    _Bind,
)
from gateway.smpp.receipt import msgid_key
from gateway.status import Reason, Status
from keywords.config import ShortCodeKeywords
from keywords.consent_watch import ConsentWatch
from throughput import AdaptiveRate, TokenBucket

log = logging.getLogger(__name__)

# Scheduler lag the pacing buckets forgive (see throughput.token_bucket): keeps 1-second counts exact at
# high rates; at most a few extra sends back to back after a late wake-up.
PACING_CATCH_UP = 0.01
# While the consent listener is disconnected, rows go back to the queue for this long before the next try.
_CONSENT_DOWN_WAIT_S = 1.0


def bind_failure_reason(exc: BaseException) -> str:
    """A failed connect + bind as a bounded label (metrics.BIND_FAILURE_REASONS)."""
    if isinstance(exc, BindError):
        return "timeout" if exc.status < 0 else "refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionClosedError):
        return "connection_closed"
    if isinstance(exc, OSError):
        return "connection_error"
    if isinstance(exc, PduEncodeError):
        return "encode_error"
    return "other"


_RECONNECT_PREFIXES = (
    ("no enquire_link_resp", "link_dead"),
    ("unbound by peer", "unbound_by_peer"),
    ("connection closed by peer", "closed_by_peer"),
    ("connection lost", "connection_error"),
    ("protocol error", "protocol_error"),
    ("session error", "session_error"),
)


def reconnect_reason(close_reason: str) -> str:
    """Why a bound session ended, as a bounded label (metrics.RECONNECT_REASONS)."""
    for prefix, label in _RECONNECT_PREFIXES:
        if close_reason.startswith(prefix):
            return label
    return "other"


class BindWorker:
    """One bind to the SMSC: connect, bind, send while bound, re-bind with back-off and jitter."""

    def __init__(self, dispatcher: SmscDispatcher, index: int, bind_class: type[_Bind] = BindTransceiver) -> None:
        self.d = dispatcher
        self.bind_class = bind_class
        suffix = {BindTransmitter: "tx", BindReceiver: "rx"}.get(bind_class, "")
        self.name = f"{dispatcher.name}-{suffix}{index}"
        smsc = dispatcher.smsc
        self.bucket = TokenBucket(smsc.bind_tps, smsc.burst, catch_up=PACING_CATCH_UP)
        # Metric children bound once (a `labels()` lookup costs about a microsecond: not per message).
        labels = (dispatcher.name, self.name)
        self.pdu_counts = metrics.pdu_counts(*labels)
        self.m_accepted = metrics.SUBMIT_RESPONSES.labels(*labels, "ESME_ROK")
        self.m_throttled = metrics.THROTTLED.labels(*labels)
        metrics.WINDOW_SIZE.labels(*labels).set(smsc.window)
        self.conn: SmppConnection | None = None
        self._current: Item | None = None  # a multi-part message whose parts are being sent on this bind
        self._wake = asyncio.Event()
        self._stopping = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"bind-{self.name}")

    def wake(self, _conn: SmppConnection | None = None) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """submit_sm awaiting an answer on this bind, late ones (past the timeout, within the grace) included."""
        return self.conn.session.awaiting if self.conn is not None else 0

    async def _run(self) -> None:
        smsc = self.d.smsc
        backoff = smsc.reconnect_min
        loop = asyncio.get_running_loop()
        while not self._stopping:
            conn: SmppConnection | None = None
            try:
                session = smpp_session.Session(
                    window=smsc.window,
                    response_timeout=smsc.response_timeout,
                    late_grace=smsc.late_response_grace,
                    bind_timeout=smsc.bind_timeout,
                    enquire_link_interval=smsc.enquire_link_interval,
                    pdu_counts=self.pdu_counts,
                )
                conn = await connect(
                    smsc.host,
                    smsc.port,
                    session,
                    name=self.name,
                    on_request=self.d.inbound,
                    on_close=self._on_close,
                    on_window=self.wake,
                    ssl_context=self.d.ssl_context,
                    timeout=smsc.connect_timeout,
                )
                bound = await conn.bind(
                    self.bind_class(
                        system_id=smsc.system_id,
                        password=smsc.resolved_password(),
                        system_type=smsc.system_type,
                        interface_version=smsc.interface_version,
                    )
                )
            except (OSError, TimeoutError, BindError, ConnectionClosedError, PduEncodeError) as exc:
                # PduEncodeError: a bind field the SMSC cannot take (settings validate lengths; keep retrying
                # with back-off rather than losing the bind task).
                if conn is not None:
                    conn.abort("bind failed")
                delay = backoff * random.uniform(0.5, 1.0)
                log.warning(
                    "bind failed",
                    extra={
                        "smsc": self.d.name, "bind": self.name,
                        "error": str(exc) or type(exc).__name__, "retry_s": delay,
                    },
                )
                self.d.note_error(f"{self.name}: bind failed: {str(exc) or type(exc).__name__}")
                metrics.BIND_FAILURES.labels(self.d.name, self.name, bind_failure_reason(exc)).inc()
                backoff = min(backoff * 2, smsc.reconnect_max)
                await self._sleep(delay)
                continue
            log.info("bound", extra={"smsc": self.d.name, "bind": self.name, "smsc_system_id": bound.system_id})
            backoff = smsc.reconnect_min
            self.conn = conn
            # Its reading pauses with every other connection's while the result writer is behind (flow_control.py).
            self.d.writer.flow.register(conn)
            metrics.BIND_UP.labels(self.d.name, self.name).set(1)
            metrics.BINDS.labels(self.d.name, self.name).inc()
            self.d.wake_router()
            await self._send_loop(conn, loop)
            if self._stopping:
                return  # stop() unbinds; the connection stays up for late responses and receipts
            metrics.BIND_UP.labels(self.d.name, self.name).set(0)
            log.warning("bind lost", extra={"smsc": self.d.name, "bind": self.name, "reason": conn.close_reason})
            self.d.note_error(f"{self.name}: bind lost: {conn.close_reason}")
            metrics.RECONNECTS.labels(self.d.name, self.name, reconnect_reason(conn.close_reason)).inc()
            self.conn = None
            self._drop_current(Reason.CONNECTION_LOST)
            self.d.bind_lost()
            await self._sleep(smsc.reconnect_min * random.uniform(0.5, 1.0))

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    def _on_close(self, conn: SmppConnection, reason: str) -> None:
        self.d.writer.flow.unregister(conn)
        self._wake.set()

    async def _send_loop(self, conn: SmppConnection, loop: asyncio.AbstractEventLoop) -> None:
        d = self.d
        while not conn.is_closed and not self._stopping:
            if not conn.can_submit:
                await self._sleep(1.0)
                continue
            now = loop.time()
            # The bind's own limit and the account's (shared by its binds and split between instances).
            delay = max(self.bucket.delay(now), d.account_bucket.delay(now))
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            item, self._current = self._current, None
            if item is None:
                item = d.take(now)
                if item is None:
                    await d.wait_ready(1.0)
                    continue
                if d.consent_changed(item, self, now):
                    continue  # given back before any token was spent on it
            self.bucket.take(now)
            d.account_bucket.take(now)
            seq, pdu = item.parts[0]
            try:
                fut = conn.send_request(pdu)
            except (smpp_session.NotBoundError, smpp_session.WindowFullError):
                d.push_front(item)
                continue
            except PduEncodeError as exc:
                d.part_failed(item, seq, Outcome(Action.FAIL, reason=f"{Reason.ENCODE_ERROR}: {exc}"), bind=self)
                continue
            fut.add_done_callback(partial(d.on_response, item, seq, pdu, self, now))
            if len(item.parts) > 1:
                # The next part goes next on this same bind, so the handset gets the parts in order.
                self._current = item.rest()
            if d.ready_count == 0 or not conn.can_submit:
                await asyncio.sleep(0)  # let responses in before the next batch

    def stop_sending(self) -> None:
        """Send nothing more; the connection stays up for responses and receipts until `stop`."""
        self._stopping = True
        self._wake.set()
        self._drop_current(Reason.RELEASED_ON_SHUTDOWN)

    def _drop_current(self, reason: str) -> None:
        """Parts of a message left unsent on this bind: the whole message goes back to the queue."""
        if self._current is not None:
            item, self._current = self._current, None
            for seq, _ in item.parts:
                self.d.part_failed(item, seq, Outcome(Action.RETRY, reason=reason, immediate=True), bind=self)

    async def stop(self, timeout: float) -> None:
        """Stop sending, unbind cleanly (bounded) and end the task."""
        self.stop_sending()
        if self.conn is not None:
            await self.conn.unbind(timeout)
            metrics.BIND_UP.labels(self.d.name, self.name).set(0)
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


class SmscDispatcher:
    """One SMSC account: its binds, the rows the router handed it, and what the SMSC answers."""

    def __init__(
        self,
        name: str,
        smsc: SmscSettings,
        settings: DispatcherSettings,
        pool: asyncpg.Pool,
        writer: ResultWriter,
        *,
        consent_watch: ConsentWatch | None = None,
        keywords: Mapping[str, ShortCodeKeywords] | None = None,
    ) -> None:
        self.name = name
        self.smsc = smsc
        self.settings = settings
        self.pool = pool
        self.writer = writer
        # Consent changes announced since rows were admitted (fed by the gateway's NOTIFY listener).
        self.consent_watch = consent_watch
        self.inbound = InboundHandler(name, smsc, writer)
        self.admission = Admission(name, smsc, settings, pool, writer, keywords=keywords)  # keywords: list caps
        self.buffer = SendBuffer(settings.lease_seconds, self._give_back)
        self.ssl_context: ssl.SSLContext | None = (
            tls_context(smsc.tls_ca_file, verify=smsc.tls_verify, smsc=name) if smsc.tls else None
        )
        # Live instances the account rate is split between, once this one's share is settled (rate_share.py).
        self.instances = 1
        self.policy = ErrorPolicy.from_config(smsc.error_classes)
        self.adaptive = AdaptiveRate(smsc.tps)
        self.account_bucket = TokenBucket(smsc.tps, smsc.burst, catch_up=PACING_CATCH_UP)
        # This instance's grant of the account rate and until when (loop time) it holds (gateway/rate_share.py):
        # none before the first heartbeat, so nothing is sent before the other instances can know of this one.
        self.rate_grant = 0.0
        self._grant_valid_until = -math.inf
        if smsc.tps:
            self.account_bucket.close()
        metrics.EFFECTIVE_RATE.labels(name).set(smsc.tps)
        metrics.CONFIGURED_RATE.labels(name, "account").set(smsc.tps)
        metrics.CONFIGURED_RATE.labels(name, "bind").set(smsc.bind_tps)
        self.m_submitted = metrics.SUBMITTED.labels(name)
        self.m_timeouts = metrics.SUBMIT_TIMEOUTS.labels(name)
        self.m_rtt = metrics.SUBMIT_RTT.labels(name)
        self.m_queue_wait = metrics.QUEUE_WAIT.labels(name)
        self.m_reply_latency = metrics.REPLY_LATENCY.labels(name)
        if smsc.bind_mode == "pair":
            self.binds = [BindWorker(self, i, BindTransmitter) for i in range(smsc.binds)]
            self.binds += [BindWorker(self, i, BindReceiver) for i in range(smsc.receivers)]
        else:
            self.binds = [BindWorker(self, i) for i in range(smsc.binds)]
        self.wake_router: Callable[[], None] = lambda: None  # set by the router that feeds this dispatcher
        # The last bind failure / loss / session error and its time, written to the database by the maintenance
        # heartbeat for the status page and `smsgw status` (gateway/ops_status.py).
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self._stopping = False
        self._renewer: asyncio.Task[None] | None = None

    # -- ready buffer --------------------------------------------------------------------------------

    @property
    def ready_count(self) -> int:
        return len(self.buffer)

    def take(self, now: float | None = None) -> Item | None:
        """The next row to send (None when empty); wakes the router when the buffer is half empty."""
        if now is None:
            now = asyncio.get_running_loop().time()
        item = self.buffer.take(now)
        if len(self.buffer) <= self._target() // 2:
            self.wake_router()
        return item

    def push_front(self, item: Item) -> None:
        self.buffer.push_front(item)

    async def wait_ready(self, timeout: float) -> None:
        await self.buffer.wait(timeout)

    def _send_rate(self) -> float:
        """Messages per second this instance may send to the SMSC now (0: no limit)."""
        tx = sum(1 for b in self.binds if b.conn is not None and b.conn.session.can_transmit)
        rates = [r for r in (self.account_bucket.rate, self.smsc.bind_tps * tx) if r > 0]
        return min(rates) if rates else 0.0

    def _target(self) -> int:
        """How many prepared rows to hold: a window's worth per transmitting bind, at most one second of the
        rate, and never more than can be sent within a fraction of the lease (send_buffer.buffer_cap)."""
        windows = sum(b.conn.session.window for b in self.binds if b.conn is not None and b.conn.session.can_transmit)
        s = self.settings
        return buffer_cap(windows, self._send_rate(), s.lease_seconds, s.lease_buffer_fraction)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        for b in self.binds:
            b.start()
        self._renewer = asyncio.create_task(self._renew_loop(), name=f"lease-renewer-{self.name}")

    async def _renew_loop(self) -> None:
        """Renew the leases of rows held here (buffered, being sent, awaiting a response) before they expire."""
        loop = asyncio.get_running_loop()
        period = max(0.05, self.settings.lease_seconds * RENEW_EVERY)
        while True:
            await asyncio.sleep(period)
            try:
                await self.buffer.renew(self.pool, loop.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be restarting; rows near expiry are handed back unsent
                log.warning("lease renewal failed", extra={"smsc": self.name, "error": f"{type(exc).__name__}: {exc}"})

    @property
    def binds_up(self) -> int:
        """Binds connected and bound now (transmitters and receivers alike)."""
        return sum(1 for b in self.binds if b.conn is not None and not b.conn.is_closed)

    def note_error(self, text: str) -> None:
        """Remember the last bind error for the heartbeat (text clipped: it comes partly from the SMSC)."""
        self.last_error = clean_text(text[:500])  # a NUL from the SMSC would make Postgres refuse the heartbeat
        self.last_error_at = datetime.now(UTC)

    @property
    def is_up(self) -> bool:
        """At least one bind can transmit."""
        return any(b.conn is not None and b.conn.session.can_transmit for b in self.binds)

    @property
    def free_capacity(self) -> int:
        """Rows the router may hand over now (throttled rows waiting to be sent again count as held)."""
        return max(0, self._target() - len(self.buffer)) if not self._stopping else 0

    def busy_delay(self) -> float:
        """How long a row for this SMSC waits in the queue when the buffer is full: about the time to send
        half of what is buffered, within [0.1 s, the lease fraction]."""
        rate = self._send_rate()
        if rate <= 0:
            return 0.1
        s = self.settings
        return min(max(0.1, len(self.buffer) / rate / 2), s.lease_seconds * s.lease_buffer_fraction)

    def bind_lost(self) -> None:
        """A bind went down. With none left, give the waiting rows back so the router can send them
        through another SMSC (or hold them in the queue until this one is back)."""
        if self.is_up or self._stopping:
            return
        released = self.buffer.drain()
        for item in released:
            self._settle(item, Status.QUEUED, reason=Reason.SMSC_DOWN, attempts_delta=-1, smsc=self.name)
        if released:
            log.warning("all binds down; rows released for re-routing",
                        extra={"smsc": self.name, "rows": len(released)})
        self.wake_router()

    async def accept(self, rows: list[tuple[str, asyncpg.Record]], lease_until: float | None = None) -> None:
        """Admit claimed rows (validation, consent, quiet hours) and buffer the ones to send.

        `lease_until`: loop time at which their claim runs out (taken before the claim statement).
        """
        if lease_until is None:
            lease_until = asyncio.get_running_loop().time() + self.settings.lease_seconds
        self.buffer.add(await self.admission.admit(rows, lease_until))

    def consent_changed(self, item: Item, bind: BindWorker, now: float) -> bool:
        """True (and the row is given back) when its number's consent changed since it was admitted."""
        watch = self.consent_watch
        if watch is None:
            return False
        # A row held longer than the watch remembers changes is looked up again whatever the watch says.
        stale = now - item.admitted_at > watch.keep_seconds
        if not stale and not watch.must_recheck(item.msg.source, item.parts[0][1].destination_addr,
                                                item.admitted_at):
            return False
        log.info("consent changed while buffered; row goes back for a new lookup",
                 extra={"row": item.msg.id, "smsc": self.name})
        if item.group is None or (item.group.untouched and len(item.parts) == item.group.total):
            # Listener down: the row waits in the queue (not a hot claim loop) until changes can be seen again.
            self._give_back(item, Reason.CONSENT_CHANGED, delay=_CONSENT_DOWN_WAIT_S if watch.down else 0.0)
        else:  # parts already went: the rest is not sent, the message is settled when the others answer
            for seq, _ in item.parts:
                self.part_failed(item, seq, Outcome(Action.RETRY, reason=Reason.CONSENT_CHANGED, immediate=True),
                                 bind=bind)
        return True

    # -- writer calls (each ends a claim: the lease is no longer renewed) ----------------------------

    def _settle(self, item: Item, status: str, **kwargs: object) -> None:
        self.buffer.release(item)
        self.writer.settle(item.msg.id, item.token, status, **kwargs)  # type: ignore[arg-type]

    def _give_back(self, item: Item, reason: str, delay: float = 0.0) -> None:
        """Back to the queue (at once by default), the attempt not counted: the row was not sent."""
        self._settle(item, Status.QUEUED, reason=reason, attempts_delta=-1, delay=delay)

    # -- responses -----------------------------------------------------------------------------------

    def on_response(
        self, item: Item, seq: int, pdu: SubmitSm, bind: BindWorker, sent_at: float, fut: asyncio.Future[Pdu]
    ) -> None:
        """Done-callback of one submit_sm future: turn the answer into a writer call (or a resend)."""
        exc = fut.exception()
        resp = fut.result() if exc is None else None
        outcome = response_outcome(resp, exc, self.policy)
        loop_now = asyncio.get_running_loop().time()
        if resp is None:
            self.m_timeouts.inc()
        else:
            self.m_rtt.observe(loop_now - sent_at)
        if outcome.action is Action.ACCEPT:
            assert resp is not None
            if self.adaptive.accepted(loop_now):
                self._apply_rate(loop_now)
            self.m_submitted.inc()
            bind.m_accepted.inc()
            key = msgid_key(resp.message_id, self.smsc.submit_id_format)
            if item.group is None:
                self.buffer.release(item)
                self._observe_submitted(item)
                self.writer.mark_submitted(item.msg.id, item.token, self.name, outcome.message_id, key, bind.name)
            else:
                self._group_done(item, item.group.accept(seq, outcome.message_id, key), bind)
            return
        if resp is not None and outcome.error_code is not None:
            status = metrics.status_label(outcome.error_code)
            metrics.SUBMIT_ERRORS.labels(self.name, status).inc()
            metrics.SUBMIT_RESPONSES.labels(self.name, bind.name, status).inc()
        if outcome.action is Action.THROTTLE:
            bind.m_throttled.inc()
            # Not a failure: slow the account down (AIMD) and send the same part again (it counts as held).
            if self.adaptive.throttled(loop_now):
                self._apply_rate(loop_now)
                rate = round(self.adaptive.rate, 1)
                log.info("throttled by SMSC; rate lowered", extra={"smsc": self.name, "rate": rate})
            self.push_front(item.only(seq, pdu))
            return
        if outcome.rebind:
            # The bind itself is wrong (bind state, command length...): the message is fine, the link is not.
            log.warning("session error from SMSC; re-binding",
                        extra={"smsc": self.name, "bind": bind.name, "status": outcome.reason})
            self.note_error(f"{bind.name}: session error: {outcome.reason}")
            if bind.conn is not None:
                bind.conn.close(f"session error {outcome.reason}")
        self.part_failed(item, seq, outcome, bind=bind)

    def part_failed(self, item: Item, seq: int, outcome: Outcome, *, bind: BindWorker) -> None:
        """One part (or the only one) was not accepted: retry the message later, or fail it."""
        if item.group is not None:
            self._group_done(item, item.group.fail(seq, outcome), bind)
        else:
            self._settle_failure(item, outcome, bind)

    def _group_done(self, item: Item, done: GroupOutcome | None, bind: BindWorker) -> None:
        if done is None:
            return  # other parts have not answered yet
        if done.action is Action.ACCEPT:
            self.buffer.release(item)
            self._observe_submitted(item)
            assert item.group is not None
            self.writer.mark_parts_submitted(item.msg.id, item.token, self.name, item.group.total, list(done.parts),
                                             bind.name)
        else:
            assert done.deciding is not None
            self._settle_failure(item, done.deciding, bind)

    def _observe_submitted(self, item: Item) -> None:
        """Enqueue -> submit (and MO -> reply for a keyword reply) latency, at mark time."""
        waited = time.time() - item.msg.created_at.timestamp()
        self.m_queue_wait.observe(waited)
        if item.msg.inbound_message_id is not None:
            self.m_reply_latency.observe(waited)

    def _settle_failure(self, item: Item, outcome: Outcome, bind: BindWorker) -> None:
        s = self.settings
        end = settle_failure(outcome, item.msg.attempts, max_attempts=s.max_attempts, retry_base=s.retry_base,
                             retry_max=s.retry_max)
        self._settle(item, end.status, delay=end.delay, error_code=end.error_code, reason=end.reason,
                     bind=bind.name, smsc=self.name)

    def _apply_rate(self, now: float) -> None:
        """The account bucket runs at the adaptive rate, below this instance's grant when the account has a rate;
        closed without a grant, and once the grant's fence has passed (gateway/rate_share.py)."""
        rate = self.adaptive.rate
        if self.smsc.tps:
            rate = min(rate, self.rate_grant)
            if rate <= 0:
                self.account_bucket.close()  # a bucket rate of 0 would mean "no limit"
            else:
                self.account_bucket.set_rate(rate, now)
                self.account_bucket.open(self._grant_valid_until, now)
        else:
            self.account_bucket.set_rate(rate, now)
        metrics.EFFECTIVE_RATE.labels(self.name).set(rate)

    def set_rate_share(self, share: Share, valid_until: float | None) -> None:
        """Apply this instance's grant of the account rate (gateway/rate_share.py). `valid_until` (loop time)
        renews the grant's fence after a committed heartbeat; None keeps it (a lower grant applied before the
        heartbeat commits)."""
        if not self.smsc.tps:
            return  # no account rate: nothing to split, nothing to fence
        if valid_until is not None:
            self._grant_valid_until = valid_until
        old, grant = self.rate_grant, share.rate
        self.rate_grant = grant
        if grant > 0:
            # The split is not congestion: a rate held down only by the old grant follows the new one at once;
            # a rate lowered by throttling stays where it is and climbs back by AIMD, up to the grant.
            self.adaptive.rate = grant if self.adaptive.rate >= old else min(self.adaptive.rate, grant)
            self.adaptive.ceiling = grant
        if share.settled:
            self.instances = share.members
        self._apply_rate(asyncio.get_running_loop().time())
        if grant != old:
            log.info("account rate share", extra={"smsc": self.name, "rate": grant, "instances": share.members,
                                                  "reason": share.reason.value})

    # -- shutdown ------------------------------------------------------------------------------------

    def stop_sending(self) -> None:
        """Stop the senders; give back every claimed row not yet sent (attempt not counted)."""
        self._stopping = True
        for b in self.binds:
            b.stop_sending()
        for item in self.buffer.drain():
            self._give_back(item, Reason.RELEASED_ON_SHUTDOWN)

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.binds)

    async def stop_binds(self, timeout: float) -> None:
        await asyncio.gather(*(b.stop(timeout) for b in self.binds))
        if self._renewer is not None:
            self._renewer.cancel()
            try:
                await self._renewer
            except asyncio.CancelledError:
                pass
