"""Two gateway instances (`smsgw run` processes) on one database, one SMSC account with `tps` set: the account
rate is never exceeded at the SMSC, also while an instance starts, joins, dies (kill -9) or stops
(gateway/rate_share.py).

Measured where a carrier measures it: the simulator's receive time of every submit_sm, counted in sliding
1-second windows (one starting at every submit). Each instance binds with a system_id of its own (`gw-a`,
`gw-b`) only so that the simulator can tell whose submit it was; the gateway's account (`[smsc.sim]`, its `tps`)
is the same for both, and its split is what is tested. Receipts are not asked for (`registered_delivery = 0`):
the simulator sends a receipt to a bind of the submit's own system_id, and a killed instance's would wait for
ever; rows end `submitted`, and the load stays on what is measured.

Tolerance over the rate in a 1-second window, each part justified:
- the buckets (throughput/token_bucket.py): a bucket of rate r, burst b and scheduler catch-up c lets through
  at most r * (1 + c) + b in any 1 s; the instances' rates add up to at most TPS, so TPS * c + 2 b for two, plus
  one send per instance for a change of its rate: 5 + 2 + 2 = 9 at 500 TPS (1.8 %), about what one instance
  alone may show;
- the receiver (`ReceiverClock`): the simulator runs in this test's event loop on a shared machine; a stall of
  s seconds there bunches up to TPS * s submits sent earlier into the window in which it ends, so each window
  is allowed TPS * (the longest stall that ended in it + the probe's 5 ms resolution): typically 3-20 more.
The former split (an even split from each instance's first heartbeat on) overshoots by about half the rate
for up to a maintenance interval: 739-759 in a window at 500 TPS, far outside either.

500 TPS keeps two gateways, Postgres and the simulator well within a loaded 2-core machine (at 1,000 the
gateways could fall short of the rate under load, which hides an overshoot); every figure scales with `TPS`.
Figures are printed (run with -s). Production maintenance interval (2 s: an instance counts as gone
3 * 2 + 5 = 11 s after its last heartbeat), leases of 5 s; about 70 s in all.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import gc
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from gw import counts, wait_status

from gateway.dispatcher import PACING_CATCH_UP
from gateway.simulator import SimulatorConfig, SmscSimulator

SMSGW = str(Path(sys.executable).with_name("smsgw"))

TPS = 500
BURST = 1
BINDS = 2
WINDOW = 20
MAINTENANCE_INTERVAL = 2.0  # the production default
STALE_AFTER = 3 * MAINTENANCE_INTERVAL + 5  # gateway/maintenance.py: an instance counts as gone after this
LEASE_SECONDS = 5.0
INSTANCES = 2
SHARE = TPS / INSTANCES
# "Reached" a rate: a 1-second window at the SMSC carrying 90 % of it (the pacing tests' own margin is 10 %).
REACHED = 0.9

ENQUEUE = """
INSERT INTO outbound_message (source, destination, body)
SELECT '12345', '+1202555' || lpad((n % 10000)::text, 4, '0'), 'm' || n FROM generate_series($1::int, $2::int) n
"""


class Daemon:
    """One `smsgw run` process with its own instance name and system_id; stderr goes to a file."""

    def __init__(self, name: str, tmp_path: Path, dsn: str, sim_port: int) -> None:
        self.name = name
        self.config = tmp_path / f"{name}.toml"
        self.log = tmp_path / f"{name}.log"
        self.config.write_text(
            f'log_level = "WARNING"\n[database]\nurl = "{dsn}"\n[metrics]\nenabled = false\n'
            f'[dispatcher]\ninstance = "{name}"\nflush_interval = 0.01\npoll_interval = 0.2\n'
            f"maintenance_interval = {MAINTENANCE_INTERVAL}\nlease_seconds = {LEASE_SECONDS}\nshutdown_timeout = 5\n"
            f'[smsc.sim]\nport = {sim_port}\nsystem_id = "{name}"\ntps = {TPS}\nburst = {BURST}\n'
            f"binds = {BINDS}\nwindow = {WINDOW}\nregistered_delivery = 0\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "SMSGW_SMSC__SIM__PASSWORD": "secret"}
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [SMSGW, "run", "--config", str(self.config)], env=env, stdout=subprocess.DEVNULL, stderr=err
            )

    async def stop(self) -> int:
        """SIGTERM (graceful stop: LEAVE_INSTANCE); the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, 30)

    async def kill(self) -> None:
        """kill -9: no unbind, no deregistration, leases left behind."""
        assert self.proc is not None
        self.proc.kill()
        await asyncio.to_thread(self.proc.wait, 10)

    def stderr_tail(self) -> str:
        return self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.asynccontextmanager
