"""Shared helpers of the fault suite (tests/chaos/) and of bench/chaos.py.

Every scenario follows the same shape: enqueue N *marked* rows, run the gateway as a real process
(`smsgw run --config FILE`) against the in-process `SmscSimulator`, inject faults, wait until every row is
final, then count twice: from the SMSC side (the simulator's submit records, keyed by the marker in each
body) what was accepted and how often, and from the table where each row ended. The two together give
the figures every scenario reports (`Figures`): lost, duplicated, per event, recovery times.

Public API (other chaos tests may import it; keep it stable):

- `GatewayConfig(dsn, sim_port, ...).write(path)`: a TOML config for `smsgw run` with fast timers.
- `GatewayProcess(config_path, log_dir)`: the daemon as a subprocess: `start()`, `kill9()`,
  `await terminate()`, `log_tail()`, `proc.pid`; `async with` (or `close()`) guarantees it is gone afterwards.
- `enqueue_marked(pool, n, start=0)`: COPY `n` rows whose body (`body_for`) carries the marker ``chaos <n>``
  and whose idempotency_key is ``chaos-<n>``.
- `marker_of(text)`: the row number in a body, or None.
- `FaultEvent(kind, at)`: one injected fault (monotonic time; `until` when it lasts; `recovered_s`, `detail`).
- `accepted_since(sim, t, new_binds_after=conns)`: the first submit the SMSC accepted after `t` (on a fresh
  connection): the usual "recovered" point.
- `smsc_tally(sim, events)` -> `SmscTally`: accepted submits per row, duplicates, and each duplicate
  attributed to the fault that caused it (the first fault acting after the row's previous accepted submit).
- `table_outcome(pool)` -> `TableOutcome`: final status per row number; `open_rows(pool)`.
- `figures(...)` -> `Figures` (`.as_dict()`, `.print()`): what every scenario reports.
- `wait_until(predicate, timeout)`: bounded polling (sync or async predicate).

Clock: every time here is `time.monotonic()` of this process, the simulator's clock too (`SubmitRecord.
received_at`), so fault times and submit times compare directly.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import asyncpg

from gateway.simulator import SmscSimulator, SubmitRecord

SMSGW: Final = str(Path(sys.executable).with_name("smsgw"))
SMSC_NAME: Final = "sim"
SYSTEM_ID: Final = "smsgw"
PASSWORD: Final = "secret"
MARKER_RE: Final = re.compile(r"\bchaos (\d{7})\b")
FINAL_STATUSES: Final = frozenset({"delivered", "undeliverable", "expired", "rejected", "failed"})
OPEN_STATUSES: Final = ("queued", "claimed", "submitted")
_POLL_S: Final = 0.05
_PROCESS_WAIT_S: Final = 15.0


# -- configuration and the daemon process -----------------------------------------------------------------


@dataclass
class GatewayConfig:
    """Settings of one `smsgw run` under test. Timers are short so faults are noticed and leases expire fast.

    `lease_seconds` bounds how long rows claimed by a killed instance wait before the reaper (run by any
    live instance every `maintenance_interval`) queues them again.
    """

    dsn: str
    sim_port: int
    binds: int = 2
    window: int = 20
    tps: float = 0.0  # account rate; split between live instances (heartbeat), so kill tests use bind_tps
    bind_tps: float = 0.0
    lease_seconds: float = 2.0
    response_timeout: float = 1.0
    enquire_link_interval: float = 1.0
    late_response_grace: float | None = None
    reconnect_min: float = 0.05
    reconnect_max: float = 0.5
    max_attempts: int = 10
    flush_interval: float = 0.01
    poll_interval: float = 0.2
    maintenance_interval: float = 0.2
    retry_base: float = 0.05
    retry_max: float = 0.5
    shutdown_timeout: float = 5.0
    pool_size: int = 4
    log_level: str = "WARNING"

    def toml(self) -> str:
        """The config text (the password comes from the environment, as in production)."""
        grace = "" if self.late_response_grace is None else f"late_response_grace = {self.late_response_grace}\n"
        return (
            f'log_level = "{self.log_level}"\n'
            f'[database]\nurl = "{self.dsn}"\npool_size = {self.pool_size}\n'
            "[metrics]\nenabled = false\n"
            "[dispatcher]\n"
            f"lease_seconds = {self.lease_seconds}\nmax_attempts = {self.max_attempts}\n"
            f"flush_interval = {self.flush_interval}\npoll_interval = {self.poll_interval}\n"
            f"maintenance_interval = {self.maintenance_interval}\n"
            f"retry_base = {self.retry_base}\nretry_max = {self.retry_max}\n"
            f"shutdown_timeout = {self.shutdown_timeout}\n"
            f"[smsc.{SMSC_NAME}]\n"
            f'host = "127.0.0.1"\nport = {self.sim_port}\nsystem_id = "{SYSTEM_ID}"\n'
            f"binds = {self.binds}\nwindow = {self.window}\ntps = {self.tps}\nbind_tps = {self.bind_tps}\n"
            f"response_timeout = {self.response_timeout}\nenquire_link_interval = {self.enquire_link_interval}\n"
            f"{grace}reconnect_min = {self.reconnect_min}\nreconnect_max = {self.reconnect_max}\n"
        )

    def write(self, path: Path) -> Path:
        path.write_text(self.toml())
        return path


class GatewayProcess:
    """`smsgw run --config FILE` as a child process that can be killed (-9) and started again.

    Each start appends to `log_dir/gateway-<n>.log` (stderr; stdout is discarded). Never leaves a process
    behind: `close()` (or leaving ``async with``) kills whatever still runs.
    """

    def __init__(self, config_path: Path, log_dir: Path) -> None:
        self.config_path = config_path
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.log_paths: list[Path] = []

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the daemon (it must not be running)."""
        if self.alive:
            raise RuntimeError("gateway already running")
        self.starts += 1
        log_path = self.log_dir / f"gateway-{self.starts}.log"
        self.log_paths.append(log_path)
        env = {**os.environ, f"SMSGW_SMSC__{SMSC_NAME.upper()}__PASSWORD": PASSWORD}
        with log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [SMSGW, "run", "--config", str(self.config_path)],
                env=env, stdout=subprocess.DEVNULL, stderr=log_file,
            )

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs (nothing flushed, nothing unbound, leases left to expire)."""
        if not self.alive:
            raise RuntimeError(f"gateway not running (exit code {self.exit_code}): {self.log_tail()}")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(_PROCESS_WAIT_S)
        self.kills += 1

    async def terminate(self, timeout: float = _PROCESS_WAIT_S) -> int | None:
        """SIGTERM and wait (bounded) for the graceful exit; SIGKILL after `timeout`. Returns the exit code.

        Waits in a thread: the simulator runs on this event loop and must answer the daemon's unbinds."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, timeout)
        return proc.returncode

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the latest log, for assertion messages."""
        if not self.log_paths or not self.log_paths[-1].exists():
            return ""
        return self.log_paths[-1].read_text(errors="replace")[-chars:]

    def close(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(_PROCESS_WAIT_S)

    async def __aenter__(self) -> GatewayProcess:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- rows --------------------------------------------------------------------------------------------------


def body_for(n: int) -> str:
    """The body of row number `n`: the marker makes every submit_sm at the SMSC traceable to its row."""
    return f"chaos {n:07d} hello from the fault suite"


def marker_of(text: str) -> int | None:
    """The row number a body carries, or None for a message that is not ours (a keyword reply, say)."""
    m = MARKER_RE.search(text)
    return int(m.group(1)) if m else None


async def enqueue_marked(pool: asyncpg.Pool, n: int, *, start: int = 0) -> None:
    """COPY `n` rows numbered start..start+n-1, each with its marker body and an idempotency key."""
    records = [
        ("12345", f"+1202555{(start + i) % 10000:04d}", body_for(start + i), f"chaos-{start + i}")
        for i in range(n)
    ]
    async with pool.acquire(timeout=30) as conn:
        await conn.copy_records_to_table(
            "outbound_message", records=records, columns=["source", "destination", "body", "idempotency_key"],
            timeout=120,
        )


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool], timeout: float, interval: float = _POLL_S
) -> bool:
    """Poll `predicate` (sync or async) until true; False after `timeout` seconds (never waits longer)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def open_rows(pool: asyncpg.Pool) -> int:
    """Rows still queued, claimed or submitted."""
    return int(await pool.fetchval(
        "SELECT count(*) FROM outbound_message WHERE status = ANY($1::text[])", list(OPEN_STATUSES), timeout=30,
    ))


