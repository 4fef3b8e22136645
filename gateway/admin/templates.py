"""`smsgw template set | list | show`: named message templates per short code (migration 0012).

A template is checked before it is saved: it must parse (gateway/message_templates.py), and every placeholder
without a default must be a name the gateway can expect a value for: an attribute key some subscriber of the
short code has, a well-known name (first_name, last_name, order_id), or one declared with --allow / --assume
(a value the producer will put in each row's `variables`). The segment count is reported at the longest values
(the longest attribute value among the short code's subscribers for each placeholder, or --assume name=VALUE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway import message_templates as mt
from gateway.admin import EXIT_USAGE, AdminError
from keywords.consent_watch import short_code_key

# The longest value of each attribute key among a short code's subscribers ($1 short code, $2 keys).
LONGEST_ATTRIBUTES = """
SELECT DISTINCT ON (a.key) a.key, a.value
FROM subscriber s, jsonb_each_text(s.attributes) a
WHERE s.short_code = $1 AND a.key = ANY($2::text[])
ORDER BY a.key, length(a.value) DESC
"""
ATTRIBUTE_KEYS = "SELECT DISTINCT jsonb_object_keys(attributes) FROM subscriber WHERE short_code = $1"
UPSERT = """
INSERT INTO message_template AS t (short_code, name, body, message_class) VALUES ($1, $2, $3, $4)
ON CONFLICT (short_code, name) DO UPDATE SET body = EXCLUDED.body, message_class = EXCLUDED.message_class,
    updated_at = now()
RETURNING (xmax = 0) AS created
"""
LIST = """
SELECT short_code, name, body, message_class, created_at, updated_at FROM message_template
WHERE ($1::text IS NULL OR short_code = $1) ORDER BY short_code, name
"""
SHOW = "SELECT short_code, name, body, message_class, created_at, updated_at FROM message_template" \
       " WHERE short_code = $1 AND name = $2"


@dataclass(slots=True)
class Check:
    """What saving a template would do (or did)."""

    short_code: str
    name: str
    body: str
    message_class: str
    placeholders: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    longest: dict[str, str] = field(default_factory=dict)
    longest_text: str = ""
    segments: int = 0
    encoding: str = ""
    saved: bool = False
    created: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "short_code": self.short_code, "name": self.name, "body": self.body, "class": self.message_class,
            "placeholders": self.placeholders, "unknown": self.unknown, "longest_values": self.longest,
            "longest_text": self.longest_text, "segments": self.segments, "encoding": self.encoding,
            "saved": self.saved, "created": self.created,
        }


def parse_assume(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """--assume name=VALUE options.

    Raises:
        AdminError: an item without '=' (exit 2).
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise AdminError(f"--assume {item!r}: expected name=VALUE", code=EXIT_USAGE)
        out[name.strip()] = value
    return out


async def check(conn: asyncpg.Connection, short_code: str, name: str, body: str, *, message_class: str,
                allow: tuple[str, ...] = (), assume: dict[str, str] | None = None) -> Check:
    """Validate ``body`` against the short code's subscribers (nothing is written).

    Raises:
        AdminError: a malformed template (exit 2).
    """
    assume = assume or {}
    code = short_code_key(short_code)
    if not name.strip():
        raise AdminError("a template needs a name", code=EXIT_USAGE)
    try:
        used = mt.placeholders(body)
    except mt.TemplateSyntaxError as exc:
        raise AdminError(f"template {name!r}: {exc}", code=EXIT_USAGE) from None
    result = Check(short_code=code, name=name, body=body, message_class=message_class)
    result.placeholders = list(dict.fromkeys(p.name for p in used))
    keys = {r[0] for r in await conn.fetch(ATTRIBUTE_KEYS, code)}
    result.unknown = mt.unknown_names(body, keys | set(allow) | set(assume))
    samples: dict[str, list[object]] = {}
    for row in await conn.fetch(LONGEST_ATTRIBUTES, code, result.placeholders):
        samples[row["key"]] = [row["value"]]
    for key, value in assume.items():
        samples[key] = [value]  # an assumption replaces what the subscribers have
    result.longest = mt.longest_values(body, samples)
    result.longest_text = mt.render(body, result.longest)
    result.segments, result.encoding = mt.segments(result.longest_text)
    return result


async def save(conn: asyncpg.Connection, short_code: str, name: str, body: str, *, message_class: str,
               allow: tuple[str, ...] = (), assume: dict[str, str] | None = None) -> Check:
    """Check, then save (insert or replace) the template.

    Raises:
        AdminError: malformed (exit 2) or unknown placeholders (exit 2, nothing saved).
    """
    result = await check(conn, short_code, name, body, message_class=message_class, allow=allow, assume=assume)
    if result.unknown:
        names = ", ".join("{" + n + "}" for n in result.unknown)
        raise AdminError(
            f"template {name!r}: no subscriber of {result.short_code} has {names} and no default covers it; "
            f"give it a default ({{name|default}}), or declare a per-row variable with --allow NAME "
            f"or --assume NAME=VALUE", code=EXIT_USAGE,
        )
    result.created = bool(await conn.fetchval(UPSERT, result.short_code, name, body, message_class))
    result.saved = True
    return result


async def list_templates(conn: asyncpg.Connection, short_code: str | None) -> list[dict[str, Any]]:
    code = short_code_key(short_code) if short_code else None
    return [dict(r) for r in await conn.fetch(LIST, code)]


async def show(conn: asyncpg.Connection, short_code: str, name: str) -> dict[str, Any]:
    """One template with its placeholders and segment estimate.

    Raises:
        AdminError: no such template.
    """
    code = short_code_key(short_code)
    row = await conn.fetchrow(SHOW, code, name)
    if row is None:
        raise AdminError(f"no template {name!r} on short code {code}")
    result = await check(conn, code, name, row["body"], message_class=row["message_class"],
                         allow=tuple(mt.KNOWN_NAMES))
    return {**dict(row), **{k: v for k, v in result.as_dict().items()
                            if k in ("placeholders", "longest_values", "longest_text", "segments", "encoding")}}


def describe(result: Check) -> list[str]:
    """Human lines for `template set`."""
    verb = ("created" if result.created else "replaced") if result.saved else "checked"
    lines = [f"{verb} template {result.name!r} on short code {result.short_code} ({result.message_class})"]
    if result.placeholders:
        lines.append("placeholders: " + ", ".join("{" + n + "}" for n in result.placeholders))
    lines.append(f"at the longest values: {result.segments} segment(s), {result.encoding}: {result.longest_text!r}")
    return lines
