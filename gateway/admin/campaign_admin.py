"""`smsgw campaign create | pause | resume | cancel`: scheduled campaigns (table `campaign`, migration 0014).

The daemon's scheduler (gateway/campaigns.py) enqueues each due occurrence; these commands only write the table,
so they work with no gateway running and take effect at the scheduler's next look (within seconds).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from gateway import campaigns
from gateway.admin import AdminError

_COLUMNS = "key, short_code, list_name, template, schedule, local_time, status, next_occurrence, next_run"


async def create(
    conn: asyncpg.Connection, *, key: str, short_code: str, list_name: str, template: str, schedule: str,
    local_time: bool = False, variables: dict[str, Any] | None = None, at: datetime | None = None,
) -> dict[str, Any]:
    """Create an active campaign; return its row.

    Raises:
        AdminError: a bad key or schedule, an unknown list or template, a key already used.
    """
    if "@" in key or not key:
        raise AdminError(f"campaign key {key!r}: use letters, digits, '_', '.', ':' or '-'")
    try:
        sched = campaigns.Schedule(schedule, local_time)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    occurrence, next_run = campaigns.first_run(sched, at or campaigns.now())
    if occurrence is None:
        raise AdminError(f"schedule {schedule!r} has no occurrence")
    sc = await conn.fetchval("SELECT smsgw_short_code($1)", short_code)
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM message_template WHERE short_code = $1 AND name = $2)",
                               sc, template):
        raise AdminError(f"no template {template!r} on short code {sc}")
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM subscriber_list WHERE short_code = $1 AND name = $2)",
                               sc, list_name):
        raise AdminError(f"no list {list_name!r} on short code {sc}")
    try:
        row = await conn.fetchrow(
            "INSERT INTO campaign (key, short_code, list_name, template, variables, schedule, local_time,"
            " next_occurrence, next_run) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9)"
            f" RETURNING {_COLUMNS}",
            key, sc, list_name, template, json.dumps(variables or {}), schedule, local_time, occurrence, next_run,
        )
    except asyncpg.UniqueViolationError:
        raise AdminError(f"campaign {key!r} exists already") from None
    except asyncpg.CheckViolationError as exc:
        raise AdminError(f"campaign {key!r}: {exc}") from None
    return dict(row)


async def set_status(conn: asyncpg.Connection, key: str, action: str, at: datetime | None = None) -> dict[str, Any]:
    """pause (active -> paused), resume (paused -> active, from the next occurrence after now: the paused ones
    are skipped) or cancel (active or paused -> cancelled, for good). Return the row.

    Raises:
        AdminError: no such campaign, or the action does not apply to its status.
    """
    async with conn.transaction():
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM campaign WHERE key = $1 FOR UPDATE", key)
        if row is None:
            raise AdminError(f"no campaign {key!r}")
        allowed = {"pause": ("active",), "resume": ("paused",), "cancel": ("active", "paused")}[action]
        if row["status"] not in allowed:
            raise AdminError(f"campaign {key!r} is {row['status']}: cannot {action} it")
        if action == "pause":
            updated = await conn.fetchrow(
                f"UPDATE campaign SET status = 'paused', updated_at = now() WHERE key = $1 RETURNING {_COLUMNS}", key)
        elif action == "cancel":
            updated = await conn.fetchrow(
                "UPDATE campaign SET status = 'cancelled', next_run = NULL, next_occurrence = NULL,"
                f" updated_at = now() WHERE key = $1 RETURNING {_COLUMNS}", key)
        else:
            occurrence, next_run = campaigns.first_run(
                campaigns.Schedule(row["schedule"], row["local_time"]), at or campaigns.now())
            updated = await conn.fetchrow(
                "UPDATE campaign SET status = CASE WHEN $2::timestamp IS NULL THEN 'done' ELSE 'active' END,"
                " next_occurrence = $2, next_run = $3, updated_at = now()"
                f" WHERE key = $1 RETURNING {_COLUMNS}", key, occurrence, next_run)
    return dict(updated)
