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
