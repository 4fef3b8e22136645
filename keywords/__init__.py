"""MO keyword handling: normalise a message, match it per short code, render the reply (pure logic in
``normalise``, ``matcher``, ``config``, ``templates``), and the MO processor that applies it with Postgres
(``processor``, its SQL in ``sql``): reassembly, dedup, consent ledger, replies through the queue.
"""

from __future__ import annotations

from keywords.config import (
    JOIN_WORD,
    STANDARD_HELP,
    STANDARD_OPT_IN,
    STANDARD_OPT_OUT,
    STOP_ALL_WORDS,
    CustomKeyword,
    ProgramList,
    ShortCodeKeywords,
    Templates,
)
from keywords.matcher import Intent, KeywordMatcher, Match
from keywords.normalise import normalise
from keywords.templates import (
    TemplateError,
    already_opted_out_reply,
    custom_reply,
    default_reply,
    help_reply,
    opt_in_confirmation,
    render,
    reply_fits_single_sms,
    reply_for,
    stop_confirmation,
    validate_template,
)

__all__ = [
    "JOIN_WORD",
    "STANDARD_HELP",
    "STANDARD_OPT_IN",
    "STANDARD_OPT_OUT",
    "STOP_ALL_WORDS",
    "CustomKeyword",
    "Intent",
    "KeywordMatcher",
    "Match",
    "ProgramList",
    "ShortCodeKeywords",
    "TemplateError",
    "Templates",
    "already_opted_out_reply",
    "custom_reply",
    "default_reply",
    "help_reply",
    "normalise",
    "opt_in_confirmation",
    "render",
    "reply_fits_single_sms",
    "reply_for",
    "stop_confirmation",
    "validate_template",
]
