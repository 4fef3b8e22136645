"""Content checks before sending: what a marketing or transactional text of a short code may say.

Rule of this module: the checks are pure functions of the text, the message class, the short code's
`ContentRules` (keywords/config.py) and the word lists; nothing here reads the database or the clock. Each rule
gives one `RuleResult` (pass / fail and a detail that names what matched), and a refusal becomes the row's
reason `content_<rule>` (gateway/status.py). The rules:

- `program_name` (marketing): the text names the program (the short code's or the message list's).
- `opt_out` (marketing): the text says how to opt out ("Reply STOP to opt out", "Text END to unsubscribe",
  "STOP to cancel", "To opt out, reply STOP", see `has_opt_out_instruction`), or " Reply STOP to opt out." is
  appended when `append_opt_out` is set; the appended text is what is sent and counts towards segments.
- `link_shortener`: no link whose host is a public shortener (content_data/link_shorteners.txt), matched as a
  host (scheme and www optional), never inside another word ("bit.lyrics" is not bit.ly).
- `shaft`: no word or phrase of a content class (content_data/words/<class>.txt: sex, hate, alcohol, firearms,
  tobacco, cannabis), whole words, case-insensitive; `allow_classes` lets a class through (an age-gated program).
- `max_segments`: the final text fits in the class's segment cap, counted as the SMSC would send it.

Replies to an MO are never checked (the caller leaves them out), nor is a short code without a `content` table.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from gateway.smpp.gsm import DC_GSM7, DC_LATIN1, UnencodableError, encode_text, fits_single
from gateway.smpp.segment import TooLongError, segment_text, smart_encode

if TYPE_CHECKING:
    from keywords.config import ContentRules

__all__ = [
    "APPENDED_OPT_OUT",
    "DATA_DIR",
    "ContentLists",
    "ContentResult",
    "ContentRule",
    "RuleResult",
    "check_content",
    "count_segments",
    "find_class_words",
    "find_shorteners",
    "has_opt_out_instruction",
    "has_program_name",
    "load_lists",
]

DATA_DIR: Final = Path(__file__).parent / "content_data"
SHIPPED_WORDS_DIR: Final = DATA_DIR / "words"
APPENDED_OPT_OUT: Final = " Reply STOP to opt out."


class ContentRule(StrEnum):
    """One content rule; a refusal is reason `content_<value>`."""

    PROGRAM_NAME = "program_name"
    OPT_OUT = "opt_out"
    LINK_SHORTENER = "link_shortener"
    SHAFT = "shaft"
    MAX_SEGMENTS = "max_segments"

    @property
    def reason(self) -> str:
        return f"content_{self.value}"


# Named tuples, not frozen dataclasses: a marketing row builds six of these, and a frozen dataclass took a
# third of the checks' time to build.
class RuleResult(NamedTuple):
    rule: ContentRule
    passed: bool
    detail: str


class ContentResult(NamedTuple):
    """What a text gets: the text to send (maybe with the appended opt-out), its encoding and segments, and the
    result of each rule that applies."""

    text: str
    encoding: str  # "GSM-7", "Latin-1", "UCS-2" or "unencodable"
    characters: int
    units: int
    segments: int
    results: tuple[RuleResult, ...] = ()
    appended: bool = False

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def first_failure(self) -> RuleResult | None:
        return next((r for r in self.results if not r.passed), None)


# --- word lists ----------------------------------------------------------------------------------------------


def _read_list(path: Path) -> tuple[str, ...]:
    entries: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip().lower()
        if entry and entry not in entries:
            entries.append(entry)
    return tuple(entries)


def _phrase_pattern(phrase: str) -> str:
    return r"\s+".join(re.escape(word) for word in phrase.split())


@dataclass(frozen=True)
class ContentLists:
    """The shortener hosts and the content classes (class name -> compiled whole-word pattern, and its words)."""

    shorteners: frozenset[str]
    classes: Mapping[str, re.Pattern[str]]
    words: Mapping[str, tuple[str, ...]]
    # Per class, the first word of each entry: a class's pattern runs only on a text that has one of them.
    first_words: Mapping[str, frozenset[str]] = field(default_factory=dict)


@functools.lru_cache(maxsize=32)
def load_lists(words_dir: Path | None = None) -> ContentLists:
    """The shipped shortener list and the class word lists of `words_dir` (default: the shipped ones).

    Every `<class>.txt` in the directory is a class, named by the file.

    Raises:
        ValueError: the directory is missing, has no `.txt` list, or a list cannot be read.
    """
    directory = SHIPPED_WORDS_DIR if words_dir is None else Path(words_dir)
    if not directory.is_dir():
        raise ValueError(f"word_lists_dir {str(directory)!r} is not a directory")
    files = sorted(directory.glob("*.txt"))
    if not files:
        raise ValueError(f"word_lists_dir {str(directory)!r} holds no <class>.txt word list")
    classes: dict[str, re.Pattern[str]] = {}
    words: dict[str, tuple[str, ...]] = {}
    for path in files:
        try:
            entries = _read_list(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"word list {str(path)!r} cannot be read: {exc}") from None
        words[path.stem] = entries
        if entries:
            # Longest first, so a phrase wins over a word it starts with; whole words: no letter or digit either side.
            alternatives = "|".join(_phrase_pattern(e) for e in sorted(entries, key=len, reverse=True))
            classes[path.stem] = re.compile(rf"(?<![\w])(?:{alternatives})(?![\w])", re.IGNORECASE)
    shorteners = frozenset(_read_list(DATA_DIR / "link_shorteners.txt"))
    first_words = {name: frozenset(_first_word(e) for e in entries) for name, entries in words.items()}
    return ContentLists(shorteners, classes, words, first_words)


_WORD: Final = re.compile(r"\w+")


def _first_word(entry: str) -> str:
    """The run of word characters an entry starts with ("" when it starts with another character: always run)."""
    match = _WORD.match(entry)
    return match.group(0).lower() if match else ""


# --- the rules -------------------------------------------------------------------------------------------------

_OPT_OUT_KEYWORDS: Final = r"(?:STOP\s*ALL|STOP|END|CANCEL|UNSUBSCRIBE|QUIT|OPT-?OUT|REVOKE)"
_ACTIONS: Final = r"(?:opt[\s-]?out|unsubscribe|cancel|end|stop|quit)"
_Q: Final = "[\"'\u2018\u2019\u201c\u201d]?"
_VERB: Final = r"(?:reply|text|txt|send|msg|respond)(?:\s+with)?"
# "Reply STOP to opt out", "text 'END' 2 unsubscribe" (any case after a reply verb).
_VERB_FORM: Final = re.compile(
    rf"(?<!\w){_VERB}\s+{_Q}{_OPT_OUT_KEYWORDS}{_Q}\s*,?\s+(?:to|2)\s+{_ACTIONS}(?!\w)", re.IGNORECASE
)
# "..., STOP to cancel" without a verb: the keyword must be written in capitals.
_BARE_FORM: Final = re.compile(
    rf"(?<!\w){_Q}(?-i:STOP\s*ALL|STOP|END|CANCEL|UNSUBSCRIBE|QUIT|OPT-?OUT|REVOKE){_Q}\s+(?:to|2)\s+{_ACTIONS}(?!\w)",
    re.IGNORECASE,
)
# "To opt out, reply STOP", "Unsubscribe: text END", "Opt-out: reply STOP".
_REVERSE_FORM: Final = re.compile(
    rf"(?<!\w)(?:to\s+)?{_ACTIONS}\s*[,:\-]?\s*{_VERB}\s+{_Q}{_OPT_OUT_KEYWORDS}{_Q}(?!\w)", re.IGNORECASE
)


def has_opt_out_instruction(text: str) -> bool:
    """True when `text` tells the reader how to opt out with an opt-out keyword (STOP, STOPALL, END, CANCEL,
    UNSUBSCRIBE, QUIT, OPTOUT, REVOKE) and what it does ("opt out", "unsubscribe", "cancel", "end", "stop",
    "quit"): "Reply STOP to opt out", "Txt END 2 unsubscribe", "STOP to cancel" (capitals), "To opt out, reply
    STOP". A bare "Reply STOP" or "stop by our store" is not one."""
    return any(p.search(text) for p in (_VERB_FORM, _BARE_FORM, _REVERSE_FORM))


