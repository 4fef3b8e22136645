"""`smsgw content check "TEXT"`: what a text would get from a short code's content rules (gateway/content.py).

Rule of this module: no database and no network; the same `check_content` the dispatcher runs, with the short
code's rules from the settings (or the default rules when the short code has no `content` table), so that an
operator sees before sending what the gateway would refuse or append.
"""

from __future__ import annotations

from typing import Any

from gateway.admin import AdminError
from gateway.content import ContentResult, check_content
from gateway.settings import Settings
from keywords.address import short_code_key
from keywords.config import ContentRules


def check(settings: Settings, text: str, short_code: str | None, message_class: str) -> tuple[ContentResult, str]:
    """The result for `text` and a line saying which rules applied.

    Raises:
        AdminError: `short_code` has no keywords section (exit 2).
    """
    if short_code is None:
        if len(settings.keywords) == 1:
            short_code = next(iter(settings.keywords))
        else:
            rules, programs, where = ContentRules(), [settings.keywords_default.program], "default rules"
            return _run(settings, text, message_class, rules, programs), where
    by_key = {short_code_key(code): (code, cfg) for code, cfg in settings.keywords.items()}
    found = by_key.get(short_code_key(short_code))
    if found is None:
        raise AdminError(f"no [keywords.\"{short_code}\"] section in the config", code=2)
    code, cfg = found
    if cfg.content is None:
        rules, where = ContentRules(), f"{code}: no content table, so no checks at send time; showing the default rules"
    else:
        rules, where = cfg.content, f"{code}: its content rules"
    programs = [cfg.program, *(pl.program for pl in cfg.lists)]
    return _run(settings, text, message_class, rules, programs), where


def _run(settings: Settings, text: str, message_class: str, rules: ContentRules, programs: list[str]) -> ContentResult:
    # Encoding as the first configured SMSC sends it (latin1, smart_encoding, long_messages), else the defaults.
    smsc = next(iter(settings.smsc.values()), None)
    latin1, smart, method = (smsc.latin1, smsc.smart_encoding, smsc.long_messages) if smsc else (False, False, "udh8")
    return check_content(text, message_class, rules, programs, latin1=latin1, smart=smart, method=method)


def as_dict(result: ContentResult, where: str, message_class: str) -> dict[str, Any]:
    return {
        "rules_from": where,
        "class": message_class,
        "ok": result.passed,
        "encoding": result.encoding,
        "characters": result.characters,
        "units": result.units,
        "segments": result.segments,
        "appended_opt_out": result.appended,
        "text": result.text,
        "rules": [{"rule": r.rule.value, "passed": r.passed, "detail": r.detail} for r in result.results],
    }


def render(result: ContentResult, where: str, message_class: str) -> list[str]:
    lines = [
        f"rules      {where} ({message_class})",
        f"encoding   {result.encoding}",
        f"characters {result.characters} ({result.units} units)",
        f"segments   {result.segments}",
    ]
    for r in result.results:
        lines.append(f"{'PASS' if r.passed else 'FAIL'} {r.rule.value}: {r.detail}")
    lines.append(f"text       {result.text}")
    return lines