# -- fault events -------------------------------------------------------------------------------------------


@dataclass
class FaultEvent:
    """One injected fault. `at`: monotonic time it was injected; `recovered_s`: how long until the gateway
    was sending again (what "recovered" means is the scenario's, e.g. first accepted submit on a new bind)."""

    kind: str
    at: float
    recovered_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # When the fault stopped acting (a stall that ends, say); None: an instant (a kill, a drop).
    until: float | None = None

    @property
    def end(self) -> float:
        return self.at if self.until is None else self.until


def accepted_since(sim: SmscSimulator, since: float, *, new_binds_after: int = 0) -> SubmitRecord | None:
    """The first submit accepted at or after `since`, on a connection numbered above `new_binds_after`
    (connections are numbered in order: pass `sim.stats.connections` taken at the fault for a fresh bind)."""
    for record in _iter_from(sim.submits, since):
        if record.status == 0 and record.bind > new_binds_after:
            return record
    return None


def _iter_from(records: list[SubmitRecord], since: float) -> Iterable[SubmitRecord]:
    # Records are appended in arrival order, so received_at never decreases: bisect for the start.
    lo = bisect.bisect_left(records, since, key=lambda r: r.received_at)
    return records[lo:]


# -- counting at the SMSC ---------------------------------------------------------------------------------


