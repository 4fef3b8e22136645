"""The split of an SMSC account's rate (`smsc.tps`) between the gateway instances serving it, such that the sum
of their send rates never exceeds it: not in the steady state, and not while an instance starts, joins,
stops or dies.

Rule of this module: pure decisions on what the caller read, no clock and no database. The heartbeat
(gateway/maintenance.py `heartbeat`) reads the rows and applies the result, the dispatcher
(`SmscDispatcher.set_rate_share`) turns it into its account bucket's rate, and the SQL sits with the other
heartbeat statements (gateway/db/outbound_sql.py).

The protocol: every instance holds a *grant*
---------------------------------------------
Each instance's heartbeat row (`gateway_instance`, one per instance and SMSC, migration 0010) carries its grant
`grant_tps`: the most it may send at until it writes its row again, or until the row is stale.

1. Decisions are serialised. A heartbeat is one short transaction under one advisory lock (`LOCK_RATE_SHARE`):
   read the other rows, decide, write my row, commit. Every decision therefore sees every grant committed
   before it, nobody's grant changes while I decide, and I take at most what is free: the account rate minus
   the others' grants. So the committed grants of the live rows never add up to more than the account rate
   (grants are whole thousandths of a msg/s, rounded down, so rounding never adds up to more either). An
   instance frozen while it holds the lock has its transaction ended by the server after 2 s idle.
2. Lower before, raise after. A lower grant is applied to the account bucket *before* the row is committed (the
   others may count on the released rate from the commit on); a higher one only *after* the commit. The rate
   actually used is therefore at every instant at most the committed grant: sum(sent) <= sum(grants) <= tps.
3. Fair share, taken from what is free: my grant = min(tps / n, tps - sum(others' grants)), n = the live
   instances including me. A newcomer registers before it sends anything (`Gateway.start` runs the first
   heartbeat before the binds start; the account bucket starts closed), typically with a grant of 0 because
   the others hold the whole rate. Each other instance sees it at its next heartbeat and lowers itself to
   tps / n (point 2: before its commit); the newcomer, beating faster while it waits (`heartbeat_interval`),
   takes what was released. This is the "acknowledgement" of a new member: a lowered, committed grant.
   Two heartbeats of each instance at most; no vote, no epoch, and no instance can be left waiting once the
   others have beaten (they never keep more than their fair share).
4. Leaving. A graceful stop first stops sending, then deletes its rows (`LEAVE_INSTANCE`): its grant is free at
   once, the others take it at their next heartbeat. A dead instance (kill -9) keeps its grant counted until
   its row is stale (`stale_after` without a heartbeat, measured on the database clock): only then is its
   share re-used.
5. Self-fencing. An instance that cannot heartbeat (database unreachable, event loop stalled) is not
   necessarily dead: it may still be sending while the others count it as gone. So a grant is valid only for
   `fence_after(stale_after)` (< `stale_after`) from the moment *before* the heartbeat that wrote it began; the
   account bucket closes itself when that runs out (`TokenBucket.open_until`) and opens again at the next
   successful heartbeat. The row's `last_seen` is `now()` of that transaction, which started later still, so
   the fence has closed more than `FENCE_MARGIN_S` before any other instance can see the row as stale.

Over a 1-second window at the SMSC, each account bucket adds at most its burst and its scheduler catch-up to
its rate (throughput/token_bucket.py), and one send at a change of its rate: at most
tps * (1 + catch_up) + n * (burst + 1) submits in any 1 s, about the slack one instance alone has.

The adaptive rate (throughput/adaptive.py, AIMD on throttling answers) works below the grant: the grant is its
ceiling. A throttled instance sends less than its grant and nobody takes the difference (a throttling SMSC
is not pushed harder). The split is not congestion: a rate held down only by a smaller grant follows a larger
grant at once, instead of climbing back additively.

An instance configured without an account rate (tps 0) takes no part: its grant is 0 and nobody counts it.
Instances configured with different rates for one account split the smallest. A row written by a gateway from
before 0010 has no grant: it counts as holding its whole configured rate (safe; a rolling upgrade lets the new
instance send once the old ones are gone). The instance name is the identity: a process restarted under the
same name takes its own row over at once (`smsgw run --workers` restarts workers so); two live processes must
never share a name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

# Heartbeat period while this instance holds its fair share everywhere: a newcomer waits at most this long for
# each other instance to release its part.
STEADY_INTERVAL_S: Final = 0.5
# While waiting for the others to release (a grant below the fair share): how soon to look again.
WAITING_INTERVAL_S: Final = 0.1
# How long before the others may count a silent instance as gone it stops sending by itself. Covers submits
# still in socket buffers and the rate difference of two machines' clocks over `stale_after` (both tiny).
FENCE_MARGIN_S: Final = 1.0
# Grants are whole thousandths of a msg/s, reckoned in integers: float sums of thirds and fifths would leave a
# member a hair below its fair share for ever, or the others a hair above the account rate.
_MILLI: Final = 1000
# Float noise allowed when reading a rate back as thousandths (a stored 333.333 is 333332.99999999994 of them).
_NOISE: Final = 1e-6


class ShareReason(StrEnum):
    """Why a grant is what it is (logged, and tells a settled share from a transient one)."""

    UNLIMITED = "unlimited"  # no account rate configured here: nothing to split, the bucket has no limit
    ALONE = "alone"  # the only live instance: the whole account rate
    FAIR_SHARE = "fair_share"  # tps / live instances
    WAITING = "waiting"  # less than the fair share: the others still hold more than theirs


@dataclass(frozen=True, slots=True)
class Member:
    """Another instance's heartbeat row for the same account, as read under the rate-share lock."""

    instance: str
    grant: float  # what it may send at (its grant_tps; a row from before 0010: its configured tps)
    tps: float  # the account rate configured there (0: it takes no part in the split)
    age: float  # seconds since its last heartbeat, on the database clock


