"""`smsgw message show | retry | cancel`: one message's life, and the two operator actions on a queue row.

Retry is allowed from the final statuses a second attempt can change (failed, expired, undeliverable, and
rejected for a reason that is not about the row's content or consent); cancel only from `queued`. Consent
refusals (opted_out, not_subscribed) are never overridden: the gateway's rule is that an opted-out number gets
nothing until the person opts back in, whoever asks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import phonenumbers
from rich.console import Console
from rich.table import Table

from gateway.admin import AdminError, fmt_time, sql, text
from gateway.message import normalise_number
from gateway.status import Reason, Status

# Rejections a second attempt may end differently: an operator cancel, a route added since, a bug fixed since.
RETRYABLE_REJECTIONS: Final = (Reason.CANCELLED, Reason.NO_ROUTE, Reason.INVALID_ROW)
CONSENT_REASONS: Final = frozenset({Reason.OPTED_OUT, Reason.NOT_SUBSCRIBED})
RETRYABLE_STATUSES: Final = frozenset({Status.FAILED, Status.EXPIRED, Status.UNDELIVERABLE})


# -- show -------------------------------------------------------------------------------------------------


async def show(conn: asyncpg.Connection, message_id: int) -> dict[str, Any]:
    """The row, its parts, receipts parked under its ids and the MO it answers.

    Raises:
        AdminError: no such message.
    """
    row = await conn.fetchrow(sql.MESSAGE, message_id)
    if row is None:
        raise AdminError(f"message {message_id}: not found")
    message = dict(row)
    parts = [dict(r) for r in await conn.fetch(sql.MESSAGE_PARTS, message_id)]
    parked = [dict(r) for r in await conn.fetch(sql.MESSAGE_PARKED, message_id)]
    mo = None
    if message["inbound_message_id"] is not None:
        mo_row = await conn.fetchrow(sql.MESSAGE_MO, message["inbound_message_id"])
        mo = dict(mo_row) if mo_row is not None else None
    return {"message": message, "parts": parts, "parked_receipts": parked, "replies_to": mo}


def number_forms(number: str, default_region: str) -> tuple[str, list[str]]:
    """E.164 digits of `number` and the digit strings a producer may have written it as (E.164, with 00 / 011
    international prefixes, national with and without trunk prefix).

    Raises:
        AdminError: not a possible phone number (exit 2: the argument is wrong).
    """
    digits = normalise_number(number, default_region)
    if digits is None:
        raise AdminError(f"{number!r} is not a phone number (default region {default_region})", code=2)
    parsed = phonenumbers.parse("+" + digits)
    national = phonenumbers.national_significant_number(parsed)
    forms = [digits, "00" + digits, "011" + digits, national, "0" + national]
    return digits, list(dict.fromkeys(forms))


async def to_number(conn: asyncpg.Connection, number: str, default_region: str, limit: int) -> dict[str, Any]:
    """The latest `limit` messages to a number, newest first, whatever form the producer wrote it in."""
    digits, forms = number_forms(number, default_region)
    rows = await conn.fetch(sql.MESSAGES_TO, forms, limit, timeout=120)
    # The digit match is loose (a national form of another country has the same digits): keep exact matches.
    messages = [dict(r) for r in rows if normalise_number(r["destination"], default_region) == digits]
    return {"number": "+" + digits, "messages": messages}


def render_show(con: Console, data: dict[str, Any]) -> None:
    m = data["message"]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    fields = [
        ("id", m["id"]), ("status", m["status"]), ("reason", m["reason"]), ("detail", m["detail"]),
        ("attempts", m["attempts"]), ("from -> to", f"{m['source']} -> {m['destination']}"),
        ("class", m["message_class"]), ("priority", m["priority"]), ("list", m["list_name"]),
        ("campaign", m["campaign_key"]), ("idempotency key", m["idempotency_key"]),
        ("smsc / bind", f"{text(m['smsc'])} / {text(m['bind_name'])}"),
        ("smsc message id", m["smsc_message_id"]), ("parts", m["parts"]),
        ("receipt", f"{text(m['receipt_stat'])} err {text(m['error_code'])}"),
        ("claimed by", f"{text(m['claimed_by'])} until {fmt_time(m['claimed_until'])}" if m["claimed_by"] else None),
        ("created", fmt_time(m["created_at"])), ("send after", fmt_time(m["send_after"])),
        ("expires", fmt_time(m["expires_at"])), ("submitted", fmt_time(m["submitted_at"])),
        ("done", fmt_time(m["done_at"])), ("updated", fmt_time(m["updated_at"])), ("body", m["body"]),
    ]
    for key, value in fields:
        head.add_row(key, text(value))
    con.print(head)
    if data["parts"]:
        t = Table(title="parts (submit results and receipts)", title_justify="left")
        for col in ("seq", "smsc", "smsc message id", "status", "receipt", "error", "reason", "submitted", "done"):
            t.add_column(col)
        for p in data["parts"]:
            t.add_row(
                f"{p['seq']}/{p['total']}", text(p["smsc"]), text(p["smsc_message_id"]), p["status"],
                text(p["receipt_stat"]), text(p["error_code"]), text(p["reason"]), fmt_time(p["submitted_at"]),
                fmt_time(p["done_at"]),
            )
        con.print(t)
    if data["parked_receipts"]:
        t = Table(title="parked receipts under its ids (not applied)", title_justify="left")
        for col in ("id", "smsc", "message id", "leads to", "receipt", "error", "received"):
            t.add_column(col)
        for p in data["parked_receipts"]:
            t.add_row(
                str(p["id"]), p["smsc"], text(p["message_id"]), p["status"], text(p["receipt_stat"]),
                text(p["error_code"]), fmt_time(p["received_at"]),
            )
        con.print(t)
    mo = data["replies_to"]
    if mo is not None:
        con.print(
            f"replies to MO {mo['id']} from {text(mo['source'])} at {fmt_time(mo['received_at'])}: "
            f"{text(mo['body'])!r} (intent {text(mo['intent'])}, keyword {text(mo['keyword'])})"
        )


def render_list(con: Console, data: dict[str, Any]) -> None:
    if not data["messages"]:
        con.print(f"no messages to {data['number']}")
        return
    t = Table(title=f"latest messages to {data['number']}", title_justify="left")
    for col in ("id", "from", "status", "reason", "attempts", "smsc", "parts", "created", "done", "body"):
        t.add_column(col)
    for m in data["messages"]:
        t.add_row(
            str(m["id"]), text(m["source"]), m["status"], text(m["reason"]), str(m["attempts"]), text(m["smsc"]),
            str(m["parts"]), fmt_time(m["created_at"]), fmt_time(m["done_at"]), text(m["body"]),
        )
    con.print(t)


# -- retry / cancel ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one id: done, or why not."""

    id: int
    done: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "done": self.done, "message": self.message}


