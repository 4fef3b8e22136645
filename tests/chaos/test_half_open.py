"""Half-open TCP: the SMSC stops reading and answering on its open connections (no FIN, no RST) for longer
than the gateway's keep-alive and response timeouts, then either wakes up and reads what was sent meanwhile
(``then="resume"``: those submits *are* accepted) or drops the connections (``then="abort"``: what was never
read was never accepted). See `SmscSimulator.stall` for the SMSC-side semantics.

The gateway must notice (no answer to its submits, then no enquire_link_resp -> LinkDead), re-bind on fresh
connections, send again what it did not get answered, and lose nothing. Duplicates are bounded by one window
per bind per stall: a dead-looking link gets no more submit_sm than the window it already holds. (Before the
fix in gateway/smpp/session.py, every response timeout freed its window slot at once, so the bind kept filling
a dead link: two windows or more per bind per stall, each accepted again when the SMSC woke up.)

A short stall (less than timeout + probe) must cost nothing: no re-bind, no duplicate, late answers recorded.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import asyncpg
import pytest
from harness import (
    FaultEvent,
    Figures,
    GatewayConfig,
    GatewayProcess,
    accepted_since,
    enqueue_marked,
    figures,
    open_rows,
    smsc_tally,
    table_outcome,
    wait_until,
)

from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.smpp import codec
from gateway.smpp import session as s
from gateway.smpp.pdu import (
    BindTransceiver,
    BindTransceiverResp,
    EnquireLink,
    EnquireLinkResp,
    Pdu,
    SubmitSm,
    SubmitSmResp,
)

pytestmark = pytest.mark.chaos

# (seconds stalled, then): two long stalls that wake up (the worst case for duplicates), one that is aborted,
# one short one the gateway must ride out without re-binding.
CI_STALLS: list[tuple[float, str]] = [(3.0, "resume"), (3.0, "abort"), (1.5, "resume"), (3.0, "resume")]
BINDS = 2
WINDOW = 20
RESPONSE_TIMEOUT = 1.0
ENQUIRE_LINK_INTERVAL = 1.0


async def run_half_open(
    pool: asyncpg.Pool,
    dsn: str,
    workdir: Path,
    *,
    messages: int = 3000,
    stalls: list[tuple[float, str]] | None = None,
    bind_tps: float = 150.0,
    seed: int = 3,
    time_limit: float = 120.0,
) -> Figures:
    """Run `messages` rows through the gateway process while the SMSC half-opens its links `stalls` times."""
    plan = CI_STALLS if stalls is None else stalls
    rng = random.Random(seed)
    events: list[FaultEvent] = []
    started = time.monotonic()
    await enqueue_marked(pool, messages)
    sim_config = SimulatorConfig(receipt_delay=0.05, deliver_timeout=2.0, redelivery_delay=0.1)
    async with SmscSimulator(sim_config) as sim:
        config = GatewayConfig(
            dsn, sim.port, binds=BINDS, window=WINDOW, bind_tps=bind_tps, lease_seconds=5.0,
            response_timeout=RESPONSE_TIMEOUT, enquire_link_interval=ENQUIRE_LINK_INTERVAL,
        ).write(workdir / "gateway.toml")
        async with GatewayProcess(config, workdir) as gw:
            gw.start()
            # Stalls spread over the middle of the run, each once traffic is flowing again.
            step = messages / (len(plan) + 1)
            for i, (seconds, then) in enumerate(plan):
                threshold = int(step * (i + 1) * rng.uniform(0.85, 1.0))
                reached = await wait_until(lambda th=threshold: sim.stats.submits_ok >= th, time_limit / 2)
                assert reached, f"traffic stalled before stall {i}: {sim.stats}\n{gw.log_tail()}"
                await asyncio.sleep(rng.uniform(0.0, 0.2))  # a random moment within the flow
                binds_before, conns_before = sim.stats.binds, sim.stats.connections
                event = FaultEvent(f"stall-{then}", time.monotonic(),
                                   detail={"seconds": seconds, "conns_before": conns_before})
                event.detail["connections"] = sim.stall(seconds, then=then)
                events.append(event)
                # Recovered = the first submit accepted after the stall began (a fresh bind, or the old one
                # reading again after a short stall). Then let the stall end before the next one.
                ok = await wait_until(lambda e=event: accepted_since(sim, e.at) is not None, 30)
                assert ok, f"no submit accepted after stall {i}\n{gw.log_tail()}"
                first = accepted_since(sim, event.at)
                assert first is not None
                event.recovered_s = first.received_at - event.at
                event.detail["fresh_bind"] = first.bind > conns_before
                await asyncio.sleep(max(0.0, event.at + seconds + 0.5 - time.monotonic()))
                event.until = time.monotonic()  # what a resumed link held has been read by now
                event.detail["rebinds"] = sim.stats.binds - binds_before
            done = await wait_until(lambda: _none_open(pool), time_limit)
            assert done, f"rows still open after {time_limit} s: {await table_outcome(pool)}\n{gw.log_tail()}"
            code = await gw.terminate()
            assert code == 0, gw.log_tail()
        for event in events:  # submit_sm the stalled connections read when they woke up (accepted then)
            event.detail["read_on_wake"] = sum(
                1 for r in sim.submits
                if r.bind <= event.detail["conns_before"] and event.at + 0.1 < r.received_at <= event.end
            )
        tally = smsc_tally(sim, events)
        binds_total = sim.stats.binds
    table = await table_outcome(pool)
    return figures(
        "half_open", messages, events, tally, table, event_kind="half-open stall",
        duplicate_bound=WINDOW * BINDS, wall_s=time.monotonic() - started,
        extra={
            "binds_at_smsc": binds_total,
            "stalls": [(e.kind, e.detail["seconds"], e.detail["rebinds"]) for e in events],
            "read_on_wake": [e.detail["read_on_wake"] for e in events],
            "detect_bound_s": 2 * RESPONSE_TIMEOUT + ENQUIRE_LINK_INTERVAL,
        },
    )


async def _none_open(pool: asyncpg.Pool) -> bool:
    return await open_rows(pool) == 0


async def test_half_open_links_are_detected_rebound_and_lose_nothing(
    db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path
) -> None:
    fig = await run_half_open(db_pool, db_dsn, tmp_path)
    fig.print()
    assert fig.lost == 0 and fig.not_final == 0, fig
    assert fig.final_statuses == {"delivered": fig.messages}, fig
    assert fig.distinct_sent == fig.messages
    assert fig.unattributed_duplicates == 0, fig
    assert fig.max_duplicates_per_event <= WINDOW * BINDS, fig.duplicates_per_event
    for (kind, seconds, rebinds), recovered in zip(fig.extra["stalls"], fig.recovery_s, strict=True):
        assert recovered is not None
        if seconds > RESPONSE_TIMEOUT + ENQUIRE_LINK_INTERVAL:  # long: both binds declared dead and re-made
            assert rebinds == BINDS, fig.extra
            assert recovered <= fig.extra["detect_bound_s"] + 1.0, fig.recovery_s
        else:  # short: ridden out on the same connections, nothing resent
            assert rebinds == 0, (kind, fig.extra)
    short = [i for i, (_, s, _) in enumerate(fig.extra["stalls"]) if s <= RESPONSE_TIMEOUT + ENQUIRE_LINK_INTERVAL]
    assert all(fig.duplicates_per_event[i] == 0 for i in short), fig.duplicates_per_event


# -- the session rule behind the bound (sans-IO: bytes in, events out, explicit clock) -------------------------


def _probing_session(window: int = 2) -> s.Session:
    """Bound at t=0 with the gateway's policy: response timeout 5 s, grace 5 s, keep-alive far away."""
    sess = s.Session(window=window, response_timeout=5, late_grace=5, enquire_link_interval=100, probe_overdue=True)
    sess.bind(BindTransceiver(system_id="esme", password="pw"), now=0.0)
    (bind,) = _written(sess)
    sess.receive_data(codec.encode(BindTransceiverResp(sequence_number=bind.sequence_number, system_id="smsc")), 0.0)
    return sess


