"""command_status classification (smpp-reference §4) and retry back-off."""

from __future__ import annotations

import random
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.error_policy import DEFAULT_CLASSES, STATUS_NAMES, ErrorClass, ErrorPolicy, backoff
from gateway.smpp.pdu import Status, status_name

T, TH, P, S = ErrorClass.TRANSIENT, ErrorClass.THROTTLE, ErrorClass.PERMANENT, ErrorClass.SESSION

# smpp-reference §4, typed in from the document (not from gateway/error_policy.py).
REFERENCE = [
    (0x01, "ESME_RINVMSGLEN", P),
    (0x02, "ESME_RINVCMDLEN", S),
    (0x03, "ESME_RINVCMDID", S),
    (0x04, "ESME_RINVBNDSTS", S),
    (0x05, "ESME_RALYBND", S),
    (0x06, "ESME_RINVPRTFLG", P),
    (0x07, "ESME_RINVREGDLVFLG", P),
    (0x08, "ESME_RSYSERR", T),
    (0x0A, "ESME_RINVSRCADR", P),
    (0x0B, "ESME_RINVDSTADR", P),
    (0x0C, "ESME_RINVMSGID", P),
    (0x0D, "ESME_RBINDFAIL", S),
    (0x0E, "ESME_RINVPASWD", S),
    (0x0F, "ESME_RINVSYSID", S),
    (0x11, "ESME_RCANCELFAIL", P),
    (0x13, "ESME_RREPLACEFAIL", P),
    (0x14, "ESME_RMSGQFUL", TH),
    (0x15, "ESME_RINVSERTYP", P),
    (0x33, "ESME_RINVNUMDESTS", P),
    (0x34, "ESME_RINVDLNAME", P),
    (0x40, "ESME_RINVDESTFLAG", P),
    (0x42, "ESME_RINVSUBREP", P),
    (0x43, "ESME_RINVESMCLASS", P),
    (0x44, "ESME_RCNTSUBDL", P),
    (0x45, "ESME_RSUBMITFAIL", P),
    (0x48, "ESME_RINVSRCTON", P),
    (0x49, "ESME_RINVSRCNPI", P),
    (0x50, "ESME_RINVDSTTON", P),
    (0x51, "ESME_RINVDSTNPI", P),
    (0x53, "ESME_RINVSYSTYP", S),
    (0x54, "ESME_RINVREPFLAG", P),
    (0x55, "ESME_RINVNUMMSGS", P),
    (0x58, "ESME_RTHROTTLED", TH),
    (0x61, "ESME_RINVSCHED", P),
    (0x62, "ESME_RINVEXPIRY", P),
    (0x63, "ESME_RINVDFTMSGID", P),
    (0x64, "ESME_RX_T_APPN", T),
    (0x65, "ESME_RX_P_APPN", P),
    (0x66, "ESME_RX_R_APPN", P),
    (0x67, "ESME_RQUERYFAIL", P),
    (0xC0, "ESME_RINVOPTPARSTREAM", P),
    (0xC1, "ESME_ROPTPARNOTALLWD", P),
    (0xC2, "ESME_RINVPARLEN", P),
    (0xC3, "ESME_RMISSINGOPTPARAM", P),
    (0xC4, "ESME_RINVOPTPARAMVAL", P),
    (0xFE, "ESME_RDELIVERYFAILURE", P),
    (0xFF, "ESME_RUNKNOWNERR", T),
]
REFERENCE_CODES = {code for code, _name, _cls in REFERENCE}


@pytest.mark.parametrize(("code", "name", "expected"), REFERENCE, ids=[name for _c, name, _e in REFERENCE])
def test_reference_table(code: int, name: str, expected: ErrorClass) -> None:
    policy = ErrorPolicy()
    assert policy.classify(code) is expected
    assert policy.describe(code) == name


def test_table_has_exactly_the_reference_codes() -> None:
    assert set(DEFAULT_CLASSES) == REFERENCE_CODES
    assert set(STATUS_NAMES) == REFERENCE_CODES