def _why_not_retry(row: asyncpg.Record | None) -> str:
    if row is None:
        return "not found"
    status, reason = row["status"], row["reason"]
    if status in (Status.QUEUED, Status.CLAIMED, Status.SUBMITTED):
        return f"still in progress ({status}): nothing to retry"
    if status == Status.DELIVERED:
        return "delivered: nothing to retry"
    if status == Status.REJECTED and reason in CONSENT_REASONS:
        return f"rejected by consent ({reason}): consent refusals are never overridden"
    if status == Status.REJECTED:
        return f"rejected ({text(reason)}): the row itself cannot be sent; fix it and insert a new row"
    if row["past_deadline"]:
        return f"{status} and its expires_at ({fmt_time(row['expires_at'])}) has passed: the producer's deadline stands"
    # Allowed when read, so it changed in between (another operator or the gateway got there first).
    return f"{status} ({text(reason)}): changed concurrently, not retried; run the command again"


def _why_not_cancel(row: asyncpg.Record | None) -> str:
    if row is None:
        return "not found"
    status, reason = row["status"], row["reason"]
    if status == Status.CLAIMED:
        return "in flight (claimed by a dispatcher, may be on the wire): cannot cancel"
    if status == Status.SUBMITTED:
        return "already submitted to the SMSC: cannot cancel"
    if status == Status.REJECTED and reason == Reason.CANCELLED:
        return "already cancelled"
    if status == Status.QUEUED:
        return "queued, but changed concurrently: run the command again"
    return f"already final ({status} / {text(reason)})"


async def _apply(conn: asyncpg.Connection, ids: list[int], statement: str, args: tuple[Any, ...],
                 why_not: Callable[[asyncpg.Record | None], str], done_text: str) -> list[Outcome]:
    # One statement decides (its WHERE names the allowed statuses, so it is race-free), then one read explains.
    done = {r["id"] for r in await conn.fetch(statement, ids, *args)}
    refused = [i for i in ids if i not in done]
    rows = {r["id"]: r for r in await conn.fetch(sql.EXPLAIN, refused)} if refused else {}
    return [Outcome(i, True, done_text) if i in done else Outcome(i, False, why_not(rows.get(i))) for i in ids]


async def retry(conn: asyncpg.Connection, ids: list[int]) -> list[Outcome]:
    """Queue final rows again (attempts reset, the earlier state kept in `detail`)."""
    outcomes = await _apply(
        conn, ids, sql.RETRY, ([str(r) for r in RETRYABLE_REJECTIONS],), _why_not_retry, "queued again"
    )
    if any(o.done for o in outcomes):
        await conn.execute(sql.WAKE_DISPATCHERS)
    return outcomes


async def cancel(conn: asyncpg.Connection, ids: list[int]) -> list[Outcome]:
    """Queued rows end rejected / cancelled."""
    return await _apply(conn, ids, sql.CANCEL, (), _why_not_cancel, "cancelled (rejected / cancelled)")


def render_outcomes(con: Console, outcomes: list[Outcome]) -> None:
    for o in outcomes:
        con.print(f"{o.id}: {'ok' if o.done else 'refused'}: {text(o.message)}")
