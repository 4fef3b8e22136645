"""Personalised message templates (issue 10): parsing, rendering and the checks made when a template is saved.

Syntax: ``{name}`` inserts a value, ``{name|default}`` falls back to ``default`` when there is none, ``{{`` and
``}}`` are literal braces. A name is an identifier (``first_name``, ``order_id``); a default holds no brace. Any
other brace is a malformed template (refused when saved). The database renders rows at insert time with the same
rules (migration 0012: ``smsgw_render``, ``smsgw_template_missing``); this module is the Python twin used to
validate a template before it is saved and to estimate its segments, and the tests check the two agree.

keywords/templates.py (keyword replies) uses ``str.format`` fields without defaults; its parser cannot read
``{name|default}``, hence this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from gateway.smpp.segment import TooLongError, segment_text

__all__ = [
    "KNOWN_NAMES",
    "Placeholder",
    "TemplateSyntaxError",
    "longest_values",
    "missing",
    "parse",
    "placeholders",
    "render",
    "segments",
]

# Names every deployment may use without a subscriber having them yet (set per row by producers).
KNOWN_NAMES: Final = frozenset({"first_name", "last_name", "order_id"})

# As 0012's SQL: {{ or }} (a literal brace), or {name} / {name|default}.
_TOKEN: Final = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)(?:\|([^{}]*))?\}")


class TemplateSyntaxError(ValueError):
    """A brace that is neither a placeholder nor a doubled literal brace."""


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str
    default: str | None  # None: no default ('{x|}' has the default '')


Part = str | Placeholder


def parse(template: str) -> list[Part]:
    """Split ``template`` into literal strings and placeholders.

    Raises:
        TemplateSyntaxError: a stray ``{`` or ``}`` (with its position).
    """
    parts: list[Part] = []
    literal: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(template):
        _check_literal(template, pos, m.start())
        literal.append(template[pos:m.start()])
        token = m.group(0)
        if m.group(1) is None:
            literal.append(token[0])
        else:
            if literal and "".join(literal):
                parts.append("".join(literal))
            literal = []
            parts.append(Placeholder(m.group(1), m.group(2)))
        pos = m.end()
    _check_literal(template, pos, len(template))
    literal.append(template[pos:])
    if "".join(literal):
        parts.append("".join(literal))
    return parts


def _check_literal(template: str, start: int, end: int) -> None:
    for i in range(start, end):
        if template[i] in "{}":
            raise TemplateSyntaxError(
                f"stray {template[i]!r} at character {i + 1} of {template!r} "
                "(placeholders are {name} or {name|default}; write {{ or }} for a brace)"
            )


def placeholders(template: str) -> list[Placeholder]:
    """The placeholders of ``template`` in order (repeats included)."""
    return [p for p in parse(template) if isinstance(p, Placeholder)]


def missing(template: str, values: Mapping[str, object]) -> list[str]:
    """Names with neither a value (None counts as none) nor a default, in order of first use, each once."""
    out: list[str] = []
    for p in placeholders(template):
        if p.default is None and values.get(p.name) is None and p.name not in out:
            out.append(p.name)
    return out


def _text(value: object) -> str:
    if isinstance(value, bool):  # as Postgres' jsonb ->> renders them
        return "true" if value else "false"
    return str(value)


def render(template: str, values: Mapping[str, object]) -> str:
    """The text of ``template`` with values (then defaults; '' when neither, as the database does)."""
    out: list[str] = []
    for part in parse(template):
        if isinstance(part, str):
            out.append(part)
        else:
            value = values.get(part.name)
            out.append(_text(value) if value is not None else (part.default or ""))
    return "".join(out)


def longest_values(template: str, samples: Mapping[str, Iterable[object]]) -> dict[str, str]:
    """For each placeholder, the longest of its sample values and its default (what the segment estimate uses)."""
    out: dict[str, str] = {}
    for p in placeholders(template):
        candidates = [_text(v) for v in samples.get(p.name, ()) if v is not None]
        if p.default is not None:
            candidates.append(p.default)
        if p.name in out:
            candidates.append(out[p.name])
        if candidates:
            out[p.name] = max(candidates, key=len)
    return out


def segments(text: str, *, latin1: bool = False, smart: bool = False) -> tuple[int, str]:
    """(parts, encoding) of ``text`` as the gateway would send it (udh8)."""
    try:
        seg = segment_text(text, ref=0, latin1=latin1, smart=smart, max_segments=255)
    except TooLongError as exc:
        return exc.segments, "?"
    encoding = {0: "GSM-7", 3: "Latin-1", 8: "UCS-2"}.get(seg.data_coding, str(seg.data_coding))
    return len(seg.segments), encoding


def unknown_names(template: str, known: Iterable[str]) -> list[str]:
    """Placeholders without a default whose name is not in ``known`` (attribute keys seen + KNOWN_NAMES + assumed):
    a value would have to come from every row's variables, or the row ends rejected."""
    known_set = frozenset(known) | KNOWN_NAMES
    out: list[str] = []
    for p in placeholders(template):
        if p.default is None and p.name not in known_set and p.name not in out:
            out.append(p.name)
    return out