@dataclass
class SmscTally:
    """What the SMSC saw, per row number (marked submits only)."""

    submit_sm: int  # every marked submit_sm read by the SMSC, whatever it answered
    accepted: dict[int, list[float]]  # row -> times its submit_sm were accepted (command_status 0)
    duplicates: int  # accepted submits beyond the first, summed over rows: what a handset gets twice
    per_event: list[int]  # duplicates attributed to each fault (same order as the events)
    unattributed: int  # duplicates with no fault between the two submits: a gateway bug (or a timeout)
    unmarked: int  # submit_sm without our marker (replies, ...): reported, not counted above

    @property
    def distinct_sent(self) -> int:
        return len(self.accepted)


def smsc_tally(sim: SmscSimulator, events: list[FaultEvent]) -> SmscTally:
    """Count the simulator's submit records and attribute each duplicate to a fault.

    A row accepted at t1 and again at t2 (t1 < t2) was sent again because of the first fault that acted
    after t1: the earliest one still acting at or after t1 (`FaultEvent.end`), provided it began by t2.
    The resend itself may come much later (a retried row goes to the back of the queue), and a stall that
    ends by reading what it held accepts the *old* copy last, which is why a fault's whole span counts, not
    only its start. A duplicate no fault explains is `unattributed`: the gateway sent a row twice on its own.
    """
    accepted: dict[int, list[float]] = {}
    marked = unmarked = 0
    for record in sim.submits:
        n = marker_of(record.text)
        if n is None:
            unmarked += 1
            continue
        marked += 1
        if record.status == 0:
            accepted.setdefault(n, []).append(record.received_at)
    order = sorted(range(len(events)), key=lambda i: events[i].at)
    per_event = [0] * len(events)
    unattributed = duplicates = 0
    for stamps in accepted.values():
        for earlier, later in itertools.pairwise(stamps):
            duplicates += 1
            blamed = next((i for i in order if events[i].end >= earlier), None)
            if blamed is None or events[blamed].at > later:
                unattributed += 1
            else:
                per_event[blamed] += 1
    return SmscTally(marked, accepted, duplicates, per_event, unattributed, unmarked)


