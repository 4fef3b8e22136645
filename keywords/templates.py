"""Reply templates: validated when the config loads, rendered without surprises when a reply is sent.

Templates use ``str.format`` syntax restricted to plain named fields: ``{program}``, ``{contact}``,
``{frequency}``, ``{list_program}``, ``{list}``, ``{keyword}``; ``{{`` and ``}}`` are literal braces. Attribute
or index access, conversions (``!r``) and format specs are refused, so a template can only ever insert the
value of a known field. Rendering walks the parsed template itself instead of calling ``str.format``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from gateway.smpp.gsm import UnencodableError, encode_text, fits_single

if TYPE_CHECKING:
    from keywords.config import CustomKeyword, ProgramList, ShortCodeKeywords
    from keywords.matcher import Match

__all__ = [
    "ALL_PLACEHOLDERS",
    "LIST_PLACEHOLDERS",
    "SHORT_CODE_PLACEHOLDERS",
    "TemplateError",
    "already_opted_out_reply",
    "custom_reply",
    "default_reply",
    "help_reply",
    "opt_in_confirmation",
    "placeholders",
    "render",
    "reply_fits_single_sms",
    "reply_for",
    "stop_confirmation",
    "validate_template",
]

# Fields every reply can use: they come from the short code's config (and the keyword that triggered it).
SHORT_CODE_PLACEHOLDERS: Final = frozenset({"program", "contact", "frequency", "keyword"})
# Fields that only exist when the reply is about one list (opt-in confirmation, custom join/leave keywords).
LIST_PLACEHOLDERS: Final = frozenset({"list_program", "list"})
ALL_PLACEHOLDERS: Final = SHORT_CODE_PLACEHOLDERS | LIST_PLACEHOLDERS

_FORMATTER: Final = string.Formatter()


class TemplateError(ValueError):
    """A template is malformed, uses an unknown placeholder, or was rendered without one of its fields."""


def _parse(template: str) -> list[tuple[str, str | None]]:
    """Split ``template`` into (literal, field name or None) pairs, refusing anything but ``{name}`` fields."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:  # unbalanced or stray braces
        raise TemplateError(f"malformed template {template!r}: {exc}") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            parts.append((literal, None))
            continue
        if not name.isidentifier():
            # "" and "0" are positional fields; "a.b" and "a[0]" reach into objects.
            raise TemplateError(f"template {template!r}: field {{{name}}} is not a plain placeholder name")
        if conversion is not None or spec:
            raise TemplateError(f"template {template!r}: field {{{name}}} may not have a conversion or format spec")
        parts.append((literal, name))
    return parts


def placeholders(template: str) -> frozenset[str]:
    """Return the placeholder names ``template`` uses.

    Raises:
        TemplateError: the template is malformed or uses a field that is not a plain name.
    """
    return frozenset(name for _literal, name in _parse(template) if name is not None)


def validate_template(template: str, allowed: Iterable[str] = ALL_PLACEHOLDERS, *, where: str = "template") -> None:
    """Check at config load that ``template`` parses and only uses placeholders from ``allowed``.

    Raises:
        TemplateError: naming ``where`` (the config key), the unknown placeholders and the allowed ones.
    """
    allowed_set = frozenset(allowed)
    try:
        used = placeholders(template)
    except TemplateError as exc:
        raise TemplateError(f"{where}: {exc}") from None
    unknown = used - allowed_set
    if unknown:
        raise TemplateError(
            f"{where}: unknown placeholder(s) {', '.join('{' + n + '}' for n in sorted(unknown))}; "
            f"allowed here: {', '.join('{' + n + '}' for n in sorted(allowed_set))}"
        )


def render(template: str, **fields: object) -> str:
    """Fill ``template``'s ``{name}`` placeholders from ``fields``; extra fields are ignored.

    Raises:
        TemplateError: the template is malformed or a placeholder has no field. Config validation makes
            sure neither happens for configured templates, so a send never fails here.
    """
    out: list[str] = []
    for literal, name in _parse(template):
        out.append(literal)
        if name is None:
            continue
        try:
            out.append(str(fields[name]))
        except KeyError:
            raise TemplateError(f"template {template!r} needs {{{name}}}, which was not given") from None
    return "".join(out)


def _base_fields(cfg: ShortCodeKeywords, keyword: str) -> dict[str, object]:
    return {"program": cfg.program, "contact": cfg.contact, "frequency": cfg.frequency, "keyword": keyword}


