"""Token bucket maths (pure, explicit clock)."""

from __future__ import annotations

import itertools

import pytest

from throughput import TokenBucket


def test_unlimited_never_waits() -> None:
    b = TokenBucket(0)
    assert all(b.take(0.0) for _ in range(1000))
    assert b.delay(0.0) == 0


def test_smooth_pacing_spaces_sends_evenly() -> None:
    b = TokenBucket(100, now=0.0)
    sent = []
    t = 0.0
    while len(sent) < 201:
        d = b.delay(t)
        t += d
        assert b.take(t)
        sent.append(t)
    gaps = {round(b2 - a, 9) for a, b2 in itertools.pairwise(sent[1:])}
    assert gaps == {0.01}
    # 200 sends after the first take exactly 2 s: no once-a-second burst.
    assert sent[-1] == pytest.approx(2.0)


def test_burst_caps_saved_tokens() -> None:
    b = TokenBucket(10, burst=3, now=0.0)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert b.delay(100.0) == pytest.approx(0.1)


def test_set_rate_keeps_earned_tokens() -> None:
    b = TokenBucket(10, now=0.0)
    assert b.take(0.0)
    b.set_rate(1, 0.05)  # half a token earned at 10/s
    assert b.delay(0.05) == pytest.approx(0.5)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        TokenBucket(-1)
    with pytest.raises(ValueError):
        TokenBucket(1, burst=0.5)


def test_catch_up_keeps_the_rate_when_wakeups_are_late() -> None:
    # Every wake-up is 0.3 ms late: without catch-up 1,000/s becomes ~770/s; with it, 1,000/s holds.
    for catch_up, expected in ((0.0, 769), (0.01, 1000)):
        b = TokenBucket(1000, catch_up=catch_up, now=0.0)
        t, sent = 0.0, 0
        while t < 1.0:
            d = b.delay(t)
            t += d + (0.0003 if d else 0.0)
            if t < 1.0 and b.take(t):
                sent += 1
        assert abs(sent - expected) <= 2, (catch_up, sent)


def test_catch_up_never_floods_after_a_long_stall() -> None:
    b = TokenBucket(100, catch_up=0.01, now=0.0)
    assert b.take(0.0)
    # Stalled for 5 s: at most catch_up * rate (+1) sends go back to back.
    burst = 0
    while b.take(5.0):
        burst += 1
    assert burst <= 2
