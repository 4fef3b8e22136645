"""Values from an SMSC made storable, where they enter the gateway.

Rule of this module: every value an SMSC wrote that goes to a Postgres column passes through one of these
functions first, so a value Postgres cannot hold (a NUL in `text`, an integer past `bigint`, a digit that
Python's `isdigit()` accepts and `int()` refuses) is made harmless at the edge instead of failing a whole
batch later. The writer still isolates whatever gets through (`results.py`); this only keeps that rare.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["BIGINT_MAX", "BIGINT_MIN", "REPLACEMENT", "clean_code", "clean_int", "clean_optional_text", "clean_text"]

# Postgres `text` cannot hold U+0000; the Unicode replacement character keeps the position visible and makes an
# id with a NUL inside match nothing (stripping the NUL could make it match another message's id).
REPLACEMENT: Final = "\ufffd"
BIGINT_MIN: Final = -(2**63)
BIGINT_MAX: Final = 2**63 - 1
_ASCII_DIGITS: Final = re.compile(r"[0-9]+")


def clean_text(value: str) -> str:
    """`value` with NULs and lone surrogates (which UTF-8 cannot encode) replaced by U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    if not value.isascii() and _has_surrogate(value):
        # Lone surrogates come from decoders run with 'surrogateescape'/'surrogatepass'; UTF-8 cannot carry them.
        value = "".join(REPLACEMENT if "\ud800" <= ch <= "\udfff" else ch for ch in value)
    return value


def clean_optional_text(value: str | None) -> str | None:
    """`clean_text`, passing None through."""
    return None if value is None else clean_text(value)


def clean_int(value: int | None, lo: int = BIGINT_MIN, hi: int = BIGINT_MAX) -> int | None:
    """`value` clamped to lo..hi (a Postgres `bigint` by default); None stays None."""
    if value is None:
        return None
    return lo if value < lo else hi if value > hi else value


def clean_code(text: str | None) -> int | None:
    """An error code written as text (a receipt's `err:`): its number when it is ASCII digits that fit a
    `bigint`, else None (the text itself is kept by the caller, e.g. in `reason`).

    `str.isdigit()` is true for '²' and '٣', which `int()` refuses or reads as another number: only 0-9 count.
    """
    if text is None or _ASCII_DIGITS.fullmatch(text) is None:
        return None
    number = int(text)
    return number if number <= BIGINT_MAX else None


def _has_surrogate(value: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in value)