def _written(sess: s.Session) -> list[Pdu]:
    return [codec.decode(f) for f in codec.Framer().feed(sess.data_to_send())]


def _names(events: list[s.Event]) -> list[str]:
    return [f"{type(e).__name__}:{getattr(e, 'context', '')}" for e in events]


def test_overdue_submits_on_a_silent_link_keep_their_slots_and_a_probe_ends_the_link() -> None:
    sess = _probing_session()
    sess.send_request(SubmitSm(destination_addr="1"), 1.0, "a")
    sess.send_request(SubmitSm(destination_addr="2"), 1.0, "b")
    _written(sess)
    assert sess.handle_timer(6.0) == []  # overdue, but nothing says the SMSC ever read them
    (probe,) = _written(sess)
    assert isinstance(probe, EnquireLink)
    assert (sess.window_free, sess.in_flight, sess.awaiting) == (0, 2, 2)  # no third submit into this link
    with pytest.raises(s.WindowFullError):
        sess.send_request(SubmitSm(destination_addr="3"), 6.0, "c")
    assert sess.next_deadline() == 11.0
    assert _names(sess.handle_timer(11.0)) == ["RequestTimedOut:a", "RequestTimedOut:b", "LinkDead:"]
    assert sess.state is s.State.CLOSED


def test_probe_answer_releases_overdue_submits_as_late_and_their_answers_still_count() -> None:
    sess = _probing_session()
    sess.send_request(SubmitSm(destination_addr="1"), 1.0, "a")
    seq_b = sess.send_request(SubmitSm(destination_addr="2"), 1.0, "b")
    _written(sess)
    sess.handle_timer(6.0)
    (probe,) = _written(sess)
    # The answer proves the SMSC read both submits (TCP keeps order): they are only slow. The release happens
    # on the timer (only timers emit RequestOverdue), which is due at once.
    assert sess.receive_data(codec.encode(EnquireLinkResp(sequence_number=probe.sequence_number)), 6.1) == []
    deadline = sess.next_deadline()
    assert deadline is not None and deadline <= 6.1
    assert _names(sess.handle_timer(6.1)) == ["RequestOverdue:a", "RequestOverdue:b"]
    assert (sess.window_free, sess.in_flight, sess.awaiting) == (2, 0, 2)
    late = sess.receive_data(codec.encode(SubmitSmResp(sequence_number=seq_b, message_id="m")), 8.0)
    assert _names(late) == ["ResponseReceived:b"]
    assert _names(sess.handle_timer(11.0)) == ["RequestTimedOut:a"]  # 6 + the 5 s grace
    assert sess.state is s.State.BOUND_TRX


