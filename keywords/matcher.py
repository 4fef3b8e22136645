"""Match a mobile-originated message against the keywords of the short code it was sent to.

The whole message is compared after ``normalise`` (DESIGN.md, "Compliance": opt-out words match as the whole
message, case and surrounding punctuation ignored). Precedence, first hit wins:

1. opt-out: a standard or extra opt-out word ("STOP", "STOP ALL", "PARAR"); an opt-out word followed by a list
   ("STOP NEWS", always on: nobody means anything else by it); with ``honour_opt_out_phrases``, a clear opt-out
   sentence (see below);
2. help: HELP, INFO, extras;
3. opt-in / join: START, UNSTOP, YES, extras (re-subscribe to the default list); a list's dedicated join
   keyword ("NEWS"); "JOIN <list name or join keyword>"; a bare "JOIN" when there is a default list;
4. custom: configured words (exact, normalised), then configured regexes in config order (``fullmatch``);
5. other: everything else, including an empty message.

Opt-out scope: CTIA treats STOP as ending every message from the short code, so the handler should make
every ``OPT_OUT`` leave all lists of the short code. ``Match.stop_all`` only records that the subscriber said
so explicitly (STOPALL / STOP ALL), and ``Match.list_name`` on an opt-out only records the list they named
("STOP NEWS"); both are evidence, not a narrower scope.

Opt-out phrases (``honour_opt_out_phrases``): the FCC counts revocation "by any reasonable means", so a short
code can opt in to recognising sentences too. The patterns are deliberately narrow, over the message's words
with punctuation dropped:

* polite filler around any opt-out word: "STOP PLEASE", "please stop!", "cancel, thanks", "stop now";
* STOP with an object naming the messages or the sender: "stop texting me", "stop sending me messages",
  "stop it", "stop all messages", "stop receiving these texts";
* UNSUBSCRIBE / OPT OUT / STOP ALL, optionally with "me" / "from this list", optionally after "I want to",
  "I'd like to", "I would like to", "I wish to";
* fixed phrases: "remove me (from your list)", "take me off (your list)", "opt me out", "do not / don't text
  me (again)", "no more texts".

Anything else stays OTHER, so "don't stop", "stop by later", "stopwatch", "cancel my order", "the end" and
"remove me from the group chat" are never opt-outs; they are stored and notified like every unmatched message.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from keywords.config import JOIN_WORD, STOP_ALL_WORDS, CustomKeyword, ShortCodeKeywords
from keywords.consent_watch import short_code_key
from keywords.normalise import normalise

__all__ = ["Intent", "KeywordMatcher", "Match"]


class Intent(enum.StrEnum):
    """What a message asks for; the values are stable strings for logs and the database."""

    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    JOIN = "join"
    CUSTOM = "custom"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Match:
    """The outcome of matching one message.

    ``keyword`` is the normalised keyword that matched ("STOP", "JOIN NEWS", "NEWS"); for opt-out phrases,
    custom regexes and OTHER it is the whole normalised message. ``list_name`` is the list to join (OPT_IN,
    JOIN, a custom keyword's ``join`` or else ``leave``) or the list an opt-out named; None for OPT_IN means
    the short code has no default list (lift the opt-out only). ``stop_all`` is True for STOPALL / STOP ALL.
    """

    intent: Intent
    keyword: str
    list_name: str | None = None
    custom: CustomKeyword | None = None
    stop_all: bool = False


# --- opt-out phrase patterns ---------------------------------------------------------------------------------
# Words with inner apostrophes and hyphens kept ("DON'T", "OPT-OUT"); all other punctuation separates words.
_WORD_RE: Final = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")

_PREFIX: Final = r"(?:(?:PLEASE|PLS|PLZ|KINDLY) )*"
_SUFFIX: Final = r"(?: (?:PLEASE|PLS|PLZ|NOW|RIGHT NOW|THANKS|THANK YOU|THX|TY|ASAP|IMMEDIATELY))*"
_MESSAGES: Final = r"(?:MESSAGES|MESSAGE|MSGS|TEXTS|TEXT MESSAGES|SMS|NOTIFICATIONS|ALERTS)"
_LIST_REF: Final = (
    r"(?:(?:YOUR|THE|THIS|THAT|ALL|ALL YOUR) )?(?:(?:TEXT|TEXTING|SMS|MAILING|MESSAGING|CONTACT) )?LISTS?"
)
# What may follow STOP: the sender's action or the messages themselves. "STOP BY", "STOP AT", "STOP LAUGHING"
# are absent on purpose.
_STOP_OBJECT: Final = (
    r"(?:ME|IT|THIS|TEXTING(?: ME)?|MESSAGING(?: ME)?|CONTACTING ME|SENDING(?: ME)?(?: " + _MESSAGES + r")?"
    r"|(?:RECEIVING|GETTING) (?:(?:THE|THESE|THOSE|YOUR|ALL) )?" + _MESSAGES + r"|ALL(?: " + _MESSAGES + r")?"
    r"|(?:THE|THESE|THOSE|YOUR) " + _MESSAGES + r"|" + _MESSAGES + r")"
)
_STRONG: Final = ("UNSUBSCRIBE", "OPTOUT", "OPT OUT", "OPT-OUT", "STOPALL", "STOP ALL")
_STRONG_OBJECT: Final = r"(?: ME)?(?: FROM (?:" + _LIST_REF + r"|(?:(?:THE|THESE|YOUR|ALL) )?" + _MESSAGES + r"))?"
_INTENT: Final = r"(?:I WANT TO|I WANNA|I WOULD LIKE TO|I'D LIKE TO|I WISH TO) "
_FIXED: Final = (
    r"REMOVE ME(?: FROM " + _LIST_REF + r")?",
    r"TAKE ME OFF(?: " + _LIST_REF + r")?",
    r"OPT ME OUT",
    r"(?:DO NOT|DON'T|DONT) (?:TEXT|MESSAGE|CONTACT|SMS) ME(?: (?:AGAIN|ANYMORE|ANY MORE))?",
    r"NO MORE " + _MESSAGES,
)
_STOP_ALL_RE: Final = re.compile(r"\bSTOP ?ALL\b")


def _alternation(words: Iterable[str]) -> str:
    # Longest first so the alternation reads naturally; fullmatch would backtrack to the right one anyway.
    return "(?:" + "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w))) + ")"


def _phrase_pattern(opt_out_words: Iterable[str]) -> re.Pattern[str]:
    strong = _alternation(_STRONG)
    core = "|".join(
        (
            _alternation(opt_out_words),  # any opt-out word with filler only
            r"STOP " + _STOP_OBJECT,
            strong + _STRONG_OBJECT,
            *_FIXED,
        )
    )
    return re.compile(rf"{_PREFIX}(?:{core}|{_INTENT}{strong}{_STRONG_OBJECT}){_SUFFIX}")


# --- tables --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Table:
    """One short code's keywords, precomputed for O(1) lookups."""

    config: ShortCodeKeywords
    opt_out: frozenset[str]
    help: frozenset[str]
    opt_in: frozenset[str]
    join_words: Mapping[str, str]  # dedicated join keyword -> list name
    targets: Mapping[str, str]  # what may follow JOIN / an opt-out word (list key or join keyword) -> list name
    default_list: str | None
    custom_words: Mapping[str, CustomKeyword]
    custom_regexes: tuple[tuple[re.Pattern[str], CustomKeyword], ...]
    phrases: re.Pattern[str] | None

    @classmethod
    def build(cls, config: ShortCodeKeywords) -> _Table:
        join_words: dict[str, str] = {}
        targets: dict[str, str] = {}
        for program_list in config.lists:
            targets[program_list.key] = program_list.name
            for word in program_list.join_keywords:
                join_words[word] = program_list.name
                targets[word] = program_list.name
        custom_words: dict[str, CustomKeyword] = {}
        custom_regexes: list[tuple[re.Pattern[str], CustomKeyword]] = []
        for custom in config.custom:
            pattern = custom.pattern()
            if pattern is not None:
                custom_regexes.append((pattern, custom))
            elif custom.word is not None:
                custom_words[custom.word] = custom
        return cls(
            config=config,
            opt_out=config.opt_out_words,
            help=config.help_words,
            opt_in=config.opt_in_words,
            join_words=join_words,
            targets=targets,
            default_list=config.effective_default_list,
            custom_words=custom_words,
            custom_regexes=tuple(custom_regexes),
            phrases=_phrase_pattern(config.opt_out_words) if config.honour_opt_out_phrases else None,
        )

    def match(self, key: str) -> Match:
        if not key:
            return Match(Intent.OTHER, key)
        opt_out = self._match_opt_out(key)
        if opt_out is not None:
            return opt_out
        if key in self.help:
            return Match(Intent.HELP, key)
        if key in self.opt_in:
            return Match(Intent.OPT_IN, key, self.default_list)
        list_name = self.join_words.get(key)
        if list_name is not None:
            return Match(Intent.JOIN, key, list_name)
        if key == JOIN_WORD and self.default_list is not None:
            return Match(Intent.JOIN, key, self.default_list)
        if key.startswith(JOIN_WORD + " "):
            list_name = self.targets.get(key[len(JOIN_WORD) + 1 :])
            if list_name is not None:
                return Match(Intent.JOIN, key, list_name)
        custom = self.custom_words.get(key)
        if custom is None:
            custom = next((c for pattern, c in self.custom_regexes if pattern.fullmatch(key)), None)
        if custom is not None:
            return Match(Intent.CUSTOM, key, custom.join or custom.leave, custom)
        return Match(Intent.OTHER, key)

    def _match_opt_out(self, key: str) -> Match | None:
        if key in self.opt_out:
            return Match(Intent.OPT_OUT, key, stop_all=key in STOP_ALL_WORDS)
        for target, list_name in self.targets.items():
            # "STOP NEWS", "OPT OUT NEWS": an opt-out word, one space, a list.
            head_len = len(key) - len(target) - 1
            if head_len > 0 and key.endswith(target) and key[head_len] == " " and key[:head_len] in self.opt_out:
                return Match(Intent.OPT_OUT, key, list_name)
        if self.phrases is not None:
            words = " ".join(_WORD_RE.findall(key))
            if self.phrases.fullmatch(words):
                return Match(Intent.OPT_OUT, key, stop_all=_STOP_ALL_RE.search(words) is not None)
        return None


class KeywordMatcher:
    """Keyword matching for every short code of the gateway; built once at start, then read-only.

    Short codes without their own config use ``default``. Short codes are compared in the form of
    ``short_code_key``: a section configured as "+12345" serves MOs to "12345" and the other way round.
    Matching is pure and never raises.
    """

    def __init__(self, configs: Mapping[str, ShortCodeKeywords], default: ShortCodeKeywords) -> None:
        """Precompute the tables of ``configs`` (short code -> config) and of ``default``."""
        self._tables: dict[str, _Table] = {short_code_key(code): _Table.build(cfg) for code, cfg in configs.items()}
        self._default = _Table.build(default)

    def config_for(self, short_code: str) -> ShortCodeKeywords:
        """The config that applies to ``short_code`` (its own, or the default)."""
        return self._tables.get(short_code_key(short_code), self._default).config

    def match(self, short_code: str, text: str) -> Match:
        """Classify ``text`` received on ``short_code``; see the module docstring for the rules."""
        return self._tables.get(short_code_key(short_code), self._default).match(normalise(text))