async def two_daemons(tmp_path: Path, dsn: str, sim: SmscSimulator) -> AsyncIterator[tuple[Daemon, Daemon]]:
    a, b = (Daemon(name, tmp_path, dsn, sim.port) for name in ("gw-a", "gw-b"))
    try:
        yield a, b
    finally:
        a.cleanup()
        b.cleanup()


def simulator() -> SmscSimulator:
    return SmscSimulator(SimulatorConfig(receipt_delay=0.01, accounts={"gw-a": "secret", "gw-b": "secret"}))


# -- figures from the simulator's receive times ------------------------------------------------------------


def times_of(sim: SmscSimulator, system_id: str | None = None) -> list[float]:
    return sorted(r.received_at for r in sim.submits if system_id is None or r.system_id == system_id)


def max_window(times: list[float], start: float = -math.inf, end: float = math.inf) -> tuple[int, float]:
    """The most submits in any 1-second window [t, t + 1) starting at a submit within [start, end); and its t."""
    best, at, j = 0, 0.0, 0
    for i, t in enumerate(times):
        if j < i:
            j = i
        while j < len(times) and times[j] < t + 1.0:
            j += 1
        if start <= t < end and j - i > best:
            best, at = j - i, t
    return best, at


def reached_at(times: list[float], since: float, rate: float) -> float | None:
    """Seconds from `since` to the end of the first 1-second window after it that carries `rate` (None: never)."""
    for k, t in enumerate(times):
        if t - 1.0 < since:
            continue
        if k + 1 - bisect.bisect_right(times, t - 1.0) >= rate:
            return t - since
    return None


def combined_rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def duplicates(sim: SmscSimulator) -> tuple[int, int]:
    """(distinct bodies submitted, submits beyond the first of their body)."""
    seen = collections.Counter(r.text for r in sim.submits)
    return len(seen), sum(n - 1 for n in seen.values())


async def first_seen(pool: asyncpg.Pool, instance: str, timeout: float) -> float | None:
    """time.monotonic() (the simulator's clock) when the instance's heartbeat row first shows, polled every 20 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pool.fetchval("SELECT count(*) FROM gateway_instance WHERE instance = $1", instance):
            return time.monotonic()
        await asyncio.sleep(0.02)
    return None


class SubmitWatch:
    """Counts of the simulator's submits, kept up to date incrementally (the waits poll every 10 ms in the
    simulator's own event loop: re-counting every record each time would delay its receive timestamps)."""

    def __init__(self, sim: SmscSimulator) -> None:
        self.sim = sim
        self._seen = 0
        self.per: collections.Counter[str] = collections.Counter()
        self.bodies: set[str] = set()

    def _update(self) -> None:
        new = self.sim.submits[self._seen:]
        self._seen += len(new)
        for r in new:
            self.per[r.system_id] += 1
            self.bodies.add(r.text)

    async def wait(self, timeout: float, *, system_id: str | None = None, n: int = 0, distinct: int = 0) -> None:
        """Until `system_id` sent `n` submits, or `distinct` rows were sent at least once."""

        def done() -> bool:
            self._update()
            return self.per[system_id] >= n if system_id is not None else len(self.bodies) >= distinct

        await self.sim.wait_for(done, timeout=timeout)


