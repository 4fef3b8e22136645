"""The CTIA self-audit's checks on reply texts: pure functions, reply text in, missing elements out.

Each ``*_missing`` function returns the names of the elements the CTIA Short Code Monitoring Handbook wants in
that reply and that the text lacks (an empty list: the reply passes). The names are what ``smsgw audit`` prints
after FAIL, so they are short and stable: "program name", "contact", "frequency", "Msg&data rates may apply",
"how to stop (STOP)", "how to get help (HELP)", "one segment (N)", "opt-out confirmation",
"no more messages", "subscription confirmation". ``gateway/admin/audit.py`` runs the MOs that produce the texts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from gateway.smpp.gsm import UnencodableError
from gateway.smpp.segment import TooLongError, segment_text

__all__ = [
    "CONTACT",
    "FREQUENCY",
    "HELP",
    "NO_MORE_MESSAGES",
    "OPT_OUT_CONFIRMED",
    "PROGRAM",
    "RATES",
    "STOP",
    "SUBSCRIBED",
    "has_contact",
    "has_frequency",
    "has_rates",
    "help_missing",
    "join_missing",
    "opt_in_missing",
    "segments",
    "stop_missing",
]

PROGRAM: Final = "program name"
CONTACT: Final = "contact"
FREQUENCY: Final = "frequency"
RATES: Final = "Msg&data rates may apply"
STOP: Final = "how to stop (STOP)"
HELP: Final = "how to get help (HELP)"
OPT_OUT_CONFIRMED: Final = "opt-out confirmation"
NO_MORE_MESSAGES: Final = "no more messages"
SUBSCRIBED: Final = "subscription confirmation"

# "Msg&data rates may apply", "Msg & data rates may apply", "Message and data rates may apply" (any case).
_RATES_RE: Final = re.compile(r"\b(?:msg|message)s?\s*(?:&|and)\s*data\s+rates?\s+may\s+apply", re.IGNORECASE)
_EMAIL_RE: Final = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# A toll-free or ordinary number: 1-800-555-0100, (800) 555-0100, 800.555.0100, +1 800 555 0100, 8005550100.
_PHONE_RE: Final = re.compile(r"(?:\+?\d[\s.-]?)?(?:\(\d{3}\)|\d{3})[\s.-]?\d{3}[\s.-]?\d{4}\b")
_URL_RE: Final = re.compile(r"\bhttps?://\S+|\bwww\.\S+\.\S+|\b[\w-]+(?:\.[\w-]+)*\.(?:com|net|org|io|co|us|info|biz|help)(?:/\S*)?\b",
                            re.IGNORECASE)
# Frequency written out: "4 msgs/week", "up to 2 messages per month", "1 msg/wk", "Msg frequency varies",
# "recurring msgs". The configured frequency text itself is always accepted too.
_FREQUENCY_RE: Final = re.compile(
    r"\b\d+\s*(?:msgs?|messages?|texts?|alerts?)\s*(?:/|per|a|an|each|every)\s*(?:day|wk|week|mo|month|year)\b"
    r"|\b(?:msg|message)s?\s+freq(?:uency|\.)?\s+(?:varies|may vary)\b"
    r"|\brecurring\s+(?:msgs?|messages?|texts?|alerts?)\b",
    re.IGNORECASE,
)
_STOP_RE: Final = re.compile(r"\bSTOP\b", re.IGNORECASE)
_HELP_RE: Final = re.compile(r"\bHELP\b", re.IGNORECASE)
_OPTED_OUT_RE: Final = re.compile(
    r"\bunsubscribed\b|\bopted[\s-]*out\b|\bremoved\b|\bopt[\s-]*out\s+(?:confirmed|successful)\b"
    r"|\bwill\s+(?:no\s+longer|not)\s+receive\b|\bno\s+longer\s+receive\b",
    re.IGNORECASE,
)
_NO_MORE_RE: Final = re.compile(
    r"\bno\s+(?:more|further)\s+(?:msgs?|messages?|texts?|alerts?)\b"
    r"|\b(?:will\s+not|won'?t|will\s+no\s+longer)\s+(?:receive|get|be\s+sent)\b|\bno\s+longer\s+receive\b",
    re.IGNORECASE,
)
# "subscribed", "re-subscribed", "resubscribed", "signed up", "opted in", "enrolled", "welcome": never "unsubscribed".
_SUBSCRIBED_RE: Final = re.compile(
    r"(?<![\w-])(?:re-?)?subscribed\b|\bsigned\s+up\b|\bopted[\s-]*in\b|\benrolled\b|\bwelcome\b|\bjoined\b",
    re.IGNORECASE,
)


def segments(text: str) -> int:
    """How many SMS ``text`` takes (GSM-7 160/153, else UCS-2 70/67, concatenated with an 8-bit reference).

    A text that cannot be encoded at all counts as 0 parts, which fails the one-segment check as well.
    """
    try:
        return len(segment_text(text, ref=0, max_segments=255).segments)
    except (TooLongError, UnencodableError):
        return 0


def _contains(text: str, needle: str) -> bool:
    """``needle`` (a configured name or frequency) in ``text``, ignoring case and runs of blanks."""
    squash = " ".join(needle.split()).casefold()
    return bool(squash) and squash in " ".join(text.split()).casefold()


def has_contact(text: str) -> bool:
    """An email address, a phone number or a web address."""
    return bool(_EMAIL_RE.search(text) or _PHONE_RE.search(text) or _URL_RE.search(text))


def has_frequency(text: str, frequencies: Iterable[str] = ()) -> bool:
    """One of the configured frequency texts, or a frequency written out ("4 msgs/week", "Msg freq varies")."""
    return any(_contains(text, f) for f in frequencies) or bool(_FREQUENCY_RE.search(text))


def has_rates(text: str) -> bool:
    """The rates disclosure: "Msg&data rates may apply" or one of its usual spellings."""
    return bool(_RATES_RE.search(text))


def _program(text: str, programs: Iterable[str]) -> list[str]:
    return [] if any(_contains(text, p) for p in programs) else [PROGRAM]


def _one_segment(text: str) -> list[str]:
    n = segments(text)
    return [] if n == 1 else [f"one segment ({n})" if n else "one segment (not encodable)"]


def help_missing(text: str, *, programs: Iterable[str], frequencies: Iterable[str] = ()) -> list[str]:
    """HELP reply: program name, contact, frequency, rates, how to stop, one segment."""
    missing = _program(text, programs)
    if not has_contact(text):
        missing.append(CONTACT)
    if not has_frequency(text, frequencies):
        missing.append(FREQUENCY)
    if not has_rates(text):
        missing.append(RATES)
    if not _STOP_RE.search(text):
        missing.append(STOP)
    return missing + _one_segment(text)


def stop_missing(text: str, *, programs: Iterable[str]) -> list[str]:
    """STOP reply: confirms the opt-out, program name, no more messages will be sent, one segment."""
    missing = [] if _OPTED_OUT_RE.search(text) else [OPT_OUT_CONFIRMED]
    missing += _program(text, programs)
    if not _NO_MORE_RE.search(text):
        missing.append(NO_MORE_MESSAGES)
    return missing + _one_segment(text)


def join_missing(text: str, *, programs: Iterable[str], frequencies: Iterable[str] = ()) -> list[str]:
    """Opt-in confirmation (a join keyword): program name, frequency, rates, how to stop, how to get help, one
    segment."""
    missing = _program(text, programs)
    if not has_frequency(text, frequencies):
        missing.append(FREQUENCY)
    if not has_rates(text):
        missing.append(RATES)
    if not _STOP_RE.search(text):
        missing.append(STOP)
    if not _HELP_RE.search(text):
        missing.append(HELP)
    return missing + _one_segment(text)


def opt_in_missing(text: str, *, programs: Iterable[str], frequencies: Iterable[str] = ()) -> list[str]:
    """START / UNSTOP reply: confirms the (re-)subscription, plus everything an opt-in confirmation needs."""
    missing = [] if _SUBSCRIBED_RE.search(text) else [SUBSCRIBED]
    return missing + join_missing(text, programs=programs, frequencies=frequencies)