def test_an_answer_to_a_later_submit_proves_the_earlier_ones_were_read() -> None:
    sess = _probing_session()
    sess.send_request(SubmitSm(destination_addr="1"), 1.0, "a")
    seq_b = sess.send_request(SubmitSm(destination_addr="2"), 3.0, "b")
    _written(sess)
    assert sess.handle_timer(6.0) == []  # a: suspect, probe sent
    (probe,) = _written(sess)
    answered = sess.receive_data(codec.encode(SubmitSmResp(sequence_number=seq_b, message_id="m")), 6.5)
    assert _names(answered) == ["ResponseReceived:b"]
    assert _names(sess.handle_timer(6.5)) == ["RequestOverdue:a"]
    sess.receive_data(codec.encode(EnquireLinkResp(sequence_number=probe.sequence_number)), 6.6)
    assert _names(sess.handle_timer(11.0)) == ["RequestTimedOut:a"]  # its grace ends; the link lives on
    assert sess.state is s.State.BOUND_TRX


def test_a_suspect_submit_answered_itself_frees_its_slot_at_once() -> None:
    sess = _probing_session(window=1)
    seq = sess.send_request(SubmitSm(destination_addr="1"), 1.0, "a")
    _written(sess)
    sess.handle_timer(6.0)
    assert sess.window_free == 0
    events = sess.receive_data(codec.encode(SubmitSmResp(sequence_number=seq, message_id="m")), 7.0)
    assert _names(events) == ["ResponseReceived:a"] and sess.window_free == 1