class ReceiverClock:
    """The simulator runs in this test's event loop, so its receive timestamps are the SMSC's clock. When that
    loop stalls (the machine is shared) while the gateways keep writing, whatever they sent meanwhile is read,
    and timestamped, at the end of the stall: bunched into one window, up to TPS x stall more than was sent in
    any 1 s. This records the stalls (how late a 5 ms sleep wakes up, when later than `RESOLUTION_S`) so that
    each window's tolerance includes the stall that ended in it, and keeps the garbage collector out of the
    measurement meanwhile (a full collection over the simulator's records stalled it ~60 ms here)."""

    RESOLUTION_S = 0.005

    def __init__(self) -> None:
        self.stalls: list[tuple[float, float]] = []  # (time.monotonic() at wake-up, lateness), in time order
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            now = time.monotonic()
            if now - before - 0.005 > self.RESOLUTION_S:
                self.stalls.append((now, now - before - 0.005))

    def __enter__(self) -> ReceiverClock:
        gc.collect()
        gc.freeze()
        gc.disable()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        gc.enable()
        gc.unfreeze()

    def stall_ending_in(self, start: float, end: float) -> float:
        """The longest stall that ended within [start, end) (plus the resolution: shorter ones go unrecorded)."""
        lo = bisect.bisect_left(self.stalls, (start, -math.inf))
        hi = bisect.bisect_left(self.stalls, (end, -math.inf))
        return self.RESOLUTION_S + max((late for _, late in self.stalls[lo:hi]), default=0.0)

    def tolerance(self, at: float, rate: float = TPS, instances: int = INSTANCES) -> int:
        """Submits over `rate` allowed in the window [at, at + 1) for `instances` buckets sharing `rate`: the
        bucket maths (module docstring) plus what the receiver's stall may have bunched into it."""
        buckets = math.ceil(PACING_CATCH_UP * rate) + instances * (BURST + 1)
        return buckets + math.ceil(rate * self.stall_ending_in(at, at + 1.0))


def worst_margin(
    times: list[float], clock: ReceiverClock, *, rate: float = TPS, instances: int = INSTANCES,
    start: float = -math.inf, end: float = math.inf,
) -> tuple[float, float]:
    """Over every 1 s window starting at a submit within [start, end): the most by which it exceeds `rate` plus
    its tolerance (<= 0: none did), and where."""
    margin, margin_at, j = -math.inf, 0.0, 0
    for i, t in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < t + 1.0:
            j += 1
        if start <= t < end:
            excess = j - i - rate - clock.tolerance(t, rate, instances)
            if excess > margin:
                margin, margin_at = excess, t
    return margin, margin_at