# -- counting in the table ---------------------------------------------------------------------------------


@dataclass
class TableOutcome:
    """Where each marked row ended."""

    status_by_row: dict[int, str]
    statuses: dict[str, int]
    attempts_max: int

    @property
    def not_final(self) -> int:
        return sum(1 for s in self.status_by_row.values() if s not in FINAL_STATUSES)


async def table_outcome(pool: asyncpg.Pool) -> TableOutcome:
    rows = await pool.fetch(
        "SELECT idempotency_key, status, attempts FROM outbound_message WHERE idempotency_key LIKE 'chaos-%'",
        timeout=60,
    )
    by_row = {int(r["idempotency_key"].removeprefix("chaos-")): r["status"] for r in rows}
    return TableOutcome(by_row, dict(Counter(by_row.values())), max((r["attempts"] for r in rows), default=0))


# -- figures -------------------------------------------------------------------------------------------------


@dataclass
class Figures:
    """What every scenario reports (and bench/chaos.py prints as a table and one JSON line)."""

    scenario: str
    messages: int
    events: int
    event_kind: str
    submit_sm: int
    distinct_sent: int
    duplicates: int
    max_duplicates_per_event: int
    duplicates_per_event: list[int]
    unattributed_duplicates: int
    duplicate_bound_per_event: int
    lost: int
    not_final: int
    final_statuses: dict[str, int]
    recovery_s: list[float | None]
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out["recovery_s"] = [None if r is None else round(r, 3) for r in self.recovery_s]
        out["recovery_max_s"] = max((r for r in self.recovery_s if r is not None), default=None)
        if out["recovery_max_s"] is not None:
            out["recovery_max_s"] = round(out["recovery_max_s"], 3)
        out["wall_s"] = round(self.wall_s, 2)
        out.update(self.extra)
        return out

    def print(self) -> None:
        """Human-readable lines (visible with pytest -s)."""
        d = self.as_dict()
        print(f"\n[{self.scenario}] {self.messages} messages, {self.events} x {self.event_kind}, {d['wall_s']} s")
        print(f"  submit_sm at SMSC {self.submit_sm}, distinct rows sent {self.distinct_sent}, "
              f"duplicates {self.duplicates} (per event {self.duplicates_per_event}, "
              f"max {self.max_duplicates_per_event}, bound {self.duplicate_bound_per_event}, "
              f"unattributed {self.unattributed_duplicates})")
        print(f"  lost {self.lost}, not final {self.not_final}, final statuses {self.final_statuses}")
        print(f"  recovery s {d['recovery_s']}")
        if self.extra:
            print(f"  {self.extra}")


def figures(
    scenario: str,
    messages: int,
    events: list[FaultEvent],
    tally: SmscTally,
    table: TableOutcome,
    *,
    event_kind: str,
    duplicate_bound: int,
    wall_s: float,
    extra: dict[str, Any] | None = None,
) -> Figures:
    """Combine both counts. Lost = a row not final, final but not delivered (the simulator delivers
    everything it accepts), delivered without any accepted submit_sm, or missing from the table."""
    lost_rows = {n for n, s in table.status_by_row.items() if s != "delivered"}
    lost_rows |= {n for n, s in table.status_by_row.items() if s == "delivered" and n not in tally.accepted}
    lost_rows |= set(range(messages)) - set(table.status_by_row)
    return Figures(
        scenario=scenario,
        messages=messages,
        events=len(events),
        event_kind=event_kind,
        submit_sm=tally.submit_sm,
        distinct_sent=tally.distinct_sent,
        duplicates=tally.duplicates,
        max_duplicates_per_event=max(tally.per_event, default=0),
        duplicates_per_event=tally.per_event,
        unattributed_duplicates=tally.unattributed,
        duplicate_bound_per_event=duplicate_bound,
        lost=len(lost_rows),
        not_final=table.not_final,
        final_statuses=table.statuses,
        recovery_s=[e.recovered_s for e in events],
        wall_s=wall_s,
        extra=dict(extra or {}),
    )
