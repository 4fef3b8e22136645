"""The gateway's status as ops see it, read from the database only.

Rule of this module: everything in a `StatusReport` comes from Postgres (the heartbeat rows each instance
writes, the queue, the consent ledger), never from this process's memory, so the status page of any instance
and `smsgw status` run as another process show the same figures. Phone numbers arrive masked (ops_sql.py).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
from pydantic import BaseModel, Field, computed_field

from gateway.db import ops_sql as sql

__all__ = ["ErrorRow", "QueueStatus", "SmscInstanceStatus", "StatusReport", "gather_status"]

# Seconds each status statement may take: a status look-up never holds a connection for long.
_QUERY_TIMEOUT_S = 5.0


class SmscInstanceStatus(BaseModel):
    """One instance's binds and rates for one SMSC, as its last heartbeat wrote them."""

    instance: str
    smsc: str
    binds_up: int
    binds_total: int
    tps: float = Field(description="configured account rate, msg/s (0 = no limit)")
    effective_tps: float = Field(description="rate after adaptive back-off and the split between instances")
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_seen: datetime
    age_s: float = Field(description="seconds since the heartbeat")
    stale: bool = Field(description="no heartbeat for longer than stale_after: the instance is probably gone")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def up(self) -> bool:
        """At least one bind up, and the instance is alive."""
        return self.binds_up > 0 and not self.stale


class QueueStatus(BaseModel):
    """Rows in one non-final status."""

    status: str
    count: int
    oldest_age_s: float | None = Field(None, description="queued: oldest due row; submitted: oldest awaiting receipt")


class ErrorRow(BaseModel):
    """A row that ended without delivery; the destination masked to its last four digits."""

    id: int
    at: datetime
    status: str
    reason: str | None
    error_code: int | None
    smsc: str | None
    bind: str | None
    destination: str


class StatusReport(BaseModel):
    """A snapshot of the whole gateway (all instances sharing the database)."""

    generated_at: datetime
    smscs: list[SmscInstanceStatus]
    queue: list[QueueStatus]
    final_today: dict[str, int] = Field(description="rows that reached each final status since midnight UTC")
    last_errors: list[ErrorRow]
    receipts_parked: int = Field(description="receipts waiting in pending_receipt for a message to carry their id")
    opt_outs_today: int
    opt_ins_today: int
    quarantined_today: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def queue_depth(self) -> dict[str, int]:
        """Non-final rows by status (queued, claimed, submitted)."""
        return {q.status: q.count for q in self.queue}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def oldest_queued_age_s(self) -> float | None:
        """Age of the oldest queued row that is due, None when none is."""
        return next((q.oldest_age_s for q in self.queue if q.status == "queued"), None)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def delivered_today(self) -> int:
        """Rows delivered since midnight UTC (their receipts matched)."""
        return self.final_today.get("delivered", 0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def undeliverable_today(self) -> int:
        """Rows whose receipt said undeliverable since midnight UTC."""
        return self.final_today.get("undeliverable", 0)


async def gather_status(pool: asyncpg.Pool, *, errors: int = 10, stale_after: float = 60.0) -> StatusReport:
    """Read a `StatusReport` from the database.

    `errors`: how many of the newest undelivered rows to list. `stale_after`: seconds without a heartbeat after
    which an instance's row is marked stale (a live one beats every `maintenance_interval`).

    Raises:
        OSError, asyncpg.PostgresError, TimeoutError: the database is unreachable or too slow.
    """
    async with pool.acquire(timeout=_QUERY_TIMEOUT_S) as conn:
        # One snapshot for every figure: the counts add up with each other.
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            instances = await conn.fetch(sql.INSTANCES, timeout=_QUERY_TIMEOUT_S)
            queue = await conn.fetch(sql.QUEUE, timeout=_QUERY_TIMEOUT_S)
            final = await conn.fetch(sql.FINAL_TODAY, timeout=_QUERY_TIMEOUT_S)
            last_errors = await conn.fetch(sql.LAST_ERRORS, errors, timeout=_QUERY_TIMEOUT_S)
            counts = await conn.fetchrow(sql.COUNTS, timeout=_QUERY_TIMEOUT_S)
    assert counts is not None  # a SELECT without FROM always returns its row
    return StatusReport(
        generated_at=counts["now"],
        smscs=[
            SmscInstanceStatus(
                instance=r["instance"], smsc=r["smsc"], binds_up=r["binds_up"], binds_total=r["binds_total"],
                tps=r["tps"], effective_tps=r["effective_tps"], last_error=r["last_error"],
                last_error_at=r["last_error_at"], last_seen=r["last_seen"], age_s=max(0.0, r["age_s"]),
                stale=r["age_s"] > stale_after,
            )
            for r in instances
        ],
        queue=[QueueStatus(status=r["status"], count=r["n"], oldest_age_s=r["oldest_s"]) for r in queue],
        final_today={r["status"]: r["n"] for r in final},
        last_errors=[
            ErrorRow(
                id=r["id"], at=r["done_at"], status=r["status"], reason=r["reason"], error_code=r["error_code"],
                smsc=r["smsc"], bind=r["bind_name"], destination=r["destination"],
            )
            for r in last_errors
        ],
        receipts_parked=counts["receipts_parked"],
        opt_outs_today=counts["opt_outs_today"],
        opt_ins_today=counts["opt_ins_today"],
        quarantined_today=counts["quarantined_today"],
    )


def format_age(seconds: float | None) -> str:
    """A short human age: 42s, 5m 03s, 2h 10m."""
    if seconds is None:
        return "–"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"
