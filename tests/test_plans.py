"""The batched writes keep linear plans when the queue's statistics are stale.

A queue's status mix changes within seconds and its statistics lag behind: analysed just after a broadcast is
enqueued, they say no row is claimed or submitted. A constant condition on the written table (`status =
'submitted'`) is then estimated at one row; the planner put outbound_message on the outer side of a nested loop
and scanned the whole batch once per row, so a 6,400-receipt flush took 13.5 s (bench/campaign.py --pg-stats with
auto_explain), or scanned the whole table for every batch of marks. These tests build exactly that state (the
statistics taken while every row was queued, autovacuum off so they stay that way), run each hot-path write with
EXPLAIN ANALYZE on a real batch, and check the plan reaches the table by index from the batch: no sequential
scan of a queue table, and no more rows thrown away by join filters than the batch has rows.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from pg import ADMIN_DB, create_database, drop_database

from gateway.db import outbound_sql as sql
from gateway.db.embedded import EmbeddedPostgres
from gateway.results import KINDS, MarkRow, PartMarkRow, ReceiptRow, SettleRow

pytestmark = pytest.mark.asyncio(loop_scope="session")

# A table big enough that no batch of BATCH rows justifies reading all of it: the planner must reach the rows by
# index from the batch, and does when the statistics do not mislead it.
TABLE_ROWS = 200_000
BATCH = 200
QUEUE_TABLES = {"outbound_message", "message_part", "pending_receipt"}
TOKEN = "claim-token-1"


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _sql_of(row_type: type) -> str:
    return next(k.sql for k in KINDS if k.row is row_type)


async def _stale_queue(conn: asyncpg.Connection) -> None:
    """TABLE_ROWS queued rows, analysed; then some claimed, submitted and split into parts, not analysed."""
    for table in QUEUE_TABLES:
        await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    await conn.execute(
        "INSERT INTO outbound_message (source, destination, body)"
        " SELECT '12345', '+1202' || lpad(i::text, 7, '0'), 'hello' FROM generate_series(1, $1) i", TABLE_ROWS)
    # Receipts parked long ago (outside any match window): a real gateway keeps them for days.
    await conn.execute(
        "INSERT INTO pending_receipt (smsc, msgid_key, message_id, status, receipt_stat, reason, received_at)"
        " SELECT 's', 'old' || i, 'old' || i, 'delivered', 'DELIVRD', 'delivered', now() - interval '2 days'"
        " FROM generate_series(1, $1) i", TABLE_ROWS // 4)
    await conn.execute("ANALYZE outbound_message; ANALYZE message_part; ANALYZE pending_receipt")
    # After the statistics: ids 1..BATCH claimed (for marks, settles, lease renewals), the next BATCH submitted
    # single-part (for receipts), the next BATCH submitted in two parts (for part receipts).
    await conn.execute(
        "UPDATE outbound_message SET status = 'claimed', claimed_by = $2,"
        " claimed_until = now() + interval '1 minute', attempts = 1 WHERE id <= $1", BATCH, TOKEN)
    await conn.execute(
        "UPDATE outbound_message SET status = 'submitted', smsc = 's', smsc_message_id = 'm' || id,"
        " smsc_msgid_key = 'm' || id, submitted_at = now(), attempts = 1 WHERE id > $1 AND id <= 3 * $1", BATCH)
    await conn.execute(
        "UPDATE outbound_message SET parts = 2, smsc_message_id = NULL, smsc_msgid_key = NULL"
        " WHERE id > 2 * $1 AND id <= 3 * $1", BATCH)
    await conn.execute(
        "INSERT INTO message_part (message_id, seq, total, smsc, smsc_message_id, smsc_msgid_key, status)"
        " SELECT id, seq, 2, 's', 'p' || id || '.' || seq, 'p' || id || '.' || seq, 'submitted'"
        " FROM outbound_message, generate_series(1, 2) seq WHERE id > 2 * $1 AND id <= 3 * $1", BATCH)


def _columns(rows: list[Any]) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)]


def _batches() -> dict[str, tuple[str, list[Any]]]:
    """Each hot-path write with a BATCH-row batch on the rows _stale_queue prepared."""
    ids = range(1, BATCH + 1)
    marks = [MarkRow(i, TOKEN, "s", f"x{i}", f"x{i}", "s-0") for i in ids]
    part_marks = [PartMarkRow(i, TOKEN, "s", seq, 2, f"x{i}.{seq}", f"x{i}.{seq}", "s-0")
                  for i in ids[: BATCH // 2] for seq in (1, 2)]
    settles = [SettleRow(i, TOKEN, "queued", 5.0, 88, "throttled", 0, "s-0", "s", None) for i in ids]
    now = datetime.now(UTC)
    receipts = [ReceiptRow("s", f"m{i}", None, None, f"m{i}", "delivered", "DELIVRD", None, "delivered", now)
                for i in range(BATCH + 1, 2 * BATCH + 1)]
    part_receipts = [ReceiptRow("s", f"p{i}.{seq}", None, None, f"p{i}.{seq}", "delivered", "DELIVRD", None,
                                "delivered", now)
                     for i in range(2 * BATCH + 1, 2 * BATCH + 1 + BATCH // 2) for seq in (1, 2)]
    return {
        "mark": (_sql_of(MarkRow), [*_columns(marks), 300.0]),
        "part_mark": (_sql_of(PartMarkRow), [*_columns(part_marks), 300.0]),
        "settle": (_sql_of(SettleRow), _columns(settles)),
        "renew_leases": (sql.RENEW_LEASES, [list(ids), [TOKEN] * BATCH, 60.0]),
        "receipt": (_sql_of(ReceiptRow), [*_columns(receipts), 86_400.0]),
        "part_receipt": (_sql_of(ReceiptRow), [*_columns(part_receipts), 86_400.0]),
    }


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stale_dsn(pg_cluster: EmbeddedPostgres, pg_template: str) -> AsyncIterator[str]:
    """One database in the stale state for every test of the module (each test rolls its write back)."""
    admin_dsn = pg_cluster.dsn(ADMIN_DB)
    await create_database(admin_dsn, "plans", template=pg_template)
    try:
        conn = await asyncpg.connect(pg_cluster.dsn("plans"))
        try:
            await _stale_queue(conn)
        finally:
            await conn.close()
        yield pg_cluster.dsn("plans")
    finally:
        await drop_database(admin_dsn, "plans")


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("write", list(_batches()))
async def test_batched_write_plans_stay_linear_on_stale_statistics(
    stale_dsn: str, write: str, plan_cache_mode: str
) -> None:
    statement, args = _batches()[write]
    conn = await asyncpg.connect(stale_dsn)
    try:
        # The plan of the statement as the gateway runs it (prepared, with its arrays bound), from auto_explain:
        # EXPLAIN would always plan for the values given, and plan_cache_mode = force_generic_plan shows the plan
        # Postgres may keep after a few runs, which knows nothing of the arrays' lengths.
        plans: list[str] = []
        conn.add_log_listener(lambda _c, msg: plans.append(msg.message))
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on;"
            " SET auto_explain.log_format = json; SET auto_explain.log_level = notice;"
            f" SET plan_cache_mode = {plan_cache_mode}")
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.fetch(statement, *args)
        finally:
            await tx.rollback()
    finally:
        await conn.close()
    explained = [json.loads(m.split("plan:", 1)[1]) for m in plans if "plan:" in m]
    assert explained, f"no plan logged: {plans}"
    nodes = list(_nodes(explained[-1]["Plan"]))
    # outbound_message is never read whole for a batch; a small queue table may be, once, but not once per row.
    seq_scans = [n["Relation Name"] for n in nodes
                 if n["Node Type"] == "Seq Scan" and n.get("Actual Loops", 0) > 0
                 and (n.get("Relation Name") == "outbound_message"
                      or (n.get("Relation Name") in QUEUE_TABLES and n["Actual Loops"] > 1))]
    thrown = sum(n.get("Rows Removed by Join Filter", 0) * n.get("Actual Loops", 1) for n in nodes)
    # Rows of the queue tables the plan found (the batch's own rows): proof the statement met its rows.
    found = sum(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) for n in nodes
                if n.get("Relation Name") in {"outbound_message", "message_part"} and n["Node Type"] != "ModifyTable")
    assert found >= BATCH, f"{write}: the batch met {found} rows: the test lost its point"
    assert not seq_scans, f"{write}: sequential scans of {seq_scans} for a batch of {BATCH}"
    assert thrown <= BATCH, f"{write}: join filters threw away {thrown:,.0f} rows for a batch of {BATCH}"
