"""Adaptive rate (AIMD) for an SMSC account: multiplicative decrease on throttling answers
(ESME_RTHROTTLED, ESME_RMSGQFUL), additive recovery while the SMSC accepts.

Rule of this module: pure arithmetic on `now`; the dispatcher feeds it events and applies `rate` to the
account's token bucket. A decrease starts from what the SMSC actually accepted in the last second (not from
what we sent: a throttling SMSC refuses the excess), so an unlimited account (rate 0) converges in one step
near the carrier's limit, then probes upwards additively.
"""

from __future__ import annotations


class AdaptiveRate:
    """Effective send rate of one account, between `floor` and `ceiling` (0 = no ceiling)."""

    __slots__ = (
        "_accepted",
        "_last_change",
        "_window_start",
        "ceiling",
        "decrease",
        "floor",
        "hold",
        "measured",
        "rate",
        "step",
        "step_fraction",
    )

    def __init__(
        self,
        ceiling: float,
        *,
        decrease: float = 0.8,
        step_fraction: float = 0.03,
        floor: float = 1.0,
        hold: float = 1.0,
        now: float = 0.0,
    ) -> None:
        if not 0 < decrease < 1:
            raise ValueError("decrease must be in (0, 1)")
        self.ceiling = ceiling
        self.rate = ceiling  # 0: unlimited until the first throttle
        self.decrease = decrease
        self.floor = floor
        self.hold = hold  # seconds between two decreases: one burst of throttles is one congestion signal
        self.step_fraction = step_fraction
        self.step = max(1.0, ceiling * step_fraction) if ceiling else 0.0
        self.measured = 0.0  # accepted submits per second over the last full measuring second
        self._accepted = 0
        self._window_start = now
        self._last_change = -1e18

    def _count(self, now: float) -> None:
        if now - self._window_start >= 1.0:
            self.measured = self._accepted / (now - self._window_start)
            self._accepted = 0
            self._window_start = now
        self._accepted += 1

    def _accepted_rate(self, now: float) -> float:
        if self.measured:
            return self.measured
        # No full second measured yet: count over at least one second, or a burst accepted in the first
        # milliseconds would read as a huge rate.
        return self._accepted / max(now - self._window_start, 1.0)

    def throttled(self, now: float) -> bool:
        """The SMSC said slow down. Returns True when the rate was lowered (at most once per `hold`)."""
        if now - self._last_change < self.hold:
            return False
        accepted = self._accepted_rate(now)
        current = min(self.rate, accepted) if self.rate and accepted else (self.rate or accepted)
        self.rate = max(self.floor, current * self.decrease)
        if not self.ceiling:  # no configured rate to scale the probe by: scale it by where we are
            self.step = max(1.0, self.rate * self.step_fraction)
        self._last_change = now
        return True

    def accepted(self, now: float) -> bool:
        """A send was accepted. Returns True when the rate was raised (at most once per `hold`)."""
        self._count(now)
        if not self.rate or (self.ceiling and self.rate >= self.ceiling):
            return False
        if now - self._last_change < self.hold:
            return False
        self.rate = self.rate + self.step
        if self.ceiling:
            self.rate = min(self.rate, self.ceiling)
        self._last_change = now
        return True