def has_program_name(text: str, programs: Iterable[str]) -> str | None:
    """The first of `programs` that `text` names (whole words, case-insensitive, any spacing), or None."""
    for program in programs:
        if program.strip() and _program_pattern(program).search(text):
            return program
    return None


@functools.lru_cache(maxsize=1024)
def _program_pattern(program: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){_phrase_pattern(program)}(?!\w)", re.IGNORECASE)


# A host: labels of letters, digits and hyphens; the character before it is not part of a word, a dot, a '/' (a
# path) or an '@' (an e-mail address), and after it comes no more host (a path, a port, punctuation or the end).
_HOST: Final = re.compile(
    r"(?<![\w.@/-])(?:https?://)?((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63})(?![\w-]|\.[a-z0-9])",
    re.IGNORECASE,
)


# A host has a letter or digit, a dot, then a letter: a text without one has no host (the usual case, checked
# in a fraction of the time the host pattern takes).
_DOTTED: Final = re.compile(r"[a-z0-9]\.[a-z]", re.IGNORECASE)


def find_shorteners(text: str, shorteners: frozenset[str]) -> list[str]:
    """The shortener hosts `text` links to (a listed host or a subdomain of one), in order of appearance."""
    found: list[str] = []
    if _DOTTED.search(text) is None:
        return found
    for match in _HOST.finditer(text):
        host = match.group(1).lower()
        labels = host.split(".")
        for i in range(len(labels) - 1):
            candidate = ".".join(labels[i:])
            if candidate in shorteners:
                if candidate not in found:
                    found.append(candidate)
                break
    return found


