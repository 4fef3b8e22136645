"""`smsgw webhooks list | replay | retry-dead`: the webhook outbox as ops see it.

Endpoints come from the settings (`[webhook.NAME]`) and from `webhook_endpoint` (what the sender and the
triggers use; synchronised from the settings when the daemon starts), so an endpoint added to the file but
not yet started, or one removed from the file with deliveries left, both show. Writes wake the sender with the
NOTIFY the triggers use; a running daemon picks the rows up at once, a stopped one when it starts.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table

from gateway.admin import AdminError, fmt_time, text
from gateway.webhooks import ops_sql


def configured(settings: Any) -> dict[str, dict[str, Any]]:
    """The `[webhook.NAME]` endpoints of the settings (url, events, short codes, enabled); secrets never."""
    out: dict[str, dict[str, Any]] = {}
    for name, ep in (getattr(settings, "webhook", None) or {}).items():
        out[name] = {
            "url": _safe_url(str(getattr(ep, "url", ""))) or None,
            "events": list(getattr(ep, "events", []) or []),
            "short_codes": list(getattr(ep, "short_codes", []) or []),
            "enabled": bool(getattr(ep, "enabled", True)),
        }
    return out


def _safe_url(url: str) -> str:
    """The URL without credentials or query (either may carry a token)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def list_endpoints(conn: asyncpg.Connection, settings: Any) -> list[dict[str, Any]]:
    """One entry per endpoint of the settings or the database, with pending / dead / delivered-last-hour counts
    and the oldest pending delivery's age (seconds)."""
    config = configured(settings)
    db = {r["name"]: dict(r) for r in await conn.fetch(ops_sql.ENDPOINTS, timeout=60)}
    stats = {r["endpoint"]: dict(r) for r in await conn.fetch(ops_sql.DELIVERY_STATS, timeout=120)}
    delivered = {r["endpoint"]: r["delivered"] for r in await conn.fetch(ops_sql.DELIVERED_LAST_HOUR, timeout=120)}
    now: dt.datetime = await conn.fetchval("SELECT now()")
    out = []
    for name in sorted(config.keys() | db.keys() | stats.keys()):
        c, d, s = config.get(name), db.get(name), stats.get(name, {})
        oldest = s.get("oldest_pending")
        out.append({
            "name": name,
            "in_config": c is not None,
            "in_database": d is not None,
            "url": c["url"] if c else None,
            "enabled": (c or d or {"enabled": False})["enabled"],
            "events": (c or d or {"events": []})["events"],
            "short_codes": (c or d or {"short_codes": []})["short_codes"],
            "pending": int(s.get("pending") or 0),
            "dead": int(s.get("dead") or 0),
            "delivered_last_hour": int(delivered.get(name, 0)),
            "oldest_pending_at": oldest,
            "oldest_pending_age_s": None if oldest is None else round((now - oldest).total_seconds(), 1),
            "last_dead_error": s.get("a_dead_error"),
        })
    return out


def render_list(con: Console, endpoints: list[dict[str, Any]]) -> None:
    if not endpoints:
        con.print("no webhook endpoints (configure [webhook.NAME] sections)")
        return
    t = Table(title="webhook endpoints", title_justify="left")
    for col in ("name", "enabled", "where", "url", "events", "short codes", "pending", "dead", "delivered 1h",
                "oldest pending"):
        t.add_column(col, justify="right" if col in ("pending", "dead", "delivered 1h") else "left")
    for e in endpoints:
        where = "config+db" if e["in_config"] and e["in_database"] else ("config" if e["in_config"] else "db")
        age = e["oldest_pending_age_s"]
        t.add_row(
            text(e["name"]), "yes" if e["enabled"] else "no", where, text(e["url"]), text(",".join(e["events"])),
            text(",".join(e["short_codes"]) or "all"), str(e["pending"]), str(e["dead"]),
            str(e["delivered_last_hour"]), "-" if age is None else f"{age:.0f} s",
        )
    con.print(t)
    if any(e["in_config"] and not e["in_database"] for e in endpoints):
        con.print("endpoints marked 'config' are not in the database yet: they are added when the daemon starts")


async def _known_endpoint(conn: asyncpg.Connection, endpoint: str | None) -> None:
    if endpoint is None:
        return
    row = await conn.fetchrow(ops_sql.ENDPOINT, endpoint)
    if row is None:
        raise AdminError(f"no webhook endpoint {endpoint!r} in the database (start the daemon after configuring it)")
    if not row["enabled"]:
        raise AdminError(f"webhook endpoint {endpoint!r} is disabled")


async def replay(conn: asyncpg.Connection, since: dt.datetime, endpoint: str | None,
                 event_type: str | None) -> dict[str, Any]:
    """New pending deliveries for the events created since `since` (to the endpoints that want them, or only
    `endpoint`; only `event_type`). The same event means the same webhook-id: receivers deduplicate."""
    await _known_endpoint(conn, endpoint)
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    async with conn.transaction():
        row = await conn.fetchrow(ops_sql.REPLAY, since, endpoint, event_type, timeout=600)
        await conn.execute(ops_sql.NOTIFY)
    oldest = await conn.fetchval(ops_sql.OLDEST_EVENT)
    return {
        "since": since, "endpoint": endpoint, "type": event_type,
        "deliveries": int(row["deliveries"]), "events": int(row["events"]),
        # Events are pruned after their retention: a replay cannot reach further back than this.
        "oldest_event_kept": oldest,
    }


def render_replay(con: Console, data: dict[str, Any]) -> None:
    scope = f"endpoint {data['endpoint']}" if data["endpoint"] else "every endpoint that wants them"
    kind = f" of type {data['type']}" if data["type"] else ""
    con.print(f"replay: {data['deliveries']} new deliveries of {data['events']} events{kind} created since "
              f"{fmt_time(data['since'])} ({scope})")
    kept = data["oldest_event_kept"]
    if kept is not None and kept > data["since"]:
        con.print(f"note: the oldest event kept is from {fmt_time(kept)} (older ones were pruned)")


async def retry_dead(conn: asyncpg.Connection, endpoint: str | None) -> int:
    """Dead deliveries (of one endpoint or all) become pending again, due now, attempts 0; returns how many."""
    await _known_endpoint(conn, endpoint)
    async with conn.transaction():
        status = await conn.execute(ops_sql.RETRY_DEAD, endpoint, timeout=600)
        await conn.execute(ops_sql.NOTIFY)
    return int(status.rsplit(" ", 1)[-1])


def parse_since(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """`--since`: an ISO 8601 time (UTC when no offset is given) or a duration back from now: 90s, 30m, 6h, 2d.

    Raises:
        AdminError: neither (exit 2).
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = value.strip()
    if raw[-1:].lower() in units and raw[:-1].replace(".", "", 1).isdigit():
        base = now or dt.datetime.now(dt.UTC)
        return base - dt.timedelta(seconds=float(raw[:-1]) * units[raw[-1].lower()])
    try:
        when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise AdminError(f"--since {value!r}: expected an ISO 8601 time or a duration such as 30m, 6h, 2d",
                         code=2) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
