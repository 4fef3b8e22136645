"""Metrics against the database: after a scripted run on the simulator, counters and histograms moved by what
the rows in Postgres say. Metrics are process-wide singletons shared by every test, so deltas are compared."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import asyncpg
import pytest
from gw import enqueue, running_gateway, settings_for, wait_final
from prometheus_client import REGISTRY
from test_keywords_e2e import SC, keyword_settings, mo, wait_rows

from gateway import maintenance, metrics
from gateway.settings import MetricsSettings
from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.smpp.pdu import Status


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def total(name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (e.g. over every bind)."""
    out = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                out += sample.value
    return out


class Snapshot:
    """Values before the run; `delta` gives what the run added."""

    def __init__(self) -> None:
        self._before: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def take(self, name: str, **labels: str) -> None:
        self._before[(name, tuple(sorted(labels.items())))] = total(name, **labels)

    def delta(self, name: str, **labels: str) -> float:
        return total(name, **labels) - self._before[(name, tuple(sorted(labels.items())))]


def _labelled() -> Iterator[tuple[str, str]]:
    for family in REGISTRY.collect():
        for sample in family.samples:
            for label in sample.labels:
                yield sample.name, label


def test_no_metric_has_a_high_cardinality_label() -> None:
    # Every instrument with labels has at least one child once the collectors above ran in this process; the
    # declared label names are checked too (a child may not exist yet).
    names = {label for _, label in _labelled()}
    for collector in list(REGISTRY._collector_to_names):
        names.update(getattr(collector, "_labelnames", ()))
    for family in (metrics.QUEUE_WAIT, metrics.RECEIPT_LATENCY, metrics.REPLY_LATENCY):
        names.update(family.labelnames)
    names.update(("smsc", "bind", "direction", "command"))
    bad = re.compile(r"number|msisdn|destination|source|message_id|msgid|phone|body|text|error|detail", re.I)
    assert names, "no labels found"
    assert not [n for n in names if bad.search(n)], names


def test_bounded_label_values() -> None:
    assert metrics.status_label(0) == "ESME_ROK"
    assert metrics.status_label(0x58) == "ESME_RTHROTTLED"
    assert metrics.status_label(0x401) == "vendor"
    assert metrics.status_label(0x1234) == "other"
    assert metrics.reason_label("response_timeout after 3 attempts") == "response_timeout"
    assert metrics.reason_label("ESME_RINVDSTADR") == "ESME_RINVDSTADR"
    assert metrics.reason_label("ESME_NOTREAL") == "other"
    assert metrics.reason_label("0x00000402 after 2 attempts") == "vendor"
    assert metrics.reason_label("whatever the SMSC wrote") == "other"
    assert [metrics.priority_class(p) for p in (100, 101, 1, 0, -5)] == ["reply", "reply", "high", "normal", "normal"]