def _list_fields(cfg: ShortCodeKeywords, program_list: ProgramList | str | None) -> dict[str, object]:
    if program_list is None:
        # Re-subscribing to the short code as a whole (START with no default list): speak for the program.
        return {"list_program": cfg.program, "list": "", "frequency": cfg.frequency}
    found = cfg.list_named(program_list) if isinstance(program_list, str) else program_list
    return {"list_program": found.program, "list": found.name, "frequency": found.frequency}


def stop_confirmation(cfg: ShortCodeKeywords, *, keyword: str = "STOP") -> str:
    """The one confirmation sent after an opt-out."""
    return render(cfg.templates.stop_confirmation, **_base_fields(cfg, keyword))


def help_reply(cfg: ShortCodeKeywords, *, keyword: str = "HELP") -> str:
    """The HELP / INFO reply: program, contact, frequency, rates, how to opt out."""
    return render(cfg.templates.help, **_base_fields(cfg, keyword))


def opt_in_confirmation(
    cfg: ShortCodeKeywords, program_list: ProgramList | str | None, *, keyword: str = "START"
) -> str:
    """The confirmation after an opt-in or JOIN; ``program_list`` is a list, its name, or None (whole program).

    ``{frequency}`` is the list's frequency when there is a list, else the short code's.

    Raises:
        KeyError: ``program_list`` names a list the short code does not have.
    """
    fields = _base_fields(cfg, keyword) | _list_fields(cfg, program_list)
    return render(cfg.templates.opt_in_confirmation, **fields)


def already_opted_out_reply(cfg: ShortCodeKeywords, *, keyword: str = "STOP") -> str | None:
    """The reply to an opt-out from a number that is already opted out; None (the default) means stay silent."""
    template = cfg.templates.already_opted_out
    return None if template is None else render(template, **_base_fields(cfg, keyword))


def custom_reply(cfg: ShortCodeKeywords, custom: CustomKeyword, *, keyword: str) -> str | None:
    """The reply for a custom keyword, or None when it is forward-only.

    A keyword that joins a list and has no reply of its own gets the standard opt-in confirmation, because
    an opt-in must always be confirmed with frequency, rates and how to stop.
    """
    if custom.forward_only:
        return None
    list_name = custom.join or custom.leave
    if custom.reply is None:
        return opt_in_confirmation(cfg, custom.join, keyword=keyword) if custom.join else None
    fields = _base_fields(cfg, keyword)
    if list_name is not None:
        fields |= _list_fields(cfg, list_name)
    return render(custom.reply, **fields)


def default_reply(cfg: ShortCodeKeywords, *, keyword: str) -> str | None:
    """The reply to an unrecognised message; None (the default) means store and notify only."""
    template = cfg.default_reply
    return None if template is None else render(template, **_base_fields(cfg, keyword))


def reply_for(cfg: ShortCodeKeywords, match: Match, *, already_opted_out: bool = False) -> str | None:
    """The reply a handler sends for ``match`` on the short code configured by ``cfg``; None = no reply.

    ``already_opted_out`` is the subscriber state the handler looked up: an opt-out from a number that is
    already out gets ``templates.already_opted_out`` (silence by default) instead of a second confirmation.
    """
    from keywords.matcher import Intent  # deferred: matcher imports config, which imports this module

    if match.intent is Intent.OPT_OUT:
        if already_opted_out:
            return already_opted_out_reply(cfg, keyword=match.keyword)
        return stop_confirmation(cfg, keyword=match.keyword)
    if match.intent is Intent.HELP:
        return help_reply(cfg, keyword=match.keyword)
    if match.intent in (Intent.OPT_IN, Intent.JOIN):
        return opt_in_confirmation(cfg, match.list_name, keyword=match.keyword)
    if match.intent is Intent.CUSTOM and match.custom is not None:
        return custom_reply(cfg, match.custom, keyword=match.keyword)
    return default_reply(cfg, keyword=match.keyword)


def reply_fits_single_sms(text: str) -> bool:
    """True if ``text`` goes out as one SMS (160 GSM-7 characters, or 70 UCS-2 units if it needs UCS-2)."""
    try:
        return fits_single(encode_text(text))
    except UnencodableError:  # a lone surrogate cannot be sent at all
        return False
