"""What a sending gateway does with a non-zero command_status: the classes of smpp-reference §4.

- ``TRANSIENT``: retry later with back-off (ESME_RSYSERR, ESME_RX_T_APPN, ESME_RUNKNOWNERR, response
  timeouts). ESME_RUNKNOWNERR is in this class only so that it gets a few retries: the caller's attempt
  limit fails it after that.
- ``THROTTLE``: retry later *and* lower the submit rate (ESME_RTHROTTLED, ESME_RMSGQFUL).
- ``SESSION``: the message may be fine but the bind is not: fix or redo the bind, then resubmit.
- ``PERMANENT``: fail the message and report the code. Also the default for every code the table does
  not list (reserved values, SMPP 5.0 extensions, the 0x400-0x4FF SMSC vendor range), as Kannel does;
  carriers that use such codes for passing faults get a per-SMSC override.

ESME_RDELIVERYFAILURE (0xFE) is "P/T" in the reference: it is transient when the data_sm_resp's
delivery_failure_reason TLV says 3 (temporary network error), permanent otherwise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from gateway.smpp.pdu import status_name

__all__ = ["DEFAULT_CLASSES", "STATUS_NAMES", "ErrorClass", "ErrorPolicy", "backoff"]


class ErrorClass(StrEnum):
    """What to do with a failed request; the values are what config files and logs use."""

    TRANSIENT = "transient"
    THROTTLE = "throttle"
    PERMANENT = "permanent"
    SESSION = "session"


_T, _Th, _P, _S = ErrorClass.TRANSIENT, ErrorClass.THROTTLE, ErrorClass.PERMANENT, ErrorClass.SESSION

# smpp-reference §4, row by row: (name, class). Names for codes that gateway.smpp.pdu.Status lacks
# live here so ``describe`` names every code of the table.
_TABLE: Final[dict[int, tuple[str, ErrorClass]]] = {
    0x01: ("ESME_RINVMSGLEN", _P),
    0x02: ("ESME_RINVCMDLEN", _S),
    0x03: ("ESME_RINVCMDID", _S),
    0x04: ("ESME_RINVBNDSTS", _S),
    0x05: ("ESME_RALYBND", _S),
    0x06: ("ESME_RINVPRTFLG", _P),
    0x07: ("ESME_RINVREGDLVFLG", _P),
    0x08: ("ESME_RSYSERR", _T),
    0x0A: ("ESME_RINVSRCADR", _P),
    0x0B: ("ESME_RINVDSTADR", _P),
    0x0C: ("ESME_RINVMSGID", _P),
    0x0D: ("ESME_RBINDFAIL", _S),
    0x0E: ("ESME_RINVPASWD", _S),
    0x0F: ("ESME_RINVSYSID", _S),
    0x11: ("ESME_RCANCELFAIL", _P),
    0x13: ("ESME_RREPLACEFAIL", _P),
    0x14: ("ESME_RMSGQFUL", _Th),
    0x15: ("ESME_RINVSERTYP", _P),
    0x33: ("ESME_RINVNUMDESTS", _P),
    0x34: ("ESME_RINVDLNAME", _P),
    0x40: ("ESME_RINVDESTFLAG", _P),
    0x42: ("ESME_RINVSUBREP", _P),
    0x43: ("ESME_RINVESMCLASS", _P),
    0x44: ("ESME_RCNTSUBDL", _P),
    0x45: ("ESME_RSUBMITFAIL", _P),  # P*: the usual candidate for a per-carrier TRANSIENT override
    0x48: ("ESME_RINVSRCTON", _P),
    0x49: ("ESME_RINVSRCNPI", _P),
    0x50: ("ESME_RINVDSTTON", _P),
    0x51: ("ESME_RINVDSTNPI", _P),
    0x53: ("ESME_RINVSYSTYP", _S),
    0x54: ("ESME_RINVREPFLAG", _P),
    0x55: ("ESME_RINVNUMMSGS", _P),
    0x58: ("ESME_RTHROTTLED", _Th),
    0x61: ("ESME_RINVSCHED", _P),
    0x62: ("ESME_RINVEXPIRY", _P),
    0x63: ("ESME_RINVDFTMSGID", _P),
    0x64: ("ESME_RX_T_APPN", _T),
    0x65: ("ESME_RX_P_APPN", _P),
    0x66: ("ESME_RX_R_APPN", _P),
    0x67: ("ESME_RQUERYFAIL", _P),
    0xC0: ("ESME_RINVOPTPARSTREAM", _P),
    0xC1: ("ESME_ROPTPARNOTALLWD", _P),
    0xC2: ("ESME_RINVPARLEN", _P),
    0xC3: ("ESME_RMISSINGOPTPARAM", _P),
    0xC4: ("ESME_RINVOPTPARAMVAL", _P),
    0xFE: ("ESME_RDELIVERYFAILURE", _P),  # P/T: see delivery_failure_reason in ErrorPolicy.classify
    0xFF: ("ESME_RUNKNOWNERR", _T),  # T?: a few retries (the caller's attempt limit), then fail
}
del _T, _Th, _P, _S

DEFAULT_CLASSES: Final[Mapping[int, ErrorClass]] = MappingProxyType({code: cls for code, (_n, cls) in _TABLE.items()})
STATUS_NAMES: Final[Mapping[int, str]] = MappingProxyType({code: name for code, (name, _c) in _TABLE.items()})

_ESME_RDELIVERYFAILURE: Final = 0xFE
_TEMPORARY_NETWORK_ERROR: Final = 3  # delivery_failure_reason value (smpp-reference §5)
_MAX_STATUS: Final = 0xFFFFFFFF
# Jitter needs no cryptographic quality; a private instance keeps callers' seeding of `random` irrelevant.
_RNG: Final = random.Random()


def _check_status(status: int) -> None:
    if isinstance(status, bool) or not isinstance(status, int):
        raise TypeError(f"command_status must be an int, got {type(status).__name__}")
    if not 0 < status <= _MAX_STATUS:
        if status == 0:
            raise ValueError("command_status 0 (ESME_ROK) is not an error")
        raise ValueError(f"command_status out of range: {status}")


def _parse_status(key: int | str) -> int:
    if isinstance(key, str):
        # Config files write codes as "0x45", "69" or "0x00000401" (TOML keys are always strings).
        return int(key.strip(), 0)
    return key


def _parse_class(status: int, value: ErrorClass | str) -> ErrorClass:
    try:
        # Config files may write "TRANSIENT"; a non-string (a number) is no class name at all.
        return ErrorClass(value.strip().lower() if isinstance(value, str) else value)
    except ValueError:
        expected = [c.value for c in ErrorClass]
        raise ValueError(
            f"unknown error class {value!r} for {status_name(status)}; expected one of {expected}"
        ) from None


@dataclass(frozen=True)
class ErrorPolicy:
    """command_status classification for one SMSC: the §4 table plus that SMSC's overrides.

    ``overrides`` maps a command_status to the class to use instead of the table's (or instead of the
    PERMANENT default for unlisted codes). It is copied and frozen at construction; values may be
    given as ``ErrorClass`` members or their string values ("transient").

    Raises:
        ValueError: an override code is 0 or outside 32 bits, or a class name is unknown.
        TypeError: an override code is not an int.
    """

    overrides: Mapping[int, ErrorClass] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        frozen: dict[int, ErrorClass] = {}
        for status, cls in self.overrides.items():
            _check_status(status)
            frozen[status] = _parse_class(status, cls)
        # A read-only view of a private copy: the caller's dict can change without changing the policy.
        object.__setattr__(self, "overrides", MappingProxyType(frozen))

    @classmethod
    def from_config(cls, raw: Mapping[int | str, str]) -> ErrorPolicy:
        """Build a policy from config-file overrides such as ``{"0x45": "transient", "1025": "throttle"}``.

        Raises:
            ValueError: a code is not an integer literal (decimal or 0x hex) or out of range, or a
                class name is unknown.
            TypeError: a code is neither an int nor a string.
        """
        overrides: dict[int, ErrorClass] = {}
        for key, value in raw.items():
            status = _parse_status(key)
            _check_status(status)
            overrides[status] = _parse_class(status, value)
        return cls(overrides)

    def classify(self, status: int, *, delivery_failure_reason: int | None = None) -> ErrorClass:
        """The class of a non-zero command_status: override, else the §4 table, else PERMANENT.

        ``delivery_failure_reason`` (the TLV of a data_sm_resp) only matters for ESME_RDELIVERYFAILURE
        without an override: 3 (temporary network error) makes it TRANSIENT.

        Raises:
            ValueError: ``status`` is 0 (ESME_ROK is not an error) or outside 32 bits.
            TypeError: ``status`` is not an int.
        """
        _check_status(status)
        override = self.overrides.get(status)
        if override is not None:
            return override
        if status == _ESME_RDELIVERYFAILURE and delivery_failure_reason == _TEMPORARY_NETWORK_ERROR:
            return ErrorClass.TRANSIENT
        return DEFAULT_CLASSES.get(status, ErrorClass.PERMANENT)

    def classify_timeout(self) -> ErrorClass:
        """The class of a request whose response never came (e.g. submit_sm_resp): TRANSIENT.

        A timed-out submit_sm is ambiguous, the SMSC may have accepted it: the caller records that
        before retrying, since a retry may deliver the message twice.
        """
        return ErrorClass.TRANSIENT

    def describe(self, status: int) -> str:
        """A readable name for a command_status: ``ESME_RINVDSTADR``, or ``0x00000401`` for unnamed codes."""
        name = STATUS_NAMES.get(status)
        return name if name is not None else status_name(status)


def backoff(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry): ``base * 2**(attempt-1)``, ±20 %.

    The nominal delay is capped at ``cap`` first, then jittered by ±20 % and clipped to ``cap``: the
    draw is uniform over ``[0.8 * nominal, min(1.2 * nominal, cap)]``, so retries of many messages
    failed together spread out, no delay exceeds ``cap``, and, unlike full jitter (uniform from 0), a
    throttled SMSC never sees an immediate retry. The envelope ``[0.8, 1.2] x nominal`` never
    decreases with ``attempt``.

    Raises:
        ValueError: ``attempt < 1``, or ``base``/``cap`` not positive and finite.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if not (math.isfinite(base) and base > 0 and math.isfinite(cap) and cap > 0):
        raise ValueError(f"base and cap must be positive and finite, got base={base}, cap={cap}")
    try:
        nominal = min(cap, base * 2.0 ** (attempt - 1))
    except OverflowError:  # 2.0 ** 1024 and beyond: far past any cap
        nominal = cap
    low = 0.8 * nominal
    high = min(1.2 * nominal, cap)
    return (rng if rng is not None else _RNG).uniform(low, high)