async def test_outbound_metrics_match_the_rows(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    config = SimulatorConfig(receipt_delay=0.01, outcomes={"DELIVRD": 0.7, "UNDELIV": 0.3})
    snap = Snapshot()
    for status, stat in (("delivered", "DELIVRD"), ("undeliverable", "UNDELIV"), ("failed", "ESME_RINVDSTADR")):
        snap.take("smsgw_final_total", status=status, reason=stat)
    for status in ("ESME_ROK", "ESME_RINVDSTADR"):
        snap.take("smsgw_submit_responses_total", smsc="sim", status=status)
    for direction, command in (("out", "submit_sm"), ("in", "submit_sm_resp"), ("in", "deliver_sm"),
                               ("out", "deliver_sm_resp")):
        snap.take("smsgw_pdus_total", smsc="sim", direction=direction, command=command)
    for name in ("smsgw_queue_wait_seconds_count", "smsgw_receipt_latency_seconds_count", "smsgw_binds_total"):
        snap.take(name, smsc="sim")
    snap.take("smsgw_db_flush_rows_count")
    snap.take("smsgw_db_flush_rows_sum")
    snap.take("smsgw_event_loop_lag_seconds_count")
    async with SmscSimulator(config) as sim:
        await enqueue(db_pool, 300)
        sim.fail_next(5, Status.RINVDSTADR)
        # The HTTP server on (port 0): its loop ticker feeds the event-loop lag histogram.
        settings = settings_for(db_dsn, sim, binds=2).model_copy(
            update={"metrics": MetricsSettings(enabled=True, host="127.0.0.1", port=0)}
        )
        async with running_gateway(settings) as gw:
            final = await wait_final(db_pool, timeout=60)
            await asyncio.sleep(1.1)  # one sampler period at least
            assert value("smsgw_bind_up", smsc="sim", bind="sim-0") == 1
            assert value("smsgw_window_size", smsc="sim", bind="sim-1") == 20
            assert value("smsgw_db_pool_size") >= 1
            assert value("smsgw_configured_rate", smsc="sim", scope="account") == gw.settings.smsc["sim"].tps
            submits = len(sim.submits)
    assert sum(final.values()) == 300 and final.get("failed") == 5, final
    rows = dict(await db_pool.fetch("SELECT status || '/' || coalesce(reason, ''), count(*) FROM outbound_message"
                                    " GROUP BY 1"))
    delivered, undeliverable = final.get("delivered", 0), final.get("undeliverable", 0)
    assert delivered and undeliverable, final
    assert snap.delta("smsgw_final_total", status="delivered", reason="DELIVRD") == delivered
    assert snap.delta("smsgw_final_total", status="undeliverable", reason="UNDELIV") == undeliverable
    assert snap.delta("smsgw_final_total", status="failed", reason="ESME_RINVDSTADR") == rows["failed/ESME_RINVDSTADR"]
    accepted = delivered + undeliverable
    assert snap.delta("smsgw_submit_responses_total", smsc="sim", status="ESME_ROK") == accepted
    assert snap.delta("smsgw_submit_responses_total", smsc="sim", status="ESME_RINVDSTADR") == 5
    assert snap.delta("smsgw_pdus_total", smsc="sim", direction="out", command="submit_sm") == submits == 300
    assert snap.delta("smsgw_pdus_total", smsc="sim", direction="in", command="submit_sm_resp") == 300
    assert snap.delta("smsgw_pdus_total", smsc="sim", direction="in", command="deliver_sm") == accepted
    assert snap.delta("smsgw_pdus_total", smsc="sim", direction="out", command="deliver_sm_resp") == accepted
    assert snap.delta("smsgw_queue_wait_seconds_count", smsc="sim") == accepted
    assert snap.delta("smsgw_receipt_latency_seconds_count", smsc="sim") == accepted
    assert snap.delta("smsgw_binds_total", smsc="sim") == 2
    # Every mark, settle and receipt row went through a committed flush.
    assert snap.delta("smsgw_db_flush_rows_sum") >= 300 + accepted
    assert snap.delta("smsgw_db_flush_rows_count") >= 1
    assert snap.delta("smsgw_event_loop_lag_seconds_count") >= 1

    # The queue gauges after a maintenance pass: 7 reply rows not due yet, 3 normal ones due a minute ago.
    await db_pool.execute(
        "INSERT INTO outbound_message (source, destination, body, priority, send_after)"
        " SELECT '12345', '+1202555' || lpad(g::text, 4, '0'), 'later', 100, now() + interval '1 hour'"
        " FROM generate_series(1, 7) g"
    )
    await db_pool.execute(
        "INSERT INTO outbound_message (source, destination, body, priority, send_after)"
        " SELECT '12345', '+1202556' || lpad(g::text, 4, '0'), 'due', 0, now() - interval '60 seconds'"
        " FROM generate_series(1, 3) g"
    )
    await maintenance.observe_queue(db_pool)
    assert value("smsgw_queue_depth_by_priority", status="queued", priority="reply") == 7
    assert value("smsgw_queue_depth_by_priority", status="queued", priority="normal") == 3
    assert value("smsgw_queue_depth_by_priority", status="submitted", priority="normal") == 0
    assert value("smsgw_queue_depth", status="queued") == 10
    assert 60 <= value("smsgw_queue_oldest_age_seconds") < 120
    await db_pool.execute("DELETE FROM outbound_message WHERE status = 'queued' AND priority = 0")
    await maintenance.observe_queue(db_pool)
    assert value("smsgw_queue_oldest_age_seconds") == 0  # the reply rows are not due yet


async def test_inbound_metrics_match_the_rows(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    intents = ("opt_out", "opt_in", "help", "other")
    snap = Snapshot()
    for intent in intents:
        snap.take("smsgw_mo_handled_total", intent=intent)
    snap.take("smsgw_opt_outs_total")
    snap.take("smsgw_opt_ins_total")
    snap.take("smsgw_reply_latency_seconds_count", smsc="sim")
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01, deliver_timeout=1.0)) as sim:
        async with running_gateway(keyword_settings(db_dsn, sim)):
            for i, text in enumerate(("STOP", "stop", "HELP", "START", "what is this")):
                await mo(sim, f"1555000090{i}", text)
            assert await wait_rows(db_pool, "SELECT count(*) FROM inbound_message WHERE intent IS NOT NULL", n=5) == 5
            replied = await wait_rows(
                db_pool,
                "SELECT count(*) FROM outbound_message WHERE inbound_message_id IS NOT NULL"
                " AND status IN ('submitted', 'delivered')",
                n=4,
            )
            await wait_final(db_pool, timeout=10)
    by_intent = dict(await db_pool.fetch("SELECT intent, count(*) FROM inbound_message GROUP BY 1"))
    for intent in intents:
        assert snap.delta("smsgw_mo_handled_total", intent=intent) == by_intent.get(intent, 0), intent
    consent = dict(await db_pool.fetch("SELECT action, count(*) FROM consent_event WHERE short_code = $1"
                                       " GROUP BY 1", SC))
    assert snap.delta("smsgw_opt_outs_total") == consent.get("opt_out", 0) == 2
    assert snap.delta("smsgw_opt_ins_total") == consent.get("opt_in", 0) == 1
    answered = await db_pool.fetchval(
        "SELECT count(*) FROM outbound_message WHERE inbound_message_id IS NOT NULL AND submitted_at IS NOT NULL"
    )
    assert replied >= 4
    assert snap.delta("smsgw_reply_latency_seconds_count", smsc="sim") == answered


@pytest.mark.parametrize(
    ("runs", "expected_due"),
    [
        ([], 0.0),  # never ran: ready at once
        ([(10.0, 10.001)], 10.05),  # 1 ms of work: again after 50 ms (every maintenance pass in practice)
        ([(10.0, 10.3)], 25.0),  # a 300 ms count of a big backlog: not before 15 s later
        ([(10.0, 10.3), (25.0, 25.002)], 25.1),  # the backlog drained: cheap again, frequent again
    ],
)
def test_queue_stats_cost_at_most_their_share(runs: list[tuple[float, float]], expected_due: float) -> None:
    pace = maintenance.DutyCycle(share=0.02)
    for started, ended in runs:
        pace.ran(started, ended)
    assert pace.due == pytest.approx(expected_due)
    assert pace.ready(expected_due + 1e-9)
    if runs:
        assert not pace.ready(expected_due - 0.001)