def report(name: str, **figures: object) -> None:
    shown = (f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\n[{name}] " + "  ".join(shown))


def window_figures(sim: SmscSimulator, clock: ReceiverClock) -> dict[str, object]:
    """The busiest 1-second window at the SMSC (count, start in s from the first submit, whose submits, the
    tolerance it was allowed) and the window closest to its limit (`worst_margin` > 0: over it)."""
    times = times_of(sim)
    peak, at = max_window(times)
    per = {name: sum(1 for t in times_of(sim, name) if at <= t < at + 1.0) for name in ("gw-a", "gw-b")}
    margin, margin_at = worst_margin(times, clock)
    return {"max_1s_window": peak, "at_s": at - times[0], "of_which": per, "allowed": TPS + clock.tolerance(at),
            "stalls_over_5ms": len(clock.stalls), "worst_margin": margin, "worst_at_s": margin_at - times[0]}


def assert_never_exceeded(figures: dict[str, object]) -> None:
    margin = figures["worst_margin"]
    assert isinstance(margin, int | float)
    assert margin <= 0, f"a 1 s window at the SMSC over the account rate {TPS} (+ tolerance): {figures}"


async def wait_submitted(pool: asyncpg.Pool, n: int, timeout: float) -> None:
    """Every row's submit_sm_resp recorded while the gateways still run."""
    await wait_status(pool, "submitted", n, timeout)


# -- scenarios -----------------------------------------------------------------------------------------------


async def test_both_start_together_never_exceed_and_claim_disjoint(
    db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path
) -> None:
    total = 6 * TPS
    await db_pool.execute(ENQUEUE, 1, total)
    async with simulator() as sim, two_daemons(tmp_path, db_dsn, sim) as (a, b):
        watch = SubmitWatch(sim)
        with ReceiverClock() as clock:
            a.start()
            b.start()
            try:
                await watch.wait(40, distinct=total)
                await wait_submitted(db_pool, total, 20)
            finally:
                codes = await asyncio.gather(a.stop(), b.stop())
        assert codes == [0, 0], a.stderr_tail() + b.stderr_tail()
        c = await counts(db_pool)
        times = times_of(sim)
        figures = window_figures(sim, clock)
        distinct, dup = duplicates(sim)
        per = {name: len(times_of(sim, name)) for name in ("gw-a", "gw-b")}
        report("start together", **figures, limit=TPS, combined_msg_s=combined_rate(times),
               per_instance=per, duplicates=dup)
    assert c == {"submitted": total}, c
    # Disjoint claims: every row went to the SMSC exactly once.
    assert (distinct, dup) == (total, 0)
    assert min(per.values()) >= total * 0.2, per  # both really sent: the split is shared, not one idle
    assert_never_exceeded(figures)
    assert combined_rate(times) >= 0.7 * TPS, combined_rate(times)


async def test_second_joins_mid_run_never_exceed(db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path) -> None:
    total = 8 * TPS
    await db_pool.execute(ENQUEUE, 1, total)
    async with simulator() as sim, two_daemons(tmp_path, db_dsn, sim) as (a, b):
        watch = SubmitWatch(sim)
        with ReceiverClock() as clock:
            a.start()
            try:
                await watch.wait(30, system_id="gw-a", n=2 * TPS)  # alone at the full rate for a while
                b.start()
                registered = await first_seen(db_pool, "gw-b", timeout=20)
                await watch.wait(40, distinct=total)
                await wait_submitted(db_pool, total, 20)
            finally:
                codes = await asyncio.gather(a.stop(), b.stop())
        assert codes == [0, 0], a.stderr_tail() + b.stderr_tail()
        c = await counts(db_pool)
        times, times_b = times_of(sim), times_of(sim, "gw-b")
        figures = window_figures(sim, clock)
        to_share = reached_at(times_b, registered, REACHED * SHARE) if registered is not None else None
        distinct, dup = duplicates(sim)
        report("join mid-run", **figures, limit=TPS, combined_msg_s=combined_rate(times),
               newcomer_to_share_s=to_share, duplicates=dup)
    assert c == {"submitted": total}, c
    assert (distinct, dup) == (total, 0)
    assert_never_exceeded(figures)
    # The newcomer reaches its share within ~2 s of registering (the figure includes the 1 s window itself).
    assert to_share is not None and to_share <= 3.0, to_share


async def test_one_killed_the_other_takes_over_only_once_it_is_stale(
    db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path
) -> None:
    total = 11 * TPS
    await db_pool.execute(ENQUEUE, 1, total)
    async with simulator() as sim, two_daemons(tmp_path, db_dsn, sim) as (a, b):
        watch = SubmitWatch(sim)
        with ReceiverClock() as clock:
            a.start()
            b.start()
            try:
                await watch.wait(30, system_id="gw-b", n=3 * TPS // 2)  # both at their share by then
                await b.kill()
                killed = time.monotonic()
                # gw-b's last heartbeat, on the database clock: its row is stale STALE_AFTER after it.
                age = await db_pool.fetchval(
                    "SELECT extract(epoch FROM now() - last_seen)::float8 FROM gateway_instance WHERE instance = 'gw-b'"
                )
                stale_at = killed - (age or 0.0) + STALE_AFTER
                await watch.wait(60, distinct=total)  # gw-a sends everything, gw-b's leases too once expired
                await wait_submitted(db_pool, total, 20)
            finally:
                code = await a.stop()
        assert code == 0, a.stderr_tail()
        c = await counts(db_pool)
        times, times_a = times_of(sim), times_of(sim, "gw-a")
        figures = window_figures(sim, clock)
        # Until gw-b is surely gone, gw-a keeps to its share (as far as gw-a knows, gw-b may still be sending):
        # every 1 s window from 1 s after the kill that ends before gw-b's row is stale.
        before_stale, _ = max_window(times_a, killed + 1.0, stale_at - 1.0)
        before_margin, _ = worst_margin(times_a, clock, rate=SHARE, instances=1, start=killed + 1.0, end=stale_at - 1.0)
        to_full = reached_at(times_a, stale_at, REACHED * TPS)
        first_full = reached_at(times_a, killed, REACHED * TPS)
        distinct, dup = duplicates(sim)
        # Rows claimed again once their lease ran out: gw-b's, sent by gw-a.
        taken_over = await db_pool.fetchval("SELECT count(*) FROM outbound_message WHERE attempts > 1")
        report("kill -9", **figures, limit=TPS, combined_msg_s=combined_rate(times),
               survivor_max_1s_before_stale=before_stale, stale_s_after_kill=stale_at - killed,
               survivor_to_full_rate_s_after_stale=to_full, leases_taken_over=taken_over, duplicates=dup)
    # The dead instance's leases expired and the survivor sent those rows: nothing lost; a row sent twice only
    # if gw-b had it on the wire when it died (at most its windows).
    assert c == {"submitted": total}, c
    assert distinct == total and dup <= BINDS * WINDOW, (distinct, dup)
    assert taken_over > 0
    assert_never_exceeded(figures)
    assert before_margin <= 0, (before_stale, before_margin)
    # The full rate only once gw-b is stale, and then within a heartbeat plus the 1 s window that measures it.
    assert first_full is not None and killed + first_full >= stale_at, (first_full, stale_at - killed)
    assert to_full is not None and to_full <= 2.5, to_full


async def test_graceful_stop_hands_over_the_full_rate(db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path) -> None:
    total = 8 * TPS
    await db_pool.execute(ENQUEUE, 1, total)
    async with simulator() as sim, two_daemons(tmp_path, db_dsn, sim) as (a, b):
        watch = SubmitWatch(sim)
        with ReceiverClock() as clock:
            a.start()
            b.start()
            try:
                await watch.wait(30, system_id="gw-b", n=3 * TPS // 2)
                stopping = time.monotonic()
                code_b = await b.stop()
                await watch.wait(40, distinct=total)
                await wait_submitted(db_pool, total, 20)
            finally:
                code_a = await a.stop()
        assert (code_a, code_b) == (0, 0), a.stderr_tail() + b.stderr_tail()
        c = await counts(db_pool)
        times, times_a = times_of(sim), times_of(sim, "gw-a")
        figures = window_figures(sim, clock)
        to_full = reached_at(times_a, stopping, REACHED * TPS)
        distinct, dup = duplicates(sim)
        report("graceful stop", **figures, limit=TPS, combined_msg_s=combined_rate(times),
               stop_at_s=stopping - times[0], survivor_to_full_rate_s=to_full, duplicates=dup)
    assert c == {"submitted": total}, c
    assert (distinct, dup) == (total, 0)
    assert_never_exceeded(figures)
    # The leaver deregisters as soon as it stopped sending: the survivor's next heartbeat takes the whole rate.
    assert to_full is not None and to_full <= 4.0, to_full
