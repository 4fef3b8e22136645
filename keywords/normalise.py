"""Normalise a mobile-originated message before keyword matching.

Subscribers type keywords in every shape a phone keyboard allows: " Stop. ", "STOP!!!", '"stop"', "ＳＴＯＰ" from a
full-width keyboard, "STOP\\u00a0ALL" with a non-breaking space, "opt–out" with a smart-punctuation dash. The
compliance rule (DESIGN.md, "Compliance") is that opt-out words match case-insensitively as the whole message with
surrounding whitespace and punctuation ignored, so every one of those must reduce to the same comparison key.

The result is UPPER-CASE: keywords are conventionally written that way ("STOP", "JOIN NEWS"), so the key reads
well in logs and consent records. Configured words go through the same function, so the case chosen only matters
for custom regexes (which are compiled case-insensitively anyway).
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = ["normalise"]

# Apostrophe look-alikes that smart keyboards substitute for "'": "don’t" must compare equal to "don't" so that
# the opt-out phrase patterns can recognise (and refuse) negations such as "don't stop".
_APOSTROPHES: Final = "\u2018\u2019\u201b\u02bc\u02b9\u0060\u2032\uff07"
# Minus and dash look-alikes become "-" so "OPT–OUT" (en dash) matches "OPT-OUT". Every Unicode Pd character is
# mapped too (see _Translation); these are the dash-like characters outside that category.
_EXTRA_DASHES: Final = "\u2212\u2796\ufe63\uff0d"

# Enough passes for every input seen in an exhaustive single-code-point check plus margin; each pass is a no-op
# once the text is stable, so the loop normally ends after the second pass.
_MAX_PASSES: Final = 6
_CACHE_ALL_BELOW: Final = 0x3100  # Latin, Greek, Cyrillic, ..., CJK punctuation and kana


class _Translation(dict[int, str | int | None]):
    """``str.translate`` table filled as code points are seen (building it whole costs ~0.1 s at import).

    Only changed code points and the small common range are remembered, so arbitrary MO text cannot grow the
    table past a few thousand entries.
    """

    def __missing__(self, cp: int) -> str | int | None:
        char = chr(cp)
        category = unicodedata.category(char)
        value: str | int | None
        if category == "Cf":
            # Format characters are invisible (zero-width space, joiners, BOM, soft hyphen, bidi marks, emoji
            # tags): a "ST\u200bOP" pasted from somewhere is still STOP to the person who sent it.
            value = None
        elif category == "Pd" or char in _EXTRA_DASHES:
            value = "-"
        elif char in _APOSTROPHES:
            value = "'"
        else:
            if cp >= _CACHE_ALL_BELOW:
                return cp  # unchanged and rare: not worth a table entry
            value = cp
        self[cp] = value
        return value


_TRANSLATION: Final = _Translation()


def _is_edge_junk(char: str) -> bool:
    """True for what may surround a keyword: punctuation, quotes, symbols (emoji), spaces, control/unassigned."""
    # Unassigned (Cn) is included on purpose: emoji newer than this Python's Unicode database show up as Cn,
    # and "STOP 🫨" must still be STOP. Letters (L*) and digits (N*) are never junk; marks are handled by callers.
    return unicodedata.category(char)[0] not in "LNM"


def _is_mark(char: str) -> bool:
    return unicodedata.category(char)[0] == "M"


def _strip_edges(text: str) -> str:
    start, end = 0, len(text)
    # Leading: junk, and combining marks with no base left (e.g. the accent of a stripped quote).
    while start < end and (_is_edge_junk(text[start]) or _is_mark(text[start])):
        start += 1
    # Trailing: whole clusters (base + its combining marks, e.g. emoji + variation selector) whose base is junk;
    # marks on a letter are kept because they are part of that letter.
    while end > start:
        base = end
        while base > start and _is_mark(text[base - 1]):
            base -= 1
        if base == start:
            return ""
        if not _is_edge_junk(text[base - 1]):
            break
        end = base - 1
    return text[start:end]


def _one_pass(text: str) -> str:
    # NFKC first: full-width letters, ligatures and compatibility spaces (NBSP, ideographic space) become their
    # plain forms before anything compares them.
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATION)
    # casefold, then upper: casefold is the Unicode caseless-matching fold (ß -> ss, final sigma -> sigma), and
    # upper() of the folded text gives one canonical spelling ("SS", "Σ") for the upper-case key.
    text = text.casefold().upper()
    # str.split() with no separator splits on every Unicode whitespace run (tabs, newlines, NBSP, U+2028...).
    text = " ".join(text.split())
    return _strip_edges(text)


def normalise(text: str) -> str:
    """Return the comparison key of ``text``: NFKC, case-folded to UPPER-CASE, trimmed and space-collapsed.

    Steps: NFKC; invisible format characters (category Cf) removed everywhere; dash look-alikes mapped to "-"
    and apostrophe look-alikes to "'"; ``str.casefold`` then ``str.upper``; every run of Unicode whitespace
    collapsed to one space; surrounding punctuation, quotes (straight, curly, guillemets), symbols and emoji
    stripped. Inner punctuation is kept, so "OPT-OUT" stays "OPT-OUT" (the keyword sets list "OPT-OUT",
    "OPT OUT" and "OPTOUT" separately). The function never raises and is idempotent:
    ``normalise(normalise(s)) == normalise(s)``.
    """
    # A pass can expose new work (upper-casing may produce characters NFKC changes; stripping may leave a
    # space at the edge), so repeat until stable; the bound only guards against a pathological oscillation.
    for _ in range(_MAX_PASSES):
        result = _one_pass(text)
        if result == text:
            break
        text = result
    return text
