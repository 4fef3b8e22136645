"""Token bucket pacing, in its GCRA form (a theoretical arrival time instead of a token count).

Rule of this module: pure arithmetic on a `now` argument, no clock, no sleeping, so the maths is unit
tested exactly. With the default burst of one token the bucket spaces sends evenly at 1/rate
(smooth pacing, never a once-a-second burst).

`catch_up` is the scheduler lag the bucket forgives: an event loop wakes a sleeper a little late, and a plain
GCRA would lose that lateness at every send (at 1,000 TPS, 0.1 ms per send is a 10 % shortfall). Sends that
are up to `catch_up` seconds behind their schedule keep the schedule instead, so every second carries the
configured count; after a longer stall the schedule restarts from now (no flood of saved-up sends).
In any window of T seconds a bucket lets through at most rate * (T + catch_up) + burst sends.

`open_until` bounds sending in time: the gateway's share of an account rate is valid only until then
(gateway/rate_share.py, the fence), and a bucket without a share is closed. A closed bucket saves nothing up:
it resumes at its rate from the moment it opens again.
"""

from __future__ import annotations

import math

# Float slack so that sleeping exactly `delay(now)` always makes the next `take` succeed.
_EPSILON = 1e-9
# What `delay` answers while closed: opening depends on an outside event (a heartbeat), so look again soon.
CLOSED_RECHECK_S = 0.05


class TokenBucket:
    """`rate` sends per second with at most `burst` back to back. A rate of 0 means unlimited."""

    __slots__ = ("_tat", "burst", "catch_up", "open_until", "rate")

    def __init__(self, rate: float, burst: float = 1.0, *, now: float = 0.0, catch_up: float = 0.0) -> None:
        if rate < 0 or burst < 1 or catch_up < 0:
            raise ValueError("rate must be >= 0, burst >= 1 and catch_up >= 0")
        self.rate = rate
        self.burst = burst
        self.catch_up = catch_up
        self._tat = now  # theoretical arrival time of the next send
        self.open_until = math.inf  # no send at or after this time (-inf: closed)

    def _tolerance(self) -> float:
        return (self.burst - 1) / self.rate

    def delay(self, now: float) -> float:
        """Seconds until a send is allowed (0 when allowed now); while closed, `CLOSED_RECHECK_S`."""
        if now >= self.open_until:
            return CLOSED_RECHECK_S
        if self.rate == 0:
            return 0.0
        wait = self._tat - self._tolerance() - now
        return wait if wait > _EPSILON else 0.0

    def take(self, now: float) -> bool:
        """Take one send if allowed now; return whether it was taken."""
        if now >= self.open_until:
            return False
        if self.rate == 0:
            return True
        if self._tat - self._tolerance() - now > _EPSILON:
            return False
        self._tat = max(self._tat, now - self.catch_up) + 1.0 / self.rate
        return True

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from `now` on; the wait already owed is rescaled to the new rate."""
        if rate < 0:
            raise ValueError("rate must be >= 0")
        if self.rate and rate:
            owed = max(0.0, self._tat - now)
            self._tat = now + owed * self.rate / rate
        else:
            self._tat = now
        self.rate = rate

    def open(self, until: float, now: float) -> None:
        """Allow sends before `until` (a time on the `now` clock; math.inf: for good). A bucket that was closed
        starts its schedule at `now`: nothing is saved up while closed."""
        if now >= self.open_until:
            self._tat = max(self._tat, now)
        self.open_until = until

    def close(self) -> None:
        """No send until `open`."""
        self.open_until = -math.inf
