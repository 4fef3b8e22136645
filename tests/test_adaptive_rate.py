"""AIMD maths of the adaptive account rate (pure, explicit clock)."""

from __future__ import annotations

import pytest

from throughput import AdaptiveRate


def test_throttle_lowers_multiplicatively_once_per_hold() -> None:
    a = AdaptiveRate(100, decrease=0.5, hold=1.0)
    assert a.throttled(10.0) and a.rate == 50
    assert not a.throttled(10.5) and a.rate == 50  # the same burst of throttles
    assert a.throttled(11.0) and a.rate == 25


def test_recovery_is_additive_up_to_the_ceiling() -> None:
    a = AdaptiveRate(100, decrease=0.5, step_fraction=0.1, hold=1.0)
    a.throttled(0.0)
    rates = []
    for t in range(1, 10):
        a.accepted(float(t))
        rates.append(a.rate)
    assert rates == [60, 70, 80, 90, 100, 100, 100, 100, 100]


def test_floor_is_kept() -> None:
    a = AdaptiveRate(4, decrease=0.5, floor=1.0, hold=0.0)
    for t in range(10):
        a.throttled(float(t))
    assert a.rate == 1.0


def test_unlimited_starts_from_the_accepted_rate() -> None:
    a = AdaptiveRate(0, decrease=0.5, hold=1.0)
    for i in range(600):  # 600 accepted in 2 s: 300/s (whatever was sent and refused meanwhile)
        a.accepted(i / 300)
    assert a.measured == pytest.approx(300, rel=0.01)
    assert a.throttled(2.0)
    assert a.rate == pytest.approx(150, rel=0.01)
    assert a.accepted(3.5) and a.rate > 150


def test_a_configured_rate_above_what_the_smsc_takes_drops_to_the_accepted_rate() -> None:
    a = AdaptiveRate(1000, decrease=0.8, hold=1.0)
    for i in range(400):
        a.accepted(i / 200)  # the SMSC takes 200/s
    assert a.throttled(2.0)
    assert a.rate == pytest.approx(160, rel=0.01)


def test_bad_decrease_is_refused() -> None:
    with pytest.raises(ValueError):
        AdaptiveRate(10, decrease=1.0)
