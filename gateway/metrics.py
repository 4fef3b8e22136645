"""Prometheus metrics (basic set) and the /metrics HTTP endpoint.

Rule of this module: metric objects are module-level singletons (one registry per process), so
several gateways in one process (tests) share them; labels carry the SMSC and bind names.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

SUBMITTED = Counter("smsgw_submitted", "submit_sm accepted by the SMSC (status 0)", ["smsc"])
SUBMIT_ERRORS = Counter(
    "smsgw_submit_errors", "submit_sm answered with an error, by command_status", ["smsc", "status"]
)
SUBMIT_TIMEOUTS = Counter("smsgw_submit_timeouts", "submit_sm without a response (timeout or lost link)", ["smsc"])
RECEIPTS = Counter("smsgw_receipts", "delivery receipts received, by stat", ["smsc", "stat"])
MO_RECEIVED = Counter("smsgw_mo_received", "mobile-originated messages stored", ["smsc"])
REJECTED = Counter("smsgw_rejected", "rows refused before sending, by reason", ["reason"])
SUBMIT_RTT = Histogram(
    "smsgw_submit_rtt_seconds",
    "submit_sm to submit_sm_resp round trip",
    ["smsc"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BIND_UP = Gauge("smsgw_bind_up", "1 when the bind is bound", ["smsc", "bind"])
QUEUE_DEPTH = Gauge("smsgw_queue_depth", "rows by non-final status", ["status"])
EFFECTIVE_RATE = Gauge(
    "smsgw_effective_rate", "current account send rate after adaptive back-off (0 = no limit)", ["smsc"]
)
FLUSH_ERRORS = Counter("smsgw_db_flush_errors", "result flushes that failed and will be retried")
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
QUARANTINED = Counter(
    "smsgw_quarantined", "items Postgres refused, stored in the quarantine table and acknowledged", ["kind"]
)
WRITER_PENDING = Gauge("smsgw_writer_pending", "results buffered or being written, not yet committed")
READING_PAUSED = Gauge("smsgw_reading_paused", "1 while SMPP reading is paused because the result writer is behind")
READING_PAUSES = Counter("smsgw_reading_pauses", "times SMPP reading was paused by the result writer")


def serve_metrics(host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics on host:port from a daemon thread (never on the event loop)."""
    server, thread = start_http_server(port, addr=host)
    log.info("metrics served", extra={"url": f"http://{host}:{server.server_port}/metrics"})
    return server, thread
