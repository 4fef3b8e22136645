"""The split of an account rate between gateway instances (gateway/rate_share.py): the decision as a table, the
protocol as a model run through joins, graceful stops, kill -9 and partitions (with the variants that break it,
so the model shows it can fail), the bucket's fence, and the heartbeat against a real Postgres."""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import SimpleNamespace

import asyncpg
import pytest

from gateway import maintenance
from gateway.db import outbound_sql as sql
from gateway.rate_share import (
    FENCE_MARGIN_S,
    Member,
    Share,
    ShareReason,
    decide_share,
    fence_after,
    heartbeat_interval,
)
from gateway.settings import DispatcherSettings, load_settings
from throughput import TokenBucket
from throughput.token_bucket import CLOSED_RECHECK_S

STALE = 11.0
W, F, A, U = ShareReason.WAITING, ShareReason.FAIR_SHARE, ShareReason.ALONE, ShareReason.UNLIMITED


def m(grant: float, *, tps: float = 1000, age: float = 0.5, name: str = "other") -> Member:
    return Member(name, grant, tps, age)


# -- the decision -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("tps", "others", "expected"),
    [
        # No account rate configured here: nothing to split (the bucket has no limit).
        (0, [m(1000)], Share(0.0, 1, U)),
        # Alone: the whole rate. A stale row (dead instance) is not counted, whatever it held.
        (1000, [], Share(1000.0, 1, A)),
        (1000, [m(1000, age=STALE)], Share(1000.0, 1, A)),
        (1000, [m(1000, age=STALE + 100)], Share(1000.0, 1, A)),
        # Silent, but not stale yet: it may still be sending, its grant is not re-used.
        (1000, [m(1000, age=STALE - 0.01)], Share(0.0, 2, W)),
        # A newcomer while the other holds everything: 0, until the other releases its part.
        (1000, [m(1000)], Share(0.0, 2, W)),
        # The other, seeing the newcomer (grant 0): down to its fair share.
        (1000, [m(0)], Share(500.0, 2, F)),
        # The newcomer after that: what was released.
        (1000, [m(500)], Share(500.0, 2, F)),
        # Partly released (the other was throttled to 600? no: grants, not rates, count): only the spare.
        (1000, [m(600)], Share(400.0, 2, W)),
        # Three: a third each, rounded down so that the sum never exceeds the rate.
        (1000, [m(333.333, name="a"), m(333.333, name="b")], Share(333.333, 3, F)),
        (1000, [m(500, name="a"), m(500, name="b")], Share(0.0, 3, W)),
        (1000, [m(333.333, name="a"), m(500, name="b")], Share(166.667, 3, W)),
        # Different rates configured for one account (a config change rolling out): the smallest is split.
        (1000, [m(0, tps=400)], Share(200.0, 2, F)),
        (400, [m(0, tps=1000)], Share(200.0, 2, F)),
        # An instance without an account rate takes no part.
        (1000, [m(0, tps=0)], Share(1000.0, 1, A)),
        # More than the account held by the others (a row from before 0010 counts as its whole tps): nothing.
        (1000, [m(1000, name="a"), m(1000, name="b")], Share(0.0, 3, W)),
    ],
)
def test_decide_share(tps: float, others: list[Member], expected: Share) -> None:
    assert decide_share(tps, others, STALE) == expected


def test_shares_of_many_instances_never_add_up_to_more_than_the_rate() -> None:
    for tps in (1, 7, 100, 999, 1000, 1234.5):
        for n in range(2, 12):
            fair = decide_share(tps, [m(0, tps=tps, name=str(i)) for i in range(n - 1)], STALE).rate
            # Each in turn, seeing the others settled at the fair share, takes the same.
            settled = decide_share(tps, [m(fair, tps=tps, name=str(i)) for i in range(n - 1)], STALE)
            assert settled.rate == fair and settled.settled
            assert n * fair <= tps + 1e-9
            assert fair >= tps / n - 1e-3  # and loses at most the rounding


def test_fence_closes_before_the_others_can_count_the_row_stale() -> None:
    for stale in (5.0, 5.6, 8.0, 11.0, 35.0):
        assert fence_after(stale) == stale - FENCE_MARGIN_S
    assert 0 < fence_after(1.0) < 1.0


def test_heartbeat_interval_is_short_while_waiting_and_never_slower_than_maintenance() -> None:
    assert heartbeat_interval(2.0, waiting=False) == 0.5
    assert heartbeat_interval(2.0, waiting=True) == 0.1
    assert heartbeat_interval(0.2, waiting=False) == 0.2
    assert heartbeat_interval(0.05, waiting=True) == 0.05


# -- the protocol as a model --------------------------------------------------------------------------------


class Variant(StrEnum):
    """The protocol, and two ways of breaking it that the model must catch."""

    SOUND = "sound"
    NO_FENCE = "no_fence"  # a silent instance keeps its grant for ever (relies on it being dead)
    NO_WAITING = "no_waiting"  # a newcomer takes its fair share at once, without waiting for the others


