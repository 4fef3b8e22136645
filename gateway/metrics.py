"""Prometheus metrics: every metric of the gateway, defined here (README "Metrics" lists them with alerts).

Rules of this module: metric objects are module-level singletons on the default registry, so several gateways
in one process (tests) share them; labels carry the SMSC and bind names and values from fixed sets only
(never a phone number, a message id or free text: `status_label`, `reason_label`, `stat_label` map whatever an
SMSC or a producer wrote to a bounded set plus ``other``). Hot paths (per PDU, per message, per receipt) keep
pre-bound label children on their objects, or use the lock-free `FastHistogram` / `PduCounts` below (plain
integer arithmetic on the event loop; read by the scrape from another thread through a custom collector).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

log = logging.getLogger(__name__)

# -- per SMSC and bind ---------------------------------------------------------------------------------------

BIND_UP = Gauge("smsgw_bind_up", "1 when the bind is bound", ["smsc", "bind"])
BINDS = Counter("smsgw_binds", "successful binds (the first one and every re-bind)", ["smsc", "bind"])
BIND_FAILURE_REASONS = ("refused", "timeout", "connection_error", "connection_closed", "encode_error", "other")
BIND_FAILURES = Counter(
    "smsgw_bind_failures",
    "bind attempts that failed, by reason: refused (bind_resp with an error), timeout (no connect or bind_resp"
    " in time), connection_error (TCP/TLS connect failed), connection_closed (dropped while binding),"
    " encode_error, other",
    ["smsc", "bind", "reason"],
)
RECONNECT_REASONS = (
    "link_dead", "closed_by_peer", "unbound_by_peer", "protocol_error", "session_error", "connection_error", "other"
)
RECONNECTS = Counter(
    "smsgw_reconnects",
    "bound sessions lost (the bind then reconnects), by reason: link_dead (no enquire_link_resp),"
    " closed_by_peer, unbound_by_peer, protocol_error, session_error (a submit_sm status that means re-bind),"
    " connection_error, other",
    ["smsc", "bind", "reason"],
)
SUBMIT_RESPONSES = Counter(
    "smsgw_submit_responses",
    "submit_sm responses by command_status (ESME_* names of SMPP 3.4, 'vendor' for 0x400-0x4FF, else 'other')",
    ["smsc", "bind", "status"],
)
THROTTLED = Counter(
    "smsgw_throttled",
    "submit_sm answered with a throttling status (ESME_RTHROTTLED, ESME_RMSGQFUL or as configured): sent again",
    ["smsc", "bind"],
)
WINDOW_IN_USE = Gauge("smsgw_window_in_use", "submit_sm awaiting a response on the bind (sampled each second)",
                      ["smsc", "bind"])
WINDOW_SIZE = Gauge("smsgw_window_size", "configured submit window of the bind", ["smsc", "bind"])
CONFIGURED_RATE = Gauge(
    "smsgw_configured_rate",
    "configured send rate in messages per second (0 = no limit); scope 'account' (tps) or 'bind' (bind_tps)",
    ["smsc", "scope"],
)
EFFECTIVE_RATE = Gauge(
    "smsgw_effective_rate", "current account send rate after adaptive back-off (0 = no limit)", ["smsc"]
)
SUBMITTED = Counter("smsgw_submitted", "submit_sm accepted by the SMSC (status 0)", ["smsc"])
SUBMIT_ERRORS = Counter(
    "smsgw_submit_errors", "submit_sm answered with an error, by command_status", ["smsc", "status"]
)
SUBMIT_TIMEOUTS = Counter("smsgw_submit_timeouts", "submit_sm without a response (timeout or lost link)", ["smsc"])
SUBMIT_RTT = Histogram(
    "smsgw_submit_rtt_seconds",
    "submit_sm to submit_sm_resp round trip",
    ["smsc"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECEIPTS = Counter("smsgw_receipts", "delivery receipts received, by stat", ["smsc", "stat"])
REJECTED = Counter("smsgw_rejected", "rows refused before sending, by reason", ["reason"])

# -- queue -----------------------------------------------------------------------------------------------------

QUEUE_DEPTH = Gauge("smsgw_queue_depth", "rows by non-final status (refreshed by maintenance)", ["status"])
PRIORITY_CLASSES = ("reply", "high", "normal")
QUEUE_DEPTH_BY_PRIORITY = Gauge(
    "smsgw_queue_depth_by_priority",
    "rows by non-final status and priority class: reply (priority >= 100: keyword replies), high (> 0), normal",
    ["status", "priority"],
)
QUEUE_OLDEST_AGE = Gauge(
    "smsgw_queue_oldest_age_seconds",
    "how long the longest-waiting due queued row has been sendable (now - send_after; 0 when none is due)",
)
FINAL = Counter(
    "smsgw_final",
    "rows that reached a final status, by status and reason (a fixed set: gateway reasons, receipt stats,"
    " ESME_* names, 'other')",
    ["status", "reason"],
)
RECEIPTS_UNMATCHED = Counter(
    "smsgw_receipts_unmatched",
    "final receipts parked because no message submitted within the receipt timeout carried their id",
    ["smsc"],
)
RECEIPTS_PARKED = Gauge(
    "smsgw_receipts_parked", "receipts parked in pending_receipt (refreshed by maintenance)", ["smsc"]
)
RECEIPT_ID_MAPPING = Gauge(
    "smsgw_receipt_id_mapping",
    "1 for how receipt ids were last seen to match submit_sm_resp ids: exact, hex_to_decimal"
    " (resp hex, receipt decimal) or decimal_to_hex",
    ["smsc", "mapping"],
)

# -- inbound ---------------------------------------------------------------------------------------------------

MO_RECEIVED = Counter("smsgw_mo_received", "mobile-originated messages stored", ["smsc"])
# smsgw_mo_handled_total{intent} and smsgw_mo_quarantined_total live in keywords/processor.py (MO_HANDLED).
OPT_INS = Counter("smsgw_opt_ins", "opt-ins recorded from MOs (START, YES, JOIN ...)")
OPT_OUTS = Counter("smsgw_opt_outs", "opt-outs recorded from MOs (STOP and the other opt-out words)")
QUARANTINED = Counter(
    "smsgw_quarantined", "items Postgres refused, stored in the quarantine table and acknowledged", ["kind"]
)

# -- webhooks (label `endpoint`: the configured name, a bounded set) --------------------------------------------

WEBHOOK_FAILURE_CLASSES = ("4xx", "5xx", "429", "timeout", "connection")
WEBHOOK_SENT = Counter("smsgw_webhook_sent", "webhook deliveries answered with a 2xx", ["endpoint"])
WEBHOOK_FAILED = Counter(
    "smsgw_webhook_failed",
    "webhook attempts that failed (retried later), by class: 4xx, 5xx, 429, timeout, connection",
    ["endpoint", "class"],
)
WEBHOOK_LATENCY = Histogram(
    "smsgw_webhook_latency_seconds",
    "webhook POST to its answer (attempts that got an HTTP answer)",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_DEAD = Counter(
    "smsgw_webhook_dead", "webhook deliveries given up after webhooks.max_retry_hours (kept as 'dead')", ["endpoint"]
)

# -- database --------------------------------------------------------------------------------------------------

FLUSH_ERRORS = Counter("smsgw_db_flush_errors", "result flushes that failed and will be retried")
FLUSH_ROWS = Histogram(
    "smsgw_db_flush_rows", "rows per committed result flush (marks, settles, receipts, MOs)",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
FLUSH_SECONDS = Histogram(
    "smsgw_db_flush_seconds", "time to write and commit one result flush",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POOL_IN_USE = Gauge("smsgw_db_pool_in_use", "Postgres connections checked out of the pool (sampled each second)")
POOL_SIZE = Gauge("smsgw_db_pool_size", "Postgres connections open in the pool (sampled each second)")
WRITER_PENDING = Gauge("smsgw_writer_pending", "results buffered or being written, not yet committed")
READING_PAUSED = Gauge("smsgw_reading_paused", "1 while SMPP reading is paused because the result writer is behind")
READING_PAUSES = Counter("smsgw_reading_pauses", "times SMPP reading was paused by the result writer")

# -- process ---------------------------------------------------------------------------------------------------

LOOP_LAG = Histogram(
    "smsgw_event_loop_lag_seconds",
    "how late a 0.25 s sleep on the event loop wakes up (callbacks hogging the loop)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LOOP_LAG_LAST = Gauge("smsgw_event_loop_lag_last_seconds", "the last event-loop lag measured")
LOOP_LAST_TICK = Gauge("smsgw_event_loop_last_tick_timestamp_seconds",
                       "unix time the event-loop lag probe last ran (a stalled loop stops it)")


# -- bounded label values ----------------------------------------------------------------------------------------


def status_label(status: int) -> str:
    """A command_status as a bounded label: the SMPP 3.4 name, 'vendor' (0x400-0x4FF) or 'other'."""
    from gateway.smpp.pdu import Status

    try:
        return "ESME_" + Status(status).name
    except ValueError:
        return "vendor" if 0x400 <= status <= 0x4FF else "other"


_REASONS: frozenset[str] | None = None


def reason_label(reason: str | None) -> str:
    """A row's `reason` as a bounded label: a gateway `Reason` (its fixed prefix, e.g. 'response_timeout' for
    'response_timeout after 3 attempts'), an ESME_* status name or 0x... code (mapped as `status_label`), a
    receipt stat, or 'other'."""
    global _REASONS
    if not reason:
        return "none"
    if _REASONS is None:
        from gateway.status import Reason

        _REASONS = frozenset(r.value for r in Reason)
    head = reason.split(None, 1)[0].split(":", 1)[0]
    if head in _REASONS:
        return head
    if head.startswith("ESME_"):
        from gateway.smpp.pdu import Status

        return head if head[5:] in Status.__members__ else "other"
    if head.startswith("0x"):
        try:
            return status_label(int(head, 16))
        except ValueError:
            return "other"
    if head in RECEIPT_STATS:
        return head
    return "other"


RECEIPT_STATS = frozenset({"DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "ACCEPTD", "UNKNOWN", "REJECTD", "ENROUTE"})


def priority_class(priority: int) -> str:
    """The priority class of a row: reply (>= 100, keyword replies), high (> 0), normal."""
    return "reply" if priority >= 100 else "high" if priority > 0 else "normal"


# -- lock-free hot-path instruments --------------------------------------------------------------------------------


class FastHistogram:
    """A histogram for the event loop's hot path: `observe` is a bisect and two integer additions (no lock).

    Only the event-loop thread writes; the scrape (another thread) reads a copy of the counts. A scrape that
    lands between the two additions may see a sum one observation ahead of the buckets: harmless."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds, total = self.counts, self.bounds, 0.0
        for v in values:
            counts[bisect.bisect_left(bounds, v)] += 1
            total += v
        self.sum += total


