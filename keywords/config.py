r"""Keyword configuration per short code, loaded from the gateway's TOML under ``[keywords.<short_code>]``.

Everything that can be wrong with a keyword config is caught here, at load: unknown template placeholders,
bad regexes, lists that do not exist, and keywords that would be shadowed by another (a custom "HELP" could
never fire, because HELP wins). Configured words are stored normalised (see ``keywords.normalise``), so the
matcher compares like with like.

Example::

    [keywords."12345"]
    program = "Acme Alerts"
    contact = "support@example.com or 1-800-555-0100"
    frequency = "Up to 4 msgs/week"
    default_list = "news"
    extra_opt_out = ["PARAR", "CANCELAR", "BAJA"]
    extra_help = ["AYUDA"]

    [[keywords."12345".lists]]
    name = "news"
    program = "Acme News"
    join_keywords = ["NEWS"]
    frequency = "Up to 4 msgs/week"

    [[keywords."12345".custom]]
    word = "HOURS"
    reply = "{program}: open 9-5 Mon-Fri. Reply HELP for help, STOP to cancel."

    [[keywords."12345".custom]]
    regex = 'ORDER\s*\d{6}'  # literal string: no TOML escapes
    forward_only = true
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keywords.normalise import normalise
from keywords.templates import ALL_PLACEHOLDERS, SHORT_CODE_PLACEHOLDERS, validate_template

__all__ = [
    "JOIN_WORD",
    "STANDARD_HELP",
    "STANDARD_OPT_IN",
    "STANDARD_OPT_OUT",
    "STOP_ALL_WORDS",
    "ContentRules",
    "CustomKeyword",
    "ProgramList",
    "ShortCodeKeywords",
    "Templates",
]

# CTIA's opt-out words plus the newer OPTOUT / REVOKE (FCC 2024 revocation rules); the three spellings of
# "opt out" are listed separately because normalisation keeps inner hyphens and spaces.
STANDARD_OPT_OUT: Final = frozenset(
    {"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT", "OPT-OUT"}
)
# Opt-out words that explicitly ask to leave everything (Match.stop_all).
STOP_ALL_WORDS: Final = frozenset({"STOPALL", "STOP ALL"})
STANDARD_OPT_IN: Final = frozenset({"START", "UNSTOP", "YES"})
STANDARD_HELP: Final = frozenset({"HELP", "INFO"})
# "JOIN <LIST>" subscribes to a list by name or by one of its join keywords.
JOIN_WORD: Final = "JOIN"

_LIST_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_-]*")

DEFAULT_STOP_CONFIRMATION: Final = (
    "You are unsubscribed from {program}. No more messages will be sent. Reply HELP for help."
)
DEFAULT_HELP: Final = "{program}: help at {contact}. Msg&data rates may apply. {frequency}. Reply STOP to cancel."
DEFAULT_OPT_IN_CONFIRMATION: Final = (
    "{program}: you are subscribed to {list_program}. {frequency}. Msg&data rates may apply. "
    "Reply HELP for help, STOP to cancel."
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _normalised_words(words: Iterable[str], what: str) -> tuple[str, ...]:
    """Normalise configured words, refusing ones that normalise to nothing (e.g. "!!!")."""
    out: list[str] = []
    for word in words:
        key = normalise(word)
        if not key:
            raise ValueError(f"{what}: {word!r} is empty once normalised")
        if key not in out:
            out.append(key)
    return tuple(out)


class Templates(_Model):
    """Reply templates of one short code; see ``keywords.templates`` for the placeholder syntax."""

    stop_confirmation: str = DEFAULT_STOP_CONFIRMATION
    help: str = DEFAULT_HELP
    opt_in_confirmation: str = DEFAULT_OPT_IN_CONFIRMATION
    # Reply to STOP from a number that is already out; None: stay silent (CTIA: one confirmation only).
    already_opted_out: str | None = None

    @model_validator(mode="after")
    def _check_placeholders(self) -> Templates:
        validate_template(self.stop_confirmation, SHORT_CODE_PLACEHOLDERS, where="stop_confirmation")
        validate_template(self.help, SHORT_CODE_PLACEHOLDERS, where="help")
        validate_template(self.opt_in_confirmation, ALL_PLACEHOLDERS, where="opt_in_confirmation")
        if self.already_opted_out is not None:
            validate_template(self.already_opted_out, SHORT_CODE_PLACEHOLDERS, where="already_opted_out")
        return self


class ProgramList(_Model):
    """One subscriber list (program) on a short code."""

    name: str = Field(description='lower-case id, e.g. "news"; also accepted after JOIN ("JOIN NEWS")')
    program: str = Field(min_length=1, description='display name, e.g. "Acme News"')
    join_keywords: tuple[str, ...] = Field((), description='dedicated words that join this list, e.g. ["NEWS"]')
    frequency: str = Field(min_length=1, description='e.g. "Up to 4 msgs/week"')
    marketing: bool = True
    # Frequency caps (gateway/frequency_caps.py): marketing messages of this list per number in the last 24 h /
    # 7 days (rolling); None: no cap. Over a cap a message waits for the next allowed moment, or is rejected.
    max_per_day: int | None = Field(None, ge=1)
    max_per_week: int | None = Field(None, ge=1)
    frequency_cap_action: Literal["wait", "reject"] = "wait"

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _LIST_NAME_RE.fullmatch(value):
            raise ValueError(f"list name {value!r} must be a lower-case id: a-z, then a-z, 0-9, '_' or '-'")
        return value

    @field_validator("join_keywords")
    @classmethod
    def _normalise_join_keywords(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _normalised_words(value, "join_keywords")

    @property
    def key(self) -> str:
        """The list name as it appears in a normalised message ("news" -> "NEWS")."""
        return normalise(self.name)


class CustomKeyword(_Model):
    """An operator-defined keyword: exactly one of ``word`` / ``regex``, and what to do when it matches.

    ``regex`` is compiled case-insensitively and must match the whole normalised message (``fullmatch``);
    normalised text is upper-case with single spaces and no surrounding punctuation. Either ``reply`` is
    set, or ``join`` is set (the standard opt-in confirmation is sent), or ``forward_only`` is true (store
    and notify, no reply).
    """

    word: str | None = None
    regex: str | None = None
    reply: str | None = None
    join: str | None = None
    leave: str | None = None
    forward_only: bool = False

    @field_validator("word")
    @classmethod
    def _normalise_word(cls, value: str | None) -> str | None:
        return None if value is None else _normalised_words([value], "word")[0]

    @field_validator("regex")
    @classmethod
    def _compile_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"regex {value!r} does not compile: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check_shape(self) -> CustomKeyword:
        if (self.word is None) == (self.regex is None):
            raise ValueError("a custom keyword needs exactly one of 'word' or 'regex'")
        if self.forward_only and (self.reply is not None or self.join is not None or self.leave is not None):
            raise ValueError("a forward_only keyword cannot also have 'reply', 'join' or 'leave'")
        if not self.forward_only and self.reply is None and self.join is None:
            raise ValueError("a custom keyword needs 'reply' (or 'join', or forward_only = true)")
        if self.join is not None and self.join == self.leave:
            raise ValueError(f"'join' and 'leave' name the same list {self.join!r}")
        if self.reply is not None:
            allowed = ALL_PLACEHOLDERS if (self.join or self.leave) else SHORT_CODE_PLACEHOLDERS
            validate_template(self.reply, allowed, where=f"reply of {self.label}")
        return self

    @property
    def label(self) -> str:
        """How this keyword is named in errors and logs: its word, or its regex."""
        return f"word {self.word!r}" if self.word is not None else f"regex {self.regex!r}"

    def pattern(self) -> re.Pattern[str] | None:
        """The compiled regex (case-insensitive), or None for a word keyword."""
        return None if self.regex is None else re.compile(self.regex, re.IGNORECASE)


class ContentRules(_Model):
    """Content checks before sending (gateway/content.py), ``[keywords."12345".content]``; every rule switchable.

    Defaults: every rule on for marketing; transactional texts only get the link-shortener and SHAFT rules and
    their own segment cap; replies to an MO are never checked. ``word_lists_dir`` replaces the shipped class
    word lists (gateway/content_data/words/<class>.txt) with a directory of your own; ``allow_classes`` lets a
    class through (e.g. ["alcohol"] for an age-gated program).
    """

    require_program_name: bool = True
    require_opt_out: bool = True
    append_opt_out: bool = False
    link_shorteners: bool = True
    shaft: bool = True
    allow_classes: tuple[str, ...] = ()
    word_lists_dir: Path | None = None
    max_segments_marketing: int | None = Field(3, ge=1, le=255)
    max_segments_transactional: int | None = Field(6, ge=1, le=255)
    # Which class each of the two text rules applies to.
    transactional_link_shorteners: bool = True
    transactional_shaft: bool = True

    @model_validator(mode="after")
    def _check_lists(self) -> ContentRules:
        from gateway.content import load_lists  # the lists live with the checks (gateway/content_data)

        lists = load_lists(self.word_lists_dir)
        unknown = sorted(set(self.allow_classes) - set(lists.words))
        if unknown:
            raise ValueError(f"allow_classes: {unknown} are not content classes ({sorted(lists.words)})")
        return self

    def check_link_shorteners(self, message_class: str) -> bool:
        return self.link_shorteners and (message_class == "marketing" or self.transactional_link_shorteners)

    def check_shaft(self, message_class: str) -> bool:
        return self.shaft and (message_class == "marketing" or self.transactional_shaft)

    def max_segments(self, message_class: str) -> int | None:
        return self.max_segments_marketing if message_class == "marketing" else self.max_segments_transactional


class EventRule(_Model):
    """An event rule (migration 0014): an event of this name recorded for a number (`smsgw_event`, or
    `smsgw_emit_event(...)`) becomes a message from the short code's template ``template`` (`smsgw template`),
    rendered with the event's variables. Synced into `event_rule` when the daemon starts."""

    event: str = Field(description='lower-case event name, e.g. "order_shipped"')
    template: str = Field(min_length=1, description="name of a message template of this short code")
    message_class: Literal["transactional", "marketing"] = "transactional"
    priority: int = Field(0, ge=-32768, le=32767)
    enabled: bool = True

    @field_validator("event")
    @classmethod
    def _check_event(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_.-]*", value):
            raise ValueError(f"event name {value!r} must be lower-case: a-z, then a-z, 0-9, '_', '.' or '-'")
        return value