class State(StrEnum):
    UP = "up"
    PARTITIONED = "partitioned"  # alive and sending, but its heartbeats do not reach the database
    DEAD = "dead"  # kill -9: sends nothing, its row stays until stale
    GONE = "gone"  # graceful stop: stopped sending, then deleted its row


@dataclass
class Node:
    name: str
    tps: float
    next_beat: float
    row: tuple[float, float] | None = None  # (grant, last_seen) in gateway_instance
    applied: float = 0.0  # the account bucket's rate
    valid_until: float = -math.inf  # the grant's fence
    state: State = State.UP
    history: list[float] = field(default_factory=list)

    def sending(self, now: float) -> float:
        if self.state in (State.DEAD, State.GONE) or now >= self.valid_until:
            return 0.0
        return self.applied


def beat(node: Node, nodes: list[Node], now: float, variant: Variant) -> Share:
    """One heartbeat, atomic as under the lock: read, decide, lower, write, raise."""
    others = [Member(o.name, o.row[0], o.tps, now - o.row[1]) for o in nodes if o is not node and o.row is not None]
    share = decide_share(node.tps, others, STALE)
    if variant is Variant.NO_WAITING and share.reason is ShareReason.WAITING:
        share = Share(node.tps / share.members, share.members, ShareReason.FAIR_SHARE)
    node.row = (share.rate, now)
    node.applied = share.rate
    node.valid_until = math.inf if variant is Variant.NO_FENCE else now + fence_after(STALE)
    return share


def run_model(seed: int, variant: Variant, *, tps: float = 1000, seconds: float = 90.0) -> float:
    """Random joins, graceful stops, kills, partitions and heals; returns the most the instances sent at once,
    checked every 10 ms (rates only change at heartbeats and fences, all on that grid)."""
    rng = random.Random(seed)
    nodes = [Node("n0", tps, 0.0)]
    worst, step = 0.0, 0.01
    for tick in range(int(seconds / step)):
        now = round(tick * step, 2)
        if rng.random() < 0.004:  # about every 2.5 s, something happens
            event = rng.choice(["join", "join", "leave", "kill", "partition", "heal"])
            up = [n for n in nodes if n.state is State.UP]
            if event == "join" and len(up) < 5:
                nodes.append(Node(f"n{len(nodes)}", tps, now))
            elif event == "leave" and up:
                node = rng.choice(up)
                node.state, node.row = State.GONE, None  # stopped sending first (sending() is 0), then LEAVE
            elif event == "kill" and up:
                rng.choice(up).state = State.DEAD
            elif event == "partition" and up:
                rng.choice(up).state = State.PARTITIONED
            elif event == "heal":
                for node in nodes:
                    if node.state is State.PARTITIONED:
                        node.state = State.UP
        for node in nodes:
            if node.state is State.UP and now >= node.next_beat:
                share = beat(node, nodes, now, variant)
                interval = heartbeat_interval(2.0, waiting=not share.settled)
                node.next_beat = round(now + interval * rng.uniform(0.8, 1.2), 2)  # scheduling jitter
        worst = max(worst, sum(n.sending(now) for n in nodes))
    return worst


@pytest.mark.parametrize("seed", range(30))
def test_model_never_exceeds_the_account_rate(seed: int) -> None:
    assert run_model(seed, Variant.SOUND) <= 1000 + 1e-6


@pytest.mark.parametrize("variant", [Variant.NO_FENCE, Variant.NO_WAITING])
def test_model_catches_a_broken_protocol(variant: Variant) -> None:
    assert any(run_model(seed, variant) > 1000 for seed in range(30))


def test_model_settles_on_the_fair_share_when_nothing_happens() -> None:
    nodes = [Node(f"n{i}", 1000, 0.0) for i in range(3)]
    for k in range(20):  # each beats in turn, every 0.5 s
        for node in nodes:
            beat(node, nodes, k * 0.5, Variant.SOUND)
    assert [n.applied for n in nodes] == [333.333] * 3


# -- the bucket's fence -------------------------------------------------------------------------------------


def test_closed_bucket_sends_nothing_and_asks_to_look_again_soon() -> None:
    b = TokenBucket(100, now=0.0)
    b.close()
    assert not b.take(5.0)
    assert b.delay(5.0) == CLOSED_RECHECK_S


def test_open_bucket_stops_at_its_fence() -> None:
    b = TokenBucket(100, now=0.0)
    b.open(1.0, 0.0)
    assert b.take(0.5)
    assert b.delay(0.999) == 0 and b.take(0.999)
    assert not b.take(1.0) and b.delay(1.0) == CLOSED_RECHECK_S


def test_reopened_bucket_saves_nothing_up_while_closed() -> None:
    b = TokenBucket(100, now=0.0, catch_up=0.01)
    assert b.take(0.0)
    b.close()
    b.open(math.inf, 10.0)  # closed for 10 s: no 1,000 saved-up sends, not even the catch-up
    assert b.take(10.0)
    assert not b.take(10.0) and b.delay(10.0) == pytest.approx(0.01)


