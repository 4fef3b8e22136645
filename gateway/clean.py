"""Values from an SMSC made storable, where they enter the gateway.

Rule of this module: every value an SMSC wrote that goes to a Postgres column passes through one of these
functions first, so a value Postgres cannot hold (a NUL in `text`, an integer past `bigint`, a digit that
Python's `isdigit()` accepts and `int()` refuses) is made harmless at the edge instead of failing a whole
batch later. The writer still isolates whatever gets through (`results.py`); this only keeps that rare.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

__all__ = ["REPLACEMENT", "clean_optional_text", "clean_text", "error_text", "fields_json"]

# Postgres `text` cannot hold U+0000; the Unicode replacement character keeps the position visible and makes an
# id with a NUL inside match nothing (stripping the NUL could make it match another message's id).
REPLACEMENT: Final = "\ufffd"
# Longest error text kept with a quarantined item or a row's detail.
ERROR_CHARS: Final = 2000


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


def error_text(exc: BaseException, limit: int = ERROR_CHARS) -> str:
    """`exc` as storable text (`Type: message`), at most `limit` characters ('…' marks a cut)."""
    text = clean_text(f"{type(exc).__name__}: {exc}")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return clean_text(str(value))


def fields_json(fields: Mapping[str, object]) -> str:
    """`fields` as a JSON object that jsonb accepts: text cleaned of NUL and lone surrogates, bytes as hex."""
    return json.dumps({clean_text(str(k)): _json_value(v) for k, v in fields.items()})


def _has_surrogate(value: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in value)