class ShortCodeKeywords(_Model):
    """Keywords, lists and replies of one short code.

    Opt-out, help and opt-in words are the standard sets plus the ``extra_*`` words (e.g. Spanish PARAR,
    CANCELAR, BAJA, AYUDA). START / YES / UNSTOP re-subscribe to ``default_list`` (or to the only list, when
    there is exactly one); every opt-out leaves all lists of the short code (see ``keywords.matcher``).
    """

    program: str = Field(min_length=1)
    contact: str = Field(min_length=1, description='e.g. "support@example.com or 1-800-555-0100"')
    frequency: str = Field(min_length=1, description='e.g. "Up to 4 msgs/week"')
    lists: tuple[ProgramList, ...] = ()
    default_list: str | None = None
    extra_opt_out: tuple[str, ...] = ()
    extra_opt_in: tuple[str, ...] = ()
    extra_help: tuple[str, ...] = ()
    # Also treat clear opt-out sentences ("please stop texting me") as opt-outs: the FCC counts revocation
    # "by any reasonable means". Off by default because the patterns are a judgement call.
    honour_opt_out_phrases: bool = False
    custom: tuple[CustomKeyword, ...] = ()
    # Reply to messages nothing matched; None: store and notify only.
    default_reply: str | None = None
    templates: Templates = Templates()
    # Content checks before sending (gateway/content.py); None (no [keywords."X".content] table): no checks.
    content: ContentRules | None = None
    # Event rules ([[keywords."X".events]]): one per event name.
    events: tuple[EventRule, ...] = ()

    @field_validator("events")
    @classmethod
    def _unique_events(cls, value: tuple[EventRule, ...]) -> tuple[EventRule, ...]:
        names = [rule.event for rule in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"events: {twice} have more than one rule")
        return value

    @field_validator("extra_opt_out", "extra_opt_in", "extra_help")
    @classmethod
    def _normalise_extras(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _normalised_words(value, "extra words")

    @property
    def opt_out_words(self) -> frozenset[str]:
        """Standard opt-out words plus ``extra_opt_out``, normalised."""
        return STANDARD_OPT_OUT | frozenset(self.extra_opt_out)

    @property
    def opt_in_words(self) -> frozenset[str]:
        """Standard opt-in words plus ``extra_opt_in``, normalised."""
        return STANDARD_OPT_IN | frozenset(self.extra_opt_in)

    @property
    def help_words(self) -> frozenset[str]:
        """Standard help words plus ``extra_help``, normalised."""
        return STANDARD_HELP | frozenset(self.extra_help)

    @property
    def effective_default_list(self) -> str | None:
        """The list START / YES / UNSTOP / bare JOIN subscribe to: ``default_list``, else the only list."""
        if self.default_list is not None:
            return self.default_list
        return self.lists[0].name if len(self.lists) == 1 else None

    def list_named(self, name: str) -> ProgramList:
        """The list called ``name``.

        Raises:
            KeyError: there is no such list.
        """
        for program_list in self.lists:
            if program_list.name == name:
                return program_list
        raise KeyError(name)

    @model_validator(mode="after")
    def _check_consistency(self) -> ShortCodeKeywords:
        problems: list[str] = []
        names = [program_list.name for program_list in self.lists]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"lists: name {name!r} is used more than once")
        known_lists = set(names)
        if self.default_list is not None and self.default_list not in known_lists:
            problems.append(f"default_list: {self.default_list!r} is not one of the lists {sorted(known_lists)}")

        # "JOIN <target>" and "<opt-out word> <target>": a target (list name or join keyword) names one list.
        targets: dict[str, str] = {}
        for index, program_list in enumerate(self.lists):
            for target in (program_list.key, *program_list.join_keywords):
                other = targets.setdefault(target, program_list.name)
                if other != program_list.name:
                    problems.append(f"lists[{index}] ({program_list.name}): {target!r} already names list {other!r}")

        # Every whole message that means something, and what it means. A second meaning for the same message
        # could never fire (precedence picks one) or would silently change a standard keyword, so it is an error.
        owners: dict[str, str] = {}

        def claim(word: str, owner: str) -> None:
            previous = owners.setdefault(word, owner)
            if previous != owner:
                problems.append(f"{owner}: {word!r} is already {previous}")

        for words, owner in (
            (STANDARD_OPT_OUT, "a standard opt-out keyword"),
            (STANDARD_HELP, "a standard help keyword"),
            (STANDARD_OPT_IN, "a standard opt-in keyword"),
            ((JOIN_WORD,), "the JOIN keyword"),
            (set(self.extra_opt_out) - STANDARD_OPT_OUT, "an opt-out keyword (extra_opt_out)"),
            (set(self.extra_help) - STANDARD_HELP, "a help keyword (extra_help)"),
            (set(self.extra_opt_in) - STANDARD_OPT_IN, "an opt-in keyword (extra_opt_in)"),
        ):
            for word in sorted(words):
                claim(word, owner)
        for target, list_name in targets.items():
            claim(f"{JOIN_WORD} {target}", f"'JOIN {target}' (joins list {list_name!r})")
            for word in sorted(self.opt_out_words):
                claim(f"{word} {target}", f"an opt-out naming list {list_name!r}")
        for program_list in self.lists:
            for word in program_list.join_keywords:
                claim(word, f"a join keyword of list {program_list.name!r}")

        for index, custom in enumerate(self.custom):
            where = f"custom[{index}] ({custom.label})"
            for field, list_name in (("join", custom.join), ("leave", custom.leave)):
                if list_name is not None and list_name not in known_lists:
                    problems.append(f"{where}: {field} {list_name!r} is not one of the lists {sorted(known_lists)}")
            if custom.word is not None:
                claim(custom.word, f"custom keyword {where}")

        if self.default_reply is not None:
            try:
                validate_template(self.default_reply, SHORT_CODE_PLACEHOLDERS, where="default_reply")
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return self