def test_renewing_an_open_fence_keeps_the_schedule() -> None:
    b = TokenBucket(100, now=0.0)
    b.open(1.0, 0.0)
    assert b.take(0.0)
    b.open(2.0, 0.001)
    assert b.delay(0.001) == pytest.approx(0.009)


# -- the heartbeat against Postgres -------------------------------------------------------------------------


class FakeDispatcher:
    """What `maintenance.heartbeat` reads from and applies to a dispatcher: its account settings and grant."""

    def __init__(self, name: str, tps: float) -> None:
        self.name = name
        self.smsc = SimpleNamespace(tps=tps)
        self.rate_grant = 0.0
        self.valid_until = -math.inf
        self.calls: list[tuple[float, bool]] = []  # (grant, applied before the commit)
        self.binds_up = 1
        self.binds: list[object] = [object()]
        self.adaptive = SimpleNamespace(rate=tps)
        self.account_bucket = SimpleNamespace(rate=tps)
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None

    def set_rate_share(self, share: Share, valid_until: float | None) -> None:
        self.calls.append((share.rate, valid_until is None))
        self.rate_grant = share.rate
        if valid_until is not None:
            self.valid_until = valid_until


SILENT_FOR = "UPDATE gateway_instance SET last_seen = now() - make_interval(secs => $1) WHERE instance = 'gw-b'"


def settings(instance: str) -> DispatcherSettings:
    return load_settings(None, dispatcher={"instance": instance, "maintenance_interval": 2.0}).dispatcher


async def test_heartbeat_splits_hands_over_and_waits_for_a_silent_member(db_pool: asyncpg.Pool) -> None:
    a, b = FakeDispatcher("sim", 1000), FakeDispatcher("sim", 1000)
    sa, sb = settings("gw-a"), settings("gw-b")
    before = asyncio.get_running_loop().time()
    assert [s.rate for s in await maintenance.heartbeat(db_pool, sa, [a])] == [1000]
    assert a.valid_until == pytest.approx(before + fence_after(11.0), abs=0.5)
    assert [s.reason for s in await maintenance.heartbeat(db_pool, sb, [b])] == [W]  # newcomer: 0
    assert b.rate_grant == 0
    await maintenance.heartbeat(db_pool, sa, [a])
    assert a.calls[-2:] == [(500, True), (500, False)]  # lowered before its row was committed, then renewed
    await maintenance.heartbeat(db_pool, sb, [b])
    assert (a.rate_grant, b.rate_grant) == (500, 500)
    rows = await db_pool.fetch("SELECT instance, grant_tps FROM gateway_instance ORDER BY instance")
    assert [(r["instance"], r["grant_tps"]) for r in rows] == [("gw-a", 500), ("gw-b", 500)]
    # gw-b goes silent (as after kill -9): gw-a keeps to its share until gw-b's row is stale...
    await db_pool.execute(SILENT_FOR, 10.0)
    await maintenance.heartbeat(db_pool, sa, [a])
    assert a.rate_grant == 500
    await db_pool.execute(SILENT_FOR, 12.0)
    await maintenance.heartbeat(db_pool, sa, [a])
    assert a.rate_grant == 1000  # ...and then takes it all
    # A graceful leave frees the share at once.
    await maintenance.heartbeat(db_pool, sb, [b])
    assert b.rate_grant == 0  # back as a newcomer: gw-a holds everything
    await maintenance.heartbeat(db_pool, sa, [a])
    await maintenance.heartbeat(db_pool, sb, [b])
    assert (a.rate_grant, b.rate_grant) == (500, 500)
    await db_pool.execute("DELETE FROM gateway_instance WHERE instance = 'gw-b'")  # LEAVE_INSTANCE
    await maintenance.heartbeat(db_pool, sa, [a])
    assert a.rate_grant == 1000


async def test_a_row_from_before_0010_counts_as_holding_its_whole_rate(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute(
        "INSERT INTO gateway_instance (instance, smsc, last_seen, tps, effective_tps)"
        " VALUES ('old', 'sim', now(), 1000, 500)"
    )
    a = FakeDispatcher("sim", 1000)
    assert [s.rate for s in await maintenance.heartbeat(db_pool, settings("gw-a"), [a])] == [0]


async def test_an_instance_frozen_under_the_lock_holds_the_others_up_only_briefly(
    db_pool: asyncpg.Pool, db_dsn: str
) -> None:
    frozen = await asyncpg.connect(db_dsn)
    try:
        tx = frozen.transaction()
        await tx.start()
        await frozen.execute(sql.LOCK_RATE_SHARE)  # and then nothing, as if the process were stopped
        a = FakeDispatcher("sim", 1000)
        loop = asyncio.get_running_loop()
        started = loop.time()
        # The server ends the holder's transaction after 2 s idle, before the waiter's 3 s lock_timeout.
        assert [s.rate for s in await maintenance.heartbeat(db_pool, settings("gw-a"), [a])] == [1000]
        assert 1.5 < loop.time() - started < 3.0
        assert frozen.is_closed() or not await _alive(frozen)
    finally:
        await frozen.close(timeout=5)


async def _alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1", timeout=2)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
        return False
    return True