@dataclass(frozen=True, slots=True)
class Share:
    """This instance's grant for one account."""

    rate: float  # msg/s it may send at until its next heartbeat (0: nothing; with UNLIMITED: no limit at all)
    members: int  # live instances taking part, including this one
    reason: ShareReason

    @property
    def settled(self) -> bool:
        """The fair share is reached (nothing more to wait for)."""
        return self.reason is not ShareReason.WAITING


def _milli_down(rate: float) -> int:
    """A rate I may use, in thousandths, rounded down."""
    return math.floor(rate * _MILLI + _NOISE)


def _milli_up(rate: float) -> int:
    """A rate another instance may use, in thousandths, rounded up (never under-count what others hold)."""
    return math.ceil(max(0.0, rate) * _MILLI - _NOISE)


def decide_share(tps: float, others: Iterable[Member], stale_after: float) -> Share:
    """The rate this instance may send at now, given the other instances' rows for the account.

    `tps` is the account rate configured here; `others` are every other instance's row for the account,
    stale or not (a row is live while its age is below `stale_after`: a silent instance's grant is only
    re-used once it is stale). Must be called under the rate-share lock, and a lower result applied before
    the row is written (module docstring).
    """
    if tps <= 0:
        return Share(0.0, 1, ShareReason.UNLIMITED)
    live = [m for m in others if m.age < stale_after and m.tps > 0]
    account = _milli_down(min([tps, *(m.tps for m in live)]))
    if not live:
        return Share(account / _MILLI, 1, ShareReason.ALONE)
    members = len(live) + 1
    fair = account // members
    spare = account - sum(_milli_up(m.grant) for m in live)
    rate = max(0, min(fair, spare))
    return Share(rate / _MILLI, members, ShareReason.FAIR_SHARE if rate >= fair else ShareReason.WAITING)


def fence_after(stale_after: float) -> float:
    """Seconds a grant stays valid after the start of the heartbeat that wrote it (< `stale_after`)."""
    return max(stale_after / 2, stale_after - FENCE_MARGIN_S)


def heartbeat_interval(maintenance_interval: float, *, waiting: bool) -> float:
    """Seconds until the next heartbeat: short while a grant is below the fair share, never slower than the
    maintenance pass."""
    steady = min(STEADY_INTERVAL_S, maintenance_interval)
    return min(WAITING_INTERVAL_S, steady) if waiting else steady
