"""`smsgw consent history NUMBER`: the consent evidence of one number and where it stands now.

The ledger (`consent_event`) is append-only; the current state is read from `opt_out` (a short-code opt-out,
which wins over every list) and `subscription`.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table

from gateway.admin import AdminError, fmt_time, sql, text
from gateway.message import normalise_number
from keywords.consent_watch import short_code_key


async def history(conn: asyncpg.Connection, number: str, default_region: str,
                  short_code: str | None) -> dict[str, Any]:
    """Events (oldest first), opt-outs and subscriptions of `number`, on one short code or all.

    Raises:
        AdminError: not a phone number (exit 2).
    """
    msisdn = normalise_number(number, default_region)
    if msisdn is None:
        raise AdminError(f"{number!r} is not a phone number (default region {default_region})", code=2)
    code = short_code_key(short_code) if short_code is not None else None
    events = [dict(r) for r in await conn.fetch(sql.CONSENT_EVENTS, msisdn, code, timeout=120)]
    codes = {e["short_code"] for e in events}
    codes |= {r["short_code"] for r in await conn.fetch(sql.CONSENT_CODES, code)}
    if code is not None:
        codes = {code}
    opt_outs = [dict(r) for r in await conn.fetch(sql.CONSENT_OPT_OUTS, msisdn, sorted(codes))]
    subscriptions = [dict(r) for r in await conn.fetch(sql.CONSENT_SUBSCRIPTIONS, msisdn, code)]
    opted_out_codes = {o["short_code"] for o in opt_outs}
    return {
        "number": "+" + msisdn,
        "short_code": code,
        "opted_out": opt_outs,
        # A list subscription counts only while its short code has no opt-out (send-time enforcement agrees).
        "active_lists": [
            {"short_code": s["short_code"], "list": s["list_name"], "opted_in_at": s["opted_in_at"]}
            for s in subscriptions if s["status"] == "active" and s["short_code"] not in opted_out_codes
        ],
        "subscriptions": subscriptions,
        "events": events,
    }


def render(con: Console, data: dict[str, Any]) -> None:
    number = data["number"]
    if data["opted_out"]:
        for o in data["opted_out"]:
            con.print(f"{number}: opted OUT of short code {o['short_code']} since {fmt_time(o['opted_out_at'])}")
    else:
        scope = f"short code {data['short_code']}" if data["short_code"] else "any short code"
        con.print(f"{number}: not opted out of {scope}")
    if data["active_lists"]:
        lists = ", ".join(f"{a['short_code']}/{a['list']}" for a in data["active_lists"])
        con.print(f"active lists: {text(lists)}")
    else:
        con.print("active lists: none")
    if not data["events"]:
        con.print("no consent events")
        return
    t = Table(title=f"consent events of {number}", title_justify="left")
    for col in ("time", "short code", "action", "channel", "list", "keyword", "message", "MO id", "source"):
        t.add_column(col)
    for e in data["events"]:
        t.add_row(
            fmt_time(e["created_at"]), e["short_code"], e["action"], e["channel"], text(e["list_name"]),
            text(e["keyword"]), text(e["message_text"]), text(e["inbound_message_id"]), text(e["source_detail"]),
        )
    con.print(t)