def test_names_agree_with_pdu_status() -> None:
    for status in Status:
        if status != Status.ROK:
            assert ErrorPolicy().describe(status) == status_name(status)


def test_class_groups() -> None:
    policy = ErrorPolicy()
    assert {c for c in REFERENCE_CODES if policy.classify(c) is TH} == {0x14, 0x58}
    assert {c for c in REFERENCE_CODES if policy.classify(c) is T} == {0x08, 0x64, 0xFF}
    assert {c for c in REFERENCE_CODES if policy.classify(c) is S} == {0x02, 0x03, 0x04, 0x05, 0x0D, 0x0E, 0x0F, 0x53}


def test_string_values() -> None:
    assert [c.value for c in ErrorClass] == ["transient", "throttle", "permanent", "session"]
    assert ErrorClass("throttle") is TH
    assert f"{S}" == "session"


@pytest.mark.parametrize(
    "code",
    [
        # reserved in 3.4, and SMPP 5.0 extensions
        *(
            0x09,
            0x10,
            0x12,
            0x16,
            0x22,
            0x32,
            0x41,
            0x46,
            0x52,
            0x56,
            0x59,
            0x68,
            0xBF,
            0xC5,
            0xFD,
            0x100,
            0x112,
            0x3FF,
        ),
        # SMSC vendor range, and reserved above it
        *(0x400, 0x401, 0x4A1, 0x4FF, 0x500, 0xFFFF, 0xFFFFFFFF),
    ],
)
def test_unknown_codes_default_to_permanent(code: int) -> None:
    assert ErrorPolicy().classify(code) is P
    assert ErrorPolicy().describe(code) == f"0x{code:08X}"


def test_describe_vendor_code() -> None:
    assert ErrorPolicy().describe(0x401) == "0x00000401"
    assert ErrorPolicy().describe(0x0B) == "ESME_RINVDSTADR"


def test_delivery_failure_reason() -> None:
    policy = ErrorPolicy()
    assert policy.classify(0xFE, delivery_failure_reason=3) is T  # temporary network error
    for reason in (None, 0, 1, 2, 4):
        assert policy.classify(0xFE, delivery_failure_reason=reason) is P
    assert policy.classify(0x08, delivery_failure_reason=3) is T
    assert policy.classify(0x0B, delivery_failure_reason=3) is P  # only 0xFE reads the reason
    assert ErrorPolicy({0xFE: P}).classify(0xFE, delivery_failure_reason=3) is P  # an override wins


def test_timeouts_are_transient() -> None:
    assert ErrorPolicy().classify_timeout() is T


# --- overrides ------------------------------------------------------------------------------------


def test_overrides() -> None:
    policy = ErrorPolicy({0x45: T, 0x401: T, 0x4A1: TH, 0x08: P})
    assert policy.classify(0x45) is T
    assert policy.classify(0x401) is T
    assert policy.classify(0x4A1) is TH
    assert policy.classify(0x08) is P
    assert policy.classify(0x402) is P  # the rest of the vendor range keeps the default
    assert policy.classify(0x58) is TH  # and so does the table
    assert ErrorPolicy().classify(0x45) is P


def test_overrides_are_copied_and_read_only() -> None:
    raw = {0x45: T}
    policy = ErrorPolicy(raw)
    raw[0x45] = S
    raw[0x0B] = T
    assert policy.classify(0x45) is T
    assert policy.classify(0x0B) is P
    assert isinstance(policy.overrides, MappingProxyType)
    with pytest.raises(TypeError):
        policy.overrides[0x0B] = T  # type: ignore[index]


