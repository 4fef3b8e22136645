"""Token bucket pacing.

Rule of this module: pure arithmetic on a `now` argument, no clock, no sleeping, so the maths is unit
tested exactly. With the default burst of one token the bucket spaces sends evenly at 1/rate
(smooth pacing, never a once-a-second burst).
"""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second, holding at most `burst` tokens. A rate of 0 means unlimited."""

    __slots__ = ("_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: float = 1.0, *, now: float = 0.0) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._updated = now

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now

    def delay(self, now: float) -> float:
        """Seconds until one token is available (0 when one is available now)."""
        if self.rate == 0:
            return 0.0
        self._refill(now)
        if self._tokens >= 1:
            return 0.0
        return (1 - self._tokens) / self.rate

    def take(self, now: float) -> bool:
        """Take one token if available; return whether it was taken."""
        if self.rate == 0:
            return True
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from `now` on (tokens earned so far are kept)."""
        self._refill(now)
        self.rate = rate
