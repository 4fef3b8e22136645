"""The batched writes keep linear plans when the queue's statistics are stale.

A queue's status mix changes within seconds and its statistics lag behind: analysed just after a broadcast is
enqueued, they say no row is claimed or submitted. A constant condition on the written table (`status =
'submitted'`) is then estimated at one row; the planner put outbound_message on the outer side of a nested loop
and scanned the whole batch once per row, so a 6,400-receipt flush took 13.5 s (bench/campaign.py --pg-stats with
auto_explain), or scanned the whole table for every batch of marks. These tests build exactly that state (the
statistics taken while every row was queued, autovacuum off so they stay that way), run each hot-path write with
EXPLAIN ANALYZE on a real batch, and check the plan reaches the table by index from the batch: no sequential
scan of a queue table, and no more rows thrown away by join filters than the batch has rows.

The same holds for what runs per claim (the claim, the frequency caps' and consent lookups: the consent tables
analysed while empty, then a first import of subscribers) and for the maintenance pass every few seconds: there,
rows a scan reads and throws away by its own filter count too (an index walked on its first column alone, or a
whole partial index the statistics call empty).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from pg import ADMIN_DB, create_database, drop_database

from gateway.db import outbound_sql as sql
from gateway.db.embedded import EmbeddedPostgres
from gateway.results import KINDS, MarkRow, PartMarkRow, ReceiptRow, SettleRow
from keywords import sql as consent_sql

pytestmark = pytest.mark.asyncio(loop_scope="session")

# A table big enough that no batch of BATCH rows justifies reading all of it: the planner must reach the rows by
# index from the batch, and does when the statistics do not mislead it.
TABLE_ROWS = 200_000
BATCH = 200
QUEUE_TABLES = {"outbound_message", "message_part", "pending_receipt"}
TOKEN = "claim-token-1"
# A marketing broadcast enqueued after the statistics (they say no row is marketing): its first BATCH rows claimed
# by TOKEN2, and each of their numbers sent three messages of the list this week and one ten days ago.
BROADCAST_ROWS = 20_000
TOKEN2 = "claim-token-2"
SHORT_CODE = "12345"
LIST = "news"
# Consent tables analysed while empty, then filled (a first import of subscribers).
SUBSCRIPTIONS = 100_000
OPT_OUTS = 20_000
MOS = 20_000
CONSENT_TABLES = {"subscription", "opt_out", "inbound_message"}


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _outline(plan: dict[str, Any], depth: int = 0) -> str:
    """The plan as indented lines of node, relation or index, actual rows x loops (for failure messages)."""
    where = plan.get("Index Name") or plan.get("Relation Name") or plan.get("Subplan Name") or ""
    line = (f"{'  ' * depth}{plan['Node Type']} {where} rows={plan.get('Actual Rows')}"
            f" loops={plan.get('Actual Loops')} removed_by_join_filter={plan.get('Rows Removed by Join Filter', 0)}")
    return "\n".join([line, *(_outline(child, depth + 1) for child in plan.get("Plans", []))])


def _sql_of(row_type: type) -> str:
    return next(k.sql for k in KINDS if k.row is row_type)


async def _stale_queue(conn: asyncpg.Connection) -> None:
    """TABLE_ROWS queued rows, analysed; then some claimed, submitted and split into parts, and a marketing
    broadcast enqueued (BROADCAST_ROWS, its first BATCH claimed, with a history of its numbers), not analysed."""
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
    await conn.execute(
        "INSERT INTO outbound_message (source, destination, body, message_class, list_name)"
        " SELECT $2, '+1303' || lpad(i::text, 7, '0'), 'offer', 'marketing', $3 FROM generate_series(1, $1) i",
        BROADCAST_ROWS, SHORT_CODE, LIST)
    await conn.execute(
        "UPDATE outbound_message SET status = 'claimed', claimed_by = $3, claimed_until = now() + interval '1 minute',"
        " attempts = 1 WHERE id > $1 AND id <= $1 + $2", TABLE_ROWS, BATCH, TOKEN2)
    await conn.execute(
        "INSERT INTO outbound_message (source, destination, body, message_class, list_name, status, submitted_at,"
        " done_at, smsc, smsc_message_id, smsc_msgid_key, attempts)"
        " SELECT $2, '+1303' || lpad(i::text, 7, '0'), 'offer', 'marketing', $3, 'delivered',"
        " now() - make_interval(days => d), now() - make_interval(days => d), 's', 'h' || i || '.' || d,"
        " 'h' || i || '.' || d, 1 FROM generate_series(1, $1) i, unnest('{1, 2, 3, 10}'::int[]) d",
        BATCH, SHORT_CODE, LIST)


async def _stale_consent(conn: asyncpg.Connection) -> None:
    """The consent tables analysed while empty, then a first import: SUBSCRIPTIONS subscribers, OPT_OUTS opt-outs
    and MOS inbound messages (HELP, MO i from the subscriber i * SUBSCRIPTIONS // BATCH), not analysed."""
    for table in CONSENT_TABLES:
        await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    await conn.execute("ANALYZE subscription; ANALYZE opt_out; ANALYZE inbound_message")
    await conn.execute("INSERT INTO subscriber_list (short_code, name, program) VALUES ($1, $2, 'p')", SHORT_CODE, LIST)
    await conn.execute(
        "INSERT INTO subscription (short_code, list_name, msisdn, status, opted_in_at)"
        " SELECT $2, $3, '1303' || lpad(i::text, 7, '0'), 'active', now() FROM generate_series(1, $1) i",
        SUBSCRIPTIONS, SHORT_CODE, LIST)
    await conn.execute(
        "INSERT INTO opt_out (short_code, msisdn) SELECT $2, '1303' || lpad((i * 7)::text, 7, '0')"
        " FROM generate_series(1, $1) i", OPT_OUTS, SHORT_CODE)
    await conn.execute(
        "INSERT INTO inbound_message (smsc, source, destination, body, data_coding, esm_class, raw_short_message,"
        " short_code, msisdn, intent) SELECT 's', '+1303' || lpad((i * $3)::text, 7, '0'), $2, 'HELP', 0, 0, '',"
        " $2, '1303' || lpad((i * $3)::text, 7, '0'), 'help' FROM generate_series(1, $1) i",
        MOS, SHORT_CODE, SUBSCRIPTIONS // BATCH)


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
            await _stale_consent(conn)
        finally:
            await conn.close()
        yield pg_cluster.dsn("plans")
    finally:
        await drop_database(admin_dsn, "plans")


async def _plan(
    dsn: str, statement: str, args: list[Any], plan_cache_mode: str, setup: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The plan `statement` ran with (after `setup`, in one transaction rolled back)."""
    conn = await asyncpg.connect(dsn)
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
            for step in setup:
                await conn.execute(step)
            plans.clear()
            await conn.fetch(statement, *args)
        finally:
            await tx.rollback()
    finally:
        await conn.close()
    explained = [json.loads(m.split("plan:", 1)[1]) for m in plans if "plan:" in m]
    assert explained, f"no plan logged: {plans}"
    plan: dict[str, Any] = explained[-1]["Plan"]
    return plan


def _check_linear(
    name: str,
    plan: dict[str, Any],
    *,
    big: AbstractSet[str] = frozenset({"outbound_message"}),
    small: AbstractSet[str] = frozenset(QUEUE_TABLES),
    found_in: AbstractSet[str] = frozenset({"outbound_message", "message_part"}),
    min_found: int = BATCH,
    max_thrown: int = BATCH,
    max_filtered: int = BATCH,
) -> None:
    """No sequential scan of a `big` table, none of a `small` one once per row, at most `max_thrown` rows thrown
    away by join filters and `max_filtered` read from `big` and `small` tables and thrown away by a scan's own
    filter (an index scan on a key's first column only, or a whole partial index, reads what it throws away),
    and at least `min_found` rows of `found_in` tables met (the test kept its point)."""
    nodes = list(_nodes(plan))
    seq_scans = [n["Relation Name"] for n in nodes
                 if n["Node Type"] == "Seq Scan" and n.get("Actual Loops", 0) > 0
                 and (n.get("Relation Name") in big
                      # A parallel scan's loops are its processes, not rescans.
                      or (n.get("Relation Name") in small and n["Actual Loops"] > 1 and not n.get("Parallel Aware")))]
    thrown = sum(n.get("Rows Removed by Join Filter", 0) * n.get("Actual Loops", 1) for n in nodes)
    filtered = sum((n.get("Rows Removed by Filter", 0) + n.get("Rows Removed by Index Recheck", 0))
                   * n.get("Actual Loops", 1) for n in nodes if n.get("Relation Name") in big | small)
    found = sum(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) for n in nodes
                if n.get("Relation Name") in found_in and n["Node Type"] != "ModifyTable")
    outline = _outline(plan)
    assert found >= min_found, f"{name}: met {found} rows: the test lost its point\n{outline}"
    assert not seq_scans, f"{name}: sequential scans of {seq_scans} for a batch of {BATCH}\n{outline}"
    assert thrown <= max_thrown, (
        f"{name}: join filters threw away {thrown:,.0f} rows for a batch of {BATCH}\n{outline}")
    assert filtered <= max_filtered, (
        f"{name}: scans read and threw away {filtered:,.0f} rows for a batch of {BATCH}\n{outline}")


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("write", list(_batches()))
async def test_batched_write_plans_stay_linear_on_stale_statistics(
    stale_dsn: str, write: str, plan_cache_mode: str
) -> None:
    statement, args = _batches()[write]
    # outbound_message is never read whole for a batch; a small queue table may be, once, but not once per row.
    _check_linear(write, await _plan(stale_dsn, statement, args, plan_cache_mode))


# The router's rules for an SMSC whose buffer is full (router.blocked_rules): prefixes of other countries, and
# one that matches ten queued rows at the head of the queue.
_BLOCKED = (["44", "33", "1202000070", "1303"], [None, SHORT_CODE, None, None], [None, None, None, "marketing"])


def _per_claim() -> dict[str, tuple[str, list[Any], dict[str, Any]]]:
    """Each statement run per claim or per admitted batch, its arguments, and what _check_linear allows it."""
    batch_ids = list(range(TABLE_ROWS + 1, TABLE_ROWS + BATCH + 1))
    numbers = [f"1303{i:07d}" for i in range(1, BATCH + 1)]
    # Spread over the subscribers (a scan along (short code, list) alone would stop early at the first ones).
    consent_numbers = [f"+1303{i * (SUBSCRIPTIONS // BATCH):07d}" for i in range(1, BATCH + 1)]
    # Replies to HELP for a tenth of the rows (row i's number sent MO i).
    replies = [i if i % 10 == 0 else None for i in range(1, BATCH + 1)]
    return {
        "claim": (sql.CLAIM, [TOKEN2 + "x", 60.0, BATCH], {}),
        # Each queued row is tried against every rule until one matches: rules x rows, as the claim goes.
        "claim_excluding": (sql.CLAIM_EXCLUDING, [TOKEN2 + "x", 60.0, BATCH, *_BLOCKED],
                            {"max_thrown": len(_BLOCKED[0]) * (BATCH + 10)}),
        # The batch's own rows (in flight, on the index) are read and dropped: one per item.
        "frequency_cap_sent": (sql.FREQUENCY_CAP_SENT,
                               [list(range(BATCH)), [SHORT_CODE] * BATCH, [LIST] * BATCH, numbers, batch_ids,
                                datetime.now(UTC)], {}),
        "consent_check": (consent_sql.CONSENT_CHECK,
                          [[" " + SHORT_CODE] * BATCH, consent_numbers, [LIST] * BATCH, replies],
                          {"big": CONSENT_TABLES, "small": CONSENT_TABLES, "found_in": CONSENT_TABLES}),
    }


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("statement", list(_per_claim()))
async def test_per_claim_plans_stay_linear_on_stale_statistics(
    stale_dsn: str, statement: str, plan_cache_mode: str
) -> None:
    text, args, limits = _per_claim()[statement]
    _check_linear(statement, await _plan(stale_dsn, text, args, plan_cache_mode), **limits)


# The maintenance pass's statements, on BATCH rows due for each: leases run out, receipts overdue, recent parked
# receipts whose messages (single and multi-part) were marked since.
_EXPIRE_LEASES = f"UPDATE outbound_message SET claimed_until = now() - interval '1 second' WHERE id <= {BATCH}"
_OVERDUE = (f"UPDATE outbound_message SET submitted_at = now() - interval '4 days'"
            f" WHERE id > {BATCH} AND id <= {2 * BATCH}")
_PARK_RECENT = (
    "INSERT INTO pending_receipt (smsc, msgid_key, message_id, status, receipt_stat, reason)"
    f" SELECT 's', 'm' || i, 'm' || i, 'delivered', 'DELIVRD', 'delivered' FROM generate_series({BATCH + 1},"
    f" {BATCH + BATCH // 2}) i"
    " UNION ALL"
    " SELECT 's', 'p' || i || '.1', 'p' || i || '.1', 'delivered', 'DELIVRD', 'delivered'"
    f" FROM generate_series({2 * BATCH + 1}, {2 * BATCH + BATCH // 2}) i"
    " UNION ALL"
    " SELECT 's', 'unknown' || i, 'unknown' || i, 'delivered', 'DELIVRD', 'delivered'"
    f" FROM generate_series(1, {BATCH}) i"
)

# Yesterday's multi-part messages: with only the fixture's 400 parts (5 pages), reading the table is the cheaper
# probe and Postgres takes it per receipt, knowing the table's true size whatever its statistics say; a gateway's
# message_part holds the parts of days of messages.
_PART_HISTORY = (
    "INSERT INTO message_part (message_id, seq, total, smsc, smsc_message_id, smsc_msgid_key, status, submitted_at)"
    " SELECT id, seq, 2, 's', 'y' || id || '.' || seq, 'y' || id || '.' || seq, 'delivered',"
    f" now() - interval '1 day' FROM generate_series({3 * BATCH + 1}, {3 * BATCH + 25 * BATCH}) id,"
    " generate_series(1, 2) seq"
)


def _maintenance() -> dict[str, tuple[str, list[Any], tuple[str, ...], dict[str, Any]]]:
    receipt_timeout = 72 * 3600.0
    return {
        "reap_leases": (sql.REAP_LEASES_COUNTED, [5], (_EXPIRE_LEASES,), {}),
        "expire_submitted": (sql.EXPIRE_SUBMITTED, [receipt_timeout], (_OVERDUE,), {}),
        # Half the recent receipts match: the rows deleted are the batch.
        "take_matchable_parked": (sql.TAKE_MATCHABLE_PARKED, [300.0, receipt_timeout],
                                  (_PART_HISTORY, _PARK_RECENT),
                                  {"found_in": {"pending_receipt"}}),
        # Counts every non-final row, so reads them all; here they are nearly the whole table (its final rows are
        # the broadcast's history, 4 x BATCH), so one read of the table is the plan to expect.
        "queue_stats": (sql.QUEUE_STATS, [], (), {"big": frozenset(), "max_filtered": 5 * BATCH}),
        # One probe per distinct priority (here one): no batch to meet.
        "queue_oldest_due": (sql.QUEUE_OLDEST_DUE, [], (), {"min_found": 1}),
    }


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("statement", list(_maintenance()))
async def test_maintenance_plans_stay_linear_on_stale_statistics(
    stale_dsn: str, statement: str, plan_cache_mode: str
) -> None:
    text, args, setup, limits = _maintenance()[statement]
    _check_linear(statement, await _plan(stale_dsn, text, args, plan_cache_mode, setup), **limits)
