"""`smsgw campaign report KEY | list`: what a campaign (rows sharing `campaign_key`) became.

The figures come from the views of migration 0013 (`campaign_report`, `campaign_failures`), so the CLI, a
dashboard reading as `smsgw_reporting` and `psql` agree; README "Campaign report" defines each column and the
opt-out attribution rule. Every query names the campaign key(s), which the views push down to the campaign index.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg
from rich.console import Console
from rich.table import Table

from gateway.admin import AdminError, fmt_time, text

REPORT: Final = "SELECT * FROM campaign_report WHERE campaign_key = $1"
REPORTS: Final = "SELECT * FROM campaign_report WHERE campaign_key = ANY($1::text[])"
FAILURES: Final = """
SELECT status, reason, messages FROM campaign_failures WHERE campaign_key = $1
ORDER BY messages DESC, status, reason NULLS LAST
"""

# The campaign keys, newest first, without reading every campaign's rows: a loose index scan over
# outbound_message_campaign_idx (one probe per campaign), each key with one of its rows' created_at (a broadcast
# enqueues a campaign in one statement, so any row dates it). $1 limit.
RECENT_KEYS: Final = """
WITH RECURSIVE k AS (
    (SELECT campaign_key, created_at FROM outbound_message WHERE campaign_key IS NOT NULL
     ORDER BY campaign_key LIMIT 1)
    UNION ALL
    SELECT n.campaign_key, n.created_at
    FROM k CROSS JOIN LATERAL (
        SELECT m.campaign_key, m.created_at FROM outbound_message m
        WHERE m.campaign_key > k.campaign_key ORDER BY m.campaign_key LIMIT 1
    ) n
)
SELECT campaign_key FROM k ORDER BY created_at DESC, campaign_key LIMIT $1
"""

_QUERY_TIMEOUT_S: Final = 300.0


async def report(conn: asyncpg.Connection, key: str) -> dict[str, Any]:
    """The campaign_report row of `key` and its failures by status and reason.

    Raises:
        AdminError: no row carries this campaign key.
    """
    row = await conn.fetchrow(REPORT, key, timeout=_QUERY_TIMEOUT_S)
    if row is None:
        raise AdminError(f"campaign {key!r}: no message has this campaign_key")
    data = dict(row)
    data["failures"] = [dict(r) for r in await conn.fetch(FAILURES, key, timeout=_QUERY_TIMEOUT_S)]
    return data


async def recent(conn: asyncpg.Connection, limit: int) -> list[dict[str, Any]]:
    """The `limit` most recently enqueued campaigns with their report rows, newest first."""
    keys = [r["campaign_key"] for r in await conn.fetch(RECENT_KEYS, limit, timeout=_QUERY_TIMEOUT_S)]
    if not keys:
        return []
    rows = {r["campaign_key"]: dict(r) for r in await conn.fetch(REPORTS, keys, timeout=_QUERY_TIMEOUT_S)}
    return [rows[k] for k in keys if k in rows]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def render_report(con: Console, data: dict[str, Any]) -> None:
    d = data
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    fields: list[tuple[str, str]] = [
        ("campaign", text(d["campaign_key"])),
        ("short code / list", f"{text(d['short_code'])} / {text(d['list_name'])}"),
        ("enqueued", f"{d['enqueued']:,}  ({fmt_time(d['first_enqueued_at'])} .. {fmt_time(d['last_enqueued_at'])})"),
        ("submitted", f"{d['submitted']:,}  (first {fmt_time(d['first_submitted_at'])}, "
                      f"last {fmt_time(d['last_submitted_at'])})"),
        ("delivered", f"{d['delivered']:,}"),
        ("not delivered", f"{d['not_delivered']:,}  (undeliverable {d['undeliverable']:,}, expired {d['expired']:,}, "
                          f"failed {d['failed']:,}, rejected {d['rejected']:,})"),
        ("pending", f"{d['pending']:,}  (queued {d['queued']:,}, claimed {d['claimed']:,}, "
                    f"awaiting receipt {d['awaiting_receipt']:,})"),
        ("delivery rate", f"{_rate(d['delivery_rate'])} of {d['final_submitted']:,} final submitted; "
                          f"{_rate(d['delivery_rate_enqueued'])} of enqueued"),
        ("receipt latency", f"p50 {_seconds(d['receipt_latency_p50_s'])}, p90 {_seconds(d['receipt_latency_p90_s'])}, "
                            f"p99 {_seconds(d['receipt_latency_p99_s'])}  ({d['receipts']:,} receipts)"),
        ("opt-outs", f"{d['opt_outs']:,}  ({_rate(d['opt_out_rate'])} of submitted; STOP within 24 h of the "
                     f"number's latest campaign message)"),
    ]
    for key, value in fields:
        grid.add_row(key, value)
    con.print(grid)
    if d["failures"]:
        t = Table(title="not delivered, by status and reason", title_justify="left")
        for col in ("status", "reason", "messages"):
            t.add_column(col)
        for f in d["failures"]:
            t.add_row(f["status"], text(f["reason"]), f"{f['messages']:,}")
        con.print(t)


def render_list(con: Console, rows: list[dict[str, Any]]) -> None:
    if not rows:
        con.print("no campaigns (no message has a campaign_key)")
        return
    t = Table(title="recent campaigns (newest first)", title_justify="left")
    for col in ("campaign", "short code", "list", "enqueued", "submitted", "delivered", "not delivered", "pending",
                "delivery rate", "opt-outs", "first submit", "last submit"):
        t.add_column(col)
    for d in rows:
        t.add_row(
            text(d["campaign_key"]), text(d["short_code"]), text(d["list_name"]), f"{d['enqueued']:,}",
            f"{d['submitted']:,}", f"{d['delivered']:,}", f"{d['not_delivered']:,}", f"{d['pending']:,}",
            _rate(d["delivery_rate"]), f"{d['opt_outs']:,}", fmt_time(d["first_submitted_at"]),
            fmt_time(d["last_submitted_at"]),
        )
    con.print(t)
