"""Recipient numbers: the E.164 fast path must agree with the full `phonenumbers` path wherever it decides."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.message import _e164_fast, _parsed_number, normalise_number


def _slow(text: str, region: str = "US") -> str | None:
    """The full path (phonenumbers.parse), which the fast path must agree with."""
    return _parsed_number(text.strip(), region)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+12025550123", "12025550123"),  # NANP
        ("+447911123456", "447911123456"),  # UK mobile
        ("+4915112345678", "4915112345678"),  # Germany
        ("+33612345678", "33612345678"),  # France
        ("+5491123456789", "5491123456789"),  # Argentina mobile (parse's transform rules: slow path)
        ("+390612345678", "390612345678"),  # Italy: national leading zero (slow path)
        ("+79161234567", "79161234567"),  # Russia: national prefix 8 does not start it
        ("+78161234567", "78161234567"),  # ... and here it does: slow path decides
        ("+1202555", None),  # too short for NANP
        ("+1202555CALL", None),  # letters: never a vanity number
        ("2025550123", "12025550123"),  # national, default region US: slow path
        ("+999123456789", None),  # no such country code
        ("", None),
    ],
)
def test_normalise_number_table(raw: str, expected: str | None) -> None:
    normalise_number.cache_clear()
    assert normalise_number(raw, "US") == expected
    assert _slow(raw) == expected


def test_fast_path_decides_the_common_cases() -> None:
    """Without this the fast path could give up on everything and the property below would still pass."""
    for raw in ("+12025550123", "+447911123456", "+4915112345678", "+33612345678", "+61412345678"):
        assert _e164_fast(raw) == raw[1:]
    assert _e164_fast("+1202555") is None


_COUNTRY_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


@settings(max_examples=3000, derandomize=True, deadline=None)
@given(
    country_code=st.sampled_from(_COUNTRY_CODES),
    national=st.text(alphabet="0123456789", min_size=0, max_size=15),
)
@example(country_code=7, national="8161234567")
@example(country_code=54, national="91123456789")
@example(country_code=39, national="0612345678")
@example(country_code=1, national="12025550123")
def test_fast_path_agrees_with_parse(country_code: int, national: str) -> None:
    raw = f"+{country_code}{national}"
    fast = _e164_fast(raw)
    if fast is not False:
        assert fast == _slow(raw), raw


@settings(max_examples=1000, derandomize=True, deadline=None)
@given(st.text(alphabet="+0123456789 -()", max_size=20))
def test_any_digit_string_agrees(raw: str) -> None:
    fast = _e164_fast(raw.strip())
    if fast is not False:
        assert fast == _slow(raw), raw