class _FastHistogramFamily:
    """One labelled family of `FastHistogram`s, exposed through `_Collector`."""

    def __init__(self, name: str, doc: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.doc, self.labelnames, self.buckets = name, doc, tuple(labelnames), tuple(buckets)
        self._children: dict[tuple[str, ...], FastHistogram] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> FastHistogram:
        child = self._children.get(values)
        if child is None:
            with self._lock:
                child = self._children.setdefault(values, FastHistogram(self.buckets))
        return child

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in list(self._children.items()):
            counts, acc, buckets = list(child.counts), 0, []
            for bound, n in zip((*self.buckets, float("inf")), counts, strict=True):
                acc += n
                buckets.append((_le(bound), acc))
            family.add_metric(list(values), buckets, child.sum)
        return family

    def sample(self, *values: str) -> tuple[int, float]:
        """(count, sum) of one child, for tests."""
        child = self._children.get(values)
        return (sum(child.counts), child.sum) if child is not None else (0, 0.0)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class PduCounts:
    """PDUs sent and received on one bind, by command_id: plain dict increments in the SMPP session."""

    __slots__ = ("bind", "received", "sent", "smsc")

    def __init__(self, smsc: str, bind: str) -> None:
        self.smsc, self.bind = smsc, bind
        self.sent: dict[int, int] = {}
        self.received: dict[int, int] = {}


_pdu_counts: dict[tuple[str, str], PduCounts] = {}


def pdu_counts(smsc: str, bind: str) -> PduCounts:
    """The (process-wide, never reset) PDU counts of one bind."""
    key = (smsc, bind)
    counts = _pdu_counts.get(key)
    if counts is None:
        counts = _pdu_counts.setdefault(key, PduCounts(smsc, bind))
    return counts


def _command_name(command_id: int) -> str:
    from gateway.smpp.pdu import CommandId

    try:
        return CommandId(command_id).name.lower()
    except ValueError:
        return "other"


def _collect_pdus() -> Metric:
    family = CounterMetricFamily(
        "smsgw_pdus", "SMPP PDUs by bind, direction (in/out) and command (SMPP 3.4 names, else 'other')",
        labels=("smsc", "bind", "direction", "command"),
    )
    for counts in list(_pdu_counts.values()):
        for direction, by_id in (("in", counts.received), ("out", counts.sent)):
            merged: dict[str, int] = {}
            for cid, n in list(by_id.items()):
                name = _command_name(cid)
                merged[name] = merged.get(name, 0) + n
            for name, n in merged.items():
                family.add_metric([counts.smsc, counts.bind, direction, name], n)
    return family


QUEUE_WAIT = _FastHistogramFamily(
    "smsgw_queue_wait_seconds",
    "enqueue -> submit: created_at of the row to its (last part's) submit_sm_resp, at mark time",
    ["smsc"],
    # Fine below 100 ms: the steady-rate benchmark's goal (p99 <= 25 ms) is read from these buckets.
    (0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
     30, 60, 300, 900, 3600, 21600, 86400),
)
RECEIPT_LATENCY = _FastHistogramFamily(
    "smsgw_receipt_latency_seconds",
    "submit -> receipt: submitted_at of the row to its final receipt being recorded (matched receipts only)",
    ["smsc"],
    (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400, 259200),
)
REPLY_LATENCY = _FastHistogramFamily(
    "smsgw_reply_latency_seconds",
    "MO -> reply submitted: created_at of a keyword reply row (written in the MO's transaction, so about the"
    " MO's commit) to its submit_sm_resp",
    ["smsc"],
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
_FAST_FAMILIES = (QUEUE_WAIT, RECEIPT_LATENCY, REPLY_LATENCY)


class _Collector:
    """The custom collector for the lock-free instruments (registered once on the default registry)."""

    def collect(self) -> Iterator[Metric]:
        yield _collect_pdus()
        for family in _FAST_FAMILIES:
            yield family.collect()

    def describe(self) -> Iterator[Metric]:
        # Names only (registry duplicate checks), without touching live data.
        yield CounterMetricFamily("smsgw_pdus", "", labels=("smsc", "bind", "direction", "command"))
        for family in _FAST_FAMILIES:
            yield HistogramMetricFamily(family.name, "", labels=family.labelnames)


REGISTRY.register(_Collector())


# -- samplers ------------------------------------------------------------------------------------------------------

SAMPLE_INTERVAL = 1.0  # pool and window gauges


async def run_sampler(
    pool: Any | None = None, binds: Callable[[], Iterable[tuple[str, str, Any]]] | None = None
) -> None:
    """Until cancelled: every second sample the pool (asyncpg.Pool: `get_size`, `get_idle_size`) and `binds()`
    -> (smsc, bind, object with `in_flight`) into their gauges. Event-loop lag is measured by the HTTP server's
    ticker (`gateway.http_server.LoopTicker`, `observe_loop_tick`), which also drives /healthz."""
    while True:
        await asyncio.sleep(SAMPLE_INTERVAL)
        try:
            if pool is not None:
                size = pool.get_size()
                POOL_SIZE.set(size)
                POOL_IN_USE.set(size - pool.get_idle_size())
            if binds is not None:
                for smsc, bind, obj in binds():
                    WINDOW_IN_USE.labels(smsc, bind).set(obj.in_flight)
        except Exception:  # a sampler must never die of what it reads
            log.exception("metrics sampler failed")


def observe_loop_tick(lag: float, wall_time: float) -> None:
    """One tick of the loop ticker: how late it woke (seconds) and when (Unix time)."""
    LOOP_LAG.observe(lag)
    LOOP_LAG_LAST.set(lag)
    LOOP_LAST_TICK.set(wall_time)


# -- webhooks: backlog (refreshed by maintenance, gateway/maintenance.py) ------------------------------------

WEBHOOK_BACKLOG = Gauge(
    "smsgw_webhook_backlog", "pending webhook deliveries per endpoint (refreshed by maintenance)", ["endpoint"]
)
WEBHOOK_OLDEST_PENDING_AGE = Gauge(
    "smsgw_webhook_oldest_pending_age_seconds",
    "age of the oldest pending webhook delivery per endpoint (now - created_at; 0 when none is pending)",
    ["endpoint"],
)
WEBHOOK_PRUNED = Counter(
    "smsgw_webhook_pruned", "outbox rows deleted after delivery plus the retention period, by table", ["table"]
)
