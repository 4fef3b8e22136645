"""Outbound dispatch for one SMSC: claimer -> ready buffer -> per-bind senders -> result writer.

Rule of this module: the claimer takes only as many rows as the bound binds' windows can carry, so
claimed rows never pile up in memory; every claimed row leaves through exactly one writer call
(mark, settle) or, on a crash, through the lease reaper. The split follows River: producer (claimer,
knows free slots), executor (one submit_sm), batch completer (`results.py`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import asyncpg

from gateway import metrics
from gateway.error_policy import ErrorClass, ErrorPolicy, backoff
from gateway.inbound import InboundHandler
from gateway.message import ClaimedMessage, Rejection, consent_refusal, prepare
from gateway.quiet_hours import next_allowed
from gateway.results import ResultWriter
from gateway.settings import DispatcherSettings, SmscSettings
from gateway.smpp import session as smpp_session
from gateway.smpp.client import BindError, ConnectionClosedError, RequestTimeoutError, SmppConnection, connect
from gateway.smpp.codec import PduEncodeError
from gateway.smpp.pdu import (
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    GenericNack,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    _Bind,
    status_name,
)
from gateway.smpp.receipt import msgid_key
from keywords import sql as consent_sql
from throughput import AdaptiveRate, TokenBucket

log = logging.getLogger(__name__)

# Scheduler lag the pacing buckets forgive (see throughput.token_bucket): keeps 1-second counts exact at
# high rates; at most a few extra sends back to back after a late wake-up.
PACING_CATCH_UP = 0.01


@dataclass(slots=True)
class _Parts:
    """Outcome of each part of a multi-part message; the row is settled once every part has answered."""

    total: int
    accepted: dict[int, tuple[str, str]] = field(default_factory=dict)  # seq -> (message id, key)
    failed: dict[int, tuple[int | None, str, bool]] = field(default_factory=dict)  # seq -> (status, reason, retry)
    settled: bool = False


@dataclass(slots=True)
class _Item:
    """A claimed row ready to send: its parts still to send (seq, pdu), in order, on one bind."""

    msg: ClaimedMessage
    token: str
    parts: list[tuple[int, SubmitSm]]
    group: _Parts | None = None  # None: a single-part message


class BindWorker:
    """One bind to the SMSC: connect, bind, send while bound, re-bind with back-off and jitter."""

    def __init__(self, dispatcher: SmscDispatcher, index: int, bind_class: type[_Bind] = BindTransceiver) -> None:
        self.d = dispatcher
        self.bind_class = bind_class
        suffix = {BindTransmitter: "tx", BindReceiver: "rx"}.get(bind_class, "")
        self.name = f"{dispatcher.name}-{suffix}{index}"
        smsc = dispatcher.smsc
        self.bucket = TokenBucket(smsc.bind_tps, smsc.burst, catch_up=PACING_CATCH_UP)
        self.conn: SmppConnection | None = None
        self._current: _Item | None = None  # a multi-part message whose parts are being sent on this bind
        self._wake = asyncio.Event()
        self._stopping = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"bind-{self.name}")

    def wake(self, _conn: SmppConnection | None = None) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return self.conn.session.in_flight if self.conn is not None else 0

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
                    bind_timeout=smsc.bind_timeout,
                    enquire_link_interval=smsc.enquire_link_interval,
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
                    "bind failed", extra={"bind": self.name, "error": str(exc) or type(exc).__name__, "retry_s": delay}
                )
                backoff = min(backoff * 2, smsc.reconnect_max)
                await self._sleep(delay)
                continue
            log.info("bound", extra={"bind": self.name, "smsc_system_id": bound.system_id})
            backoff = smsc.reconnect_min
            self.conn = conn
            metrics.BIND_UP.labels(self.d.name, self.name).set(1)
            self.d.wake_router()
            await self._send_loop(conn, loop)
            if self._stopping:
                return  # stop() unbinds; the connection stays up for late responses and receipts
            metrics.BIND_UP.labels(self.d.name, self.name).set(0)
            log.warning("bind lost", extra={"bind": self.name, "reason": conn.close_reason})
            self.conn = None
            self._drop_current("connection_lost")
            self.d.bind_lost()
            await self._sleep(smsc.reconnect_min * random.uniform(0.5, 1.0))

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    def _on_close(self, conn: SmppConnection, reason: str) -> None:
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
            item = self._current or d.take()
            self._current = None
            if item is None:
                await d.wait_ready(1.0)
                continue
            self.bucket.take(now)
            d.account_bucket.take(now)
            seq, pdu = item.parts[0]
            try:
                fut = conn.send_request(pdu)
            except (smpp_session.NotBoundError, smpp_session.WindowFullError):
                d.push_front(item)
                continue
            except PduEncodeError as exc:
                d.part_failed(item, seq, None, f"encode_error: {exc}", retry=False, bind=self)
                continue
            fut.add_done_callback(partial(d.on_response, item, seq, pdu, self, now))
            if len(item.parts) > 1:
                # The next part goes next on this same bind, so the handset gets the parts in order.
                self._current = _Item(item.msg, item.token, item.parts[1:], item.group)
            if d.ready_count == 0 or not conn.can_submit:
                await asyncio.sleep(0)  # let responses in before the next batch

    def stop_sending(self) -> None:
        """Send nothing more; the connection stays up for responses and receipts until `stop`."""
        self._stopping = True
        self._wake.set()
        self._drop_current("released_on_shutdown")

    def _drop_current(self, reason: str) -> None:
        """Parts of a message left unsent on this bind: the whole message goes back to the queue."""
        if self._current is not None:
            item, self._current = self._current, None
            for seq, _ in item.parts:
                self.d.part_failed(item, seq, None, reason, retry=True, bind=self, immediate=True)

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
    ) -> None:
        self.name = name
        self.smsc = smsc
        self.settings = settings
        self.pool = pool
        self.writer = writer
        self.inbound = InboundHandler(name, smsc, writer)
        self.ssl_context = ssl.create_default_context(cafile=smsc.tls_ca_file) if smsc.tls else None
        self.instances = 1
        self.policy = ErrorPolicy.from_config(smsc.error_classes)
        self.adaptive = AdaptiveRate(smsc.tps)
        self.account_bucket = TokenBucket(smsc.tps, smsc.burst, catch_up=PACING_CATCH_UP)
        metrics.EFFECTIVE_RATE.labels(name).set(smsc.tps)
        if smsc.bind_mode == "pair":
            self.binds = [BindWorker(self, i, BindTransmitter) for i in range(smsc.binds)]
            self.binds += [BindWorker(self, i, BindReceiver) for i in range(smsc.receivers)]
        else:
            self.binds = [BindWorker(self, i) for i in range(smsc.binds)]
        self._ready: collections.deque[_Item] = collections.deque()
        self._ready_event = asyncio.Event()
        self.wake_router: Callable[[], None] = lambda: None  # set by the router that feeds this dispatcher
        self._stopping = False

    # -- ready buffer --------------------------------------------------------------------------------

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def take(self) -> _Item | None:
        if not self._ready:
            self._ready_event.clear()
            return None
        item = self._ready.popleft()
        if len(self._ready) <= self._target() // 2:
            self.wake_router()
        return item

    def push_front(self, item: _Item) -> None:
        self._ready.appendleft(item)
        self._ready_event.set()

    async def wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except TimeoutError:
            pass

    def _target(self) -> int:
        """How many prepared rows to hold: one window's worth per transmitting bind (less when paced)."""
        total = sum(b.conn.session.window for b in self.binds if b.conn is not None and b.conn.session.can_transmit)
        if self.smsc.tps:
            total = min(total, max(1, int(self.smsc.tps)))
        return total

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        for b in self.binds:
            b.start()

    @property
    def is_up(self) -> bool:
        """At least one bind can transmit."""
        return any(b.conn is not None and b.conn.session.can_transmit for b in self.binds)

    @property
    def free_capacity(self) -> int:
        """Rows the router may hand over now."""
        return max(0, self._target() - len(self._ready)) if not self._stopping else 0

    def bind_lost(self) -> None:
        """A bind went down. With none left, give the waiting rows back so the router can send them
        through another SMSC (or hold them in the queue until this one is back)."""
        if self.is_up or self._stopping:
            return
        released = 0
        while self._ready:
            item = self._ready.popleft()
            self.writer.settle(item.msg.id, item.token, "queued", reason="smsc_down", attempts_delta=-1,
                               smsc=self.name)
            released += 1
        if released:
            log.warning("all binds down; rows released for re-routing", extra={"smsc": self.name, "rows": released})
        self.wake_router()

    async def accept(self, rows: list[tuple[str, asyncpg.Record]]) -> None:
        """Validate and encode claimed rows, enforce consent with one lookup for the batch, queue the rest."""
        now = datetime.now(UTC)
        prepared: list[_Item] = []
        for token, record in rows:
            msg = ClaimedMessage.model_validate(dict(record))
            result = prepare(msg, self.smsc, self.settings.default_region, now, self.settings.max_segments)
            if isinstance(result, Rejection):
                self._reject(msg, token, result)
                continue
            group = _Parts(len(result)) if len(result) > 1 else None
            prepared.append(_Item(msg, token, list(enumerate(result, 1)), group))
        if not prepared:
            return
        checks = await self.pool.fetch(
            consent_sql.CONSENT_CHECK,
            [it.msg.source.strip() for it in prepared],
            [it.parts[0][1].destination_addr for it in prepared],
            [it.msg.list_name for it in prepared],
            timeout=30,
        )
        for check in checks:
            item = prepared[check["i"] - 1]
            refusal = consent_refusal(item.msg, opted_out=check["opted_out"], subscribed=check["subscribed"])
            if refusal is not None:
                self._reject(item.msg, item.token, refusal)
            elif not self._outside_quiet_hours(item, now):
                continue
            else:
                self._ready.append(item)
        if self._ready:
            self._ready_event.set()

    def _outside_quiet_hours(self, item: _Item, now: datetime) -> bool:
        """Marketing to a recipient whose local time is in quiet hours waits (not fails) until it is not."""
        s = self.settings
        if not s.quiet_hours or item.msg.message_class != "marketing":
            return True
        when = next_allowed(
            item.parts[0][1].destination_addr, now, start=s.quiet_hours_start, end=s.quiet_hours_end,
            default_tz=s.quiet_hours_default_tz,
        )
        if when is None:
            return True
        self.writer.settle(
            item.msg.id, item.token, "queued", delay=(when - now).total_seconds(), reason="quiet_hours",
            attempts_delta=-1,
        )
        return False

    def _reject(self, msg: ClaimedMessage, token: str, rejection: Rejection) -> None:
        metrics.REJECTED.labels(rejection.reason).inc()
        self.writer.settle(msg.id, token, rejection.status, reason=rejection.reason, smsc=self.name)

    # -- responses -----------------------------------------------------------------------------------

    def on_response(
        self, item: _Item, seq: int, pdu: SubmitSm, bind: BindWorker, sent_at: float, fut: asyncio.Future[Pdu]
    ) -> None:
        """Done-callback of one submit_sm future: turn the answer into a writer call (or a resend)."""
        exc = fut.exception()
        if exc is not None:
            metrics.SUBMIT_TIMEOUTS.labels(self.name).inc()
            # Ambiguous: the SMSC may have the message. The attempt is recorded; retry within max_attempts.
            reason = "response_timeout" if isinstance(exc, RequestTimeoutError) else "connection_lost"
            self.part_failed(item, seq, None, reason, retry=True, bind=bind,
                             immediate=isinstance(exc, ConnectionClosedError))
            return
        resp = fut.result()
        loop_now = asyncio.get_running_loop().time()
        metrics.SUBMIT_RTT.labels(self.name).observe(loop_now - sent_at)
        status = resp.command_status
        if status == 0 and isinstance(resp, SubmitSmResp):
            if self.adaptive.accepted(loop_now):
                self._apply_rate(loop_now)
            metrics.SUBMITTED.labels(self.name).inc()
            key = msgid_key(resp.message_id, self.smsc.submit_id_format)
            if item.group is None:
                self.writer.mark_submitted(item.msg.id, item.token, self.name, resp.message_id, key, bind.name)
            else:
                item.group.accepted[seq] = (resp.message_id, key)
                self._settle_parts(item, bind)
            return
        if status == 0:  # generic_nack with status 0, or a wrong response type: treat as a system error
            status = 0x08 if not isinstance(resp, GenericNack) else 0xFF
        metrics.SUBMIT_ERRORS.labels(self.name, status_name(status)).inc()
        kind = self.policy.classify(status)
        if kind is ErrorClass.THROTTLE:
            # Not a failure: slow the account down (AIMD) and send the same part again.
            if self.adaptive.throttled(loop_now):
                self._apply_rate(loop_now)
                rate = round(self.adaptive.rate, 1)
                log.info("throttled by SMSC; rate lowered", extra={"smsc": self.name, "rate": rate})
            self.push_front(_Item(item.msg, item.token, [(seq, pdu)], item.group))
            return
        if kind is ErrorClass.SESSION:
            # The bind itself is wrong (bind state, command length...): the message is fine, the link is not.
            log.warning("session error from SMSC; re-binding", extra={"bind": bind.name, "status": status_name(status)})
            if bind.conn is not None:
                bind.conn.close(f"session error {status_name(status)}")
        self.part_failed(item, seq, status, self.policy.describe(status), retry=kind is not ErrorClass.PERMANENT,
                         bind=bind, immediate=kind is ErrorClass.SESSION)

    def part_failed(
        self,
        item: _Item,
        seq: int,
        status: int | None,
        reason: str,
        *,
        retry: bool,
        bind: BindWorker,
        immediate: bool = False,
    ) -> None:
        """One part (or the only one) was not accepted: retry the message later, or fail it."""
        if item.group is not None:
            item.group.failed[seq] = (status, reason, retry)
            self._settle_parts(item, bind, immediate=immediate)
        elif retry:
            self._retry(item, status, reason, bind, immediate=immediate)
        else:
            self.writer.settle(
                item.msg.id, item.token, "failed", error_code=status, reason=reason, bind=bind.name, smsc=self.name
            )

    def _settle_parts(self, item: _Item, bind: BindWorker, *, immediate: bool = False) -> None:
        group = item.group
        assert group is not None
        if group.settled or len(group.accepted) + len(group.failed) < group.total:
            return
        group.settled = True
        if not group.failed:
            self.writer.mark_parts_submitted(
                item.msg.id, item.token, self.name, group.total,
                [(seq, mid, key) for seq, (mid, key) in sorted(group.accepted.items())], bind.name,
            )
            return
        # The first failing part decides: a permanent error fails the message, else it is sent again whole.
        status, reason, retry = group.failed[min(group.failed)]
        if retry:
            self._retry(item, status, reason, bind, immediate=immediate)
        else:
            self.writer.settle(
                item.msg.id, item.token, "failed", error_code=status, reason=reason, bind=bind.name, smsc=self.name
            )

    def _apply_rate(self, now: float) -> None:
        self.account_bucket.set_rate(self.adaptive.rate, now)
        metrics.EFFECTIVE_RATE.labels(self.name).set(self.adaptive.rate)

    def set_instances(self, live: int) -> None:
        """Split the account rate between the live gateway instances serving this SMSC."""
        live = max(1, live)
        if live == self.instances or not self.smsc.tps:
            return
        self.instances = live
        now = asyncio.get_running_loop().time()
        share = self.smsc.tps / live
        self.adaptive.ceiling = share
        self.adaptive.rate = min(self.adaptive.rate or share, share)
        self._apply_rate(now)
        log.info("account rate split", extra={"smsc": self.name, "instances": live, "rate": share})

    def _retry(self, item: _Item, status: int | None, reason: str, bind: BindWorker, immediate: bool = False) -> None:
        msg = item.msg
        if msg.attempts >= self.settings.max_attempts:
            self.writer.settle(
                msg.id, item.token, "failed", error_code=status, reason=f"{reason} after {msg.attempts} attempts",
                bind=bind.name, smsc=self.name,
            )
            return
        delay = 0.0 if immediate else backoff(msg.attempts, base=self.settings.retry_base, cap=self.settings.retry_max)
        self.writer.settle(
            msg.id, item.token, "queued", delay=delay, error_code=status, reason=reason, bind=bind.name, smsc=self.name
        )

    # -- shutdown ------------------------------------------------------------------------------------

    def stop_sending(self) -> None:
        """Stop the senders; give back every claimed row not yet sent (attempt not counted)."""
        self._stopping = True
        for b in self.binds:
            b.stop_sending()
        while self._ready:
            item = self._ready.popleft()
            self.writer.settle(item.msg.id, item.token, "queued", reason="released_on_shutdown", attempts_delta=-1)

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.binds)

    async def stop_binds(self, timeout: float) -> None:
        await asyncio.gather(*(b.stop(timeout) for b in self.binds))