def find_class_words(text: str, lists: ContentLists, allow: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(class, matched text) of each content class found in `text`, except the allowed classes."""
    allowed = set(allow)
    hits: list[tuple[str, str]] = []
    # A whole-word match starts a run of word characters that is the entry's first word: a cheap filter first.
    # Lowered whole, as the lists are (`_read_list`), then cut into words: the same words on both sides.
    words = set(_WORD.findall(text.lower()))
    words.add("")
    for name, pattern in lists.classes.items():
        if name in allowed or words.isdisjoint(lists.first_words.get(name, {""})):
            continue
        match = pattern.search(text)
        if match is not None:
            hits.append((name, match.group(0)))
    return hits


_ENCODING_NAMES: Final = {DC_GSM7: "GSM-7", DC_LATIN1: "Latin-1"}


def count_segments(
    text: str, *, latin1: bool = False, smart: bool = False, method: str = "udh8"
) -> tuple[str, int, int]:
    """(encoding, units, segments) of `text` as the gateway would send it; a `payload` SMSC is billed per part
    like udh8. Raises UnencodableError for a lone surrogate."""
    cut = "udh16" if method == "udh16" else "udh8"
    sent = smart_encode(text) if smart else text
    encoded = encode_text(sent, latin1=latin1)
    name = _ENCODING_NAMES.get(encoded.data_coding, "UCS-2")
    if fits_single(encoded):  # most texts: no need to cut them to know
        return name, encoded.units, 1
    try:
        segments = len(segment_text(sent, method=cut, ref=0, latin1=latin1, max_segments=255).segments)
    except TooLongError as exc:
        segments = exc.segments
    return name, encoded.units, segments


def check_content(
    text: str,
    message_class: str,
    rules: ContentRules,
    program: str | Sequence[str],
    *,
    lists: ContentLists | None = None,
    latin1: bool = False,
    smart: bool = False,
    method: str = "udh8",
) -> ContentResult:
    """Apply the short code's content rules to `text` of `message_class` ("marketing" or "transactional").

    `program` is the program name (or names: the short code's and the message list's; any one will do). The
    returned text is what must be sent: with " Reply STOP to opt out." appended when the marketing text has no
    opt-out instruction and `rules.append_opt_out` is set. Segments are counted on that final text.
    """
    lists = lists if lists is not None else load_lists(rules.word_lists_dir)
    programs = [program] if isinstance(program, str) else list(program)
    marketing = message_class == "marketing"
    results: list[RuleResult] = []
    appended = False

    if marketing and rules.require_program_name:
        named = has_program_name(text, programs)
        results.append(RuleResult(
            ContentRule.PROGRAM_NAME, named is not None,
            f"names {named!r}" if named else f"program name missing ({' or '.join(repr(p) for p in programs)})",
        ))
    if marketing and rules.require_opt_out:
        if has_opt_out_instruction(text):
            results.append(RuleResult(ContentRule.OPT_OUT, True, "opt-out instruction present"))
        elif rules.append_opt_out:
            text = text.rstrip() + APPENDED_OPT_OUT
            appended = True
            results.append(RuleResult(ContentRule.OPT_OUT, True, f"appended {APPENDED_OPT_OUT.strip()!r}"))
        else:
            results.append(RuleResult(
                ContentRule.OPT_OUT, False, "opt-out instruction missing (e.g. 'Reply STOP to opt out')"
            ))
    if rules.check_link_shorteners(message_class):
        hosts = find_shorteners(text, lists.shorteners)
        results.append(RuleResult(
            ContentRule.LINK_SHORTENER, not hosts,
            "link shortener " + ", ".join(hosts) if hosts else "no public link shortener",
        ))
    if rules.check_shaft(message_class):
        hits = find_class_words(text, lists, rules.allow_classes)
        results.append(RuleResult(
            ContentRule.SHAFT, not hits,
            "; ".join(f"{name}: {word!r}" for name, word in hits) if hits else "no prohibited content class",
        ))

    try:
        encoding, units, segments = count_segments(text, latin1=latin1, smart=smart, method=method)
    except UnencodableError as exc:
        encoding, units, segments = "unencodable", 0, 0
        unencodable = str(exc)
    else:
        unencodable = None
    limit = rules.max_segments(message_class)
    if limit is not None:
        if unencodable is not None:
            results.append(RuleResult(ContentRule.MAX_SEGMENTS, True, f"not counted: {unencodable}"))
        else:
            results.append(RuleResult(
                ContentRule.MAX_SEGMENTS, segments <= limit,
                f"{segments} segment{'' if segments == 1 else 's'}, at most {limit} for {message_class}",
            ))
    return ContentResult(text, encoding, len(text), units, segments, tuple(results), appended)