def test_policy_is_frozen_comparable_and_hashable() -> None:
    policy = ErrorPolicy({0x45: "transient"})  # type: ignore[dict-item]
    assert policy == ErrorPolicy({0x45: T})
    assert policy != ErrorPolicy()
    assert hash(policy) == hash(ErrorPolicy({0x45: T}))
    with pytest.raises(AttributeError):
        policy.overrides = {}  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({0: T}, ValueError),
        ({-1: T}, ValueError),
        ({0x1_0000_0000: T}, ValueError),
        ({0x45: "retry"}, ValueError),
        ({0x45: 1}, ValueError),
        ({"0x45": T}, TypeError),
    ],
)
def test_bad_overrides(overrides: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        ErrorPolicy(overrides)


def test_from_config() -> None:
    policy = ErrorPolicy.from_config(
        {"0x45": "transient", "1025": "THROTTLE", " 0x00000402 ": "session", 0x0B: "transient"}
    )
    assert policy.overrides == {0x45: T, 0x401: TH, 0x402: S, 0x0B: T}
    with pytest.raises(ValueError):
        ErrorPolicy.from_config({"forty-five": "transient"})
    with pytest.raises(ValueError, match="ESME_RSUBMITFAIL"):
        ErrorPolicy.from_config({"0x45": "sometimes"})
    with pytest.raises(ValueError, match="ESME_ROK"):
        ErrorPolicy.from_config({"0": "transient"})


@pytest.mark.parametrize(
    ("status", "error"), [(0, ValueError), (-5, ValueError), (2**32, ValueError), ("8", TypeError)]
)
def test_classify_rejects_non_errors(status: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        ErrorPolicy().classify(status)  # type: ignore[arg-type]


@given(st.integers(1, 0xFFFFFFFF))
def test_every_code_has_a_class_and_a_name(status: int) -> None:
    policy = ErrorPolicy()
    assert policy.classify(status) in ErrorClass
    name = policy.describe(status)
    assert name.startswith("ESME_") == (status in REFERENCE_CODES)


# --- back-off -------------------------------------------------------------------------------------


def test_backoff_bounds_per_attempt() -> None:
    rng = random.Random(7)
    for attempt, nominal in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0), (6, 60.0), (50, 60.0)]:
        draws = [backoff(attempt, base=2.0, cap=60.0, rng=rng) for _ in range(500)]
        assert min(draws) >= 0.8 * nominal
        assert max(draws) <= min(1.2 * nominal, 60.0)
        # The jitter really spreads the draws over the range.
        assert max(draws) - min(draws) > 0.25 * (min(1.2 * nominal, 60.0) - 0.8 * nominal)


def test_backoff_envelope_is_monotonic() -> None:
    # Lowest and highest possible delay per attempt, taken from rngs pinned at the ends of [0, 1).
    class Pinned(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def random(self) -> float:
            return self.value

    lows = [backoff(a, base=0.5, cap=30.0, rng=Pinned(0.0)) for a in range(1, 40)]
    highs = [backoff(a, base=0.5, cap=30.0, rng=Pinned(1.0)) for a in range(1, 40)]
    assert lows == sorted(lows)
    assert highs == sorted(highs)
    assert lows[0] == pytest.approx(0.4)
    assert highs[0] == pytest.approx(0.6)
    assert max(highs) == 30.0
    assert lows[-1] == pytest.approx(24.0)


@given(
    attempt=st.integers(1, 5000),
    base=st.floats(1e-3, 1e3),
    cap=st.floats(1e-3, 1e5),
    seed=st.integers(0, 2**32),
)
def test_backoff_never_exceeds_cap(attempt: int, base: float, cap: float, seed: int) -> None:
    delay = backoff(attempt, base=base, cap=cap, rng=random.Random(seed))
    nominal = min(cap, base * 2.0 ** min(attempt - 1, 1023))
    assert 0 < delay <= cap
    assert delay >= 0.8 * nominal * (1 - 1e-12)


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    assert backoff(3, base=1.0, cap=10.0, rng=random.Random(1)) == backoff(3, base=1.0, cap=10.0, rng=random.Random(1))
    assert 0.8 <= backoff(1, base=1.0, cap=10.0) <= 1.2  # the module's own rng


@pytest.mark.parametrize(
    ("attempt", "base", "cap"),
    [
        (0, 1.0, 10.0),
        (-1, 1.0, 10.0),
        (1, 0.0, 10.0),
        (1, -1.0, 10.0),
        (1, 1.0, 0.0),
        (1, float("inf"), 10.0),
        (1, 1.0, float("nan")),
    ],
)
def test_backoff_rejects_bad_arguments(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        backoff(attempt, base=base, cap=cap)
