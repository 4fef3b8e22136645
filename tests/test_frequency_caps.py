"""Frequency caps per list: the pure decision over a simulated week, the settings, and end to end with a real
Postgres and the simulator (in-batch counting, what was sent, rows in flight elsewhere, wait and reject)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from gw import campaign_settings, running_gateway
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.admission import Admission
from gateway.frequency_caps import (
    Allowed,
    ListCap,
    WaitUntil,
    cap_decision,
    caps_from_keywords,
    number_keys,
)
from gateway.settings import DispatcherSettings, SmscSettings, load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.status import Reason
from keywords import sql as consent_sql
from keywords.config import ProgramList, ShortCodeKeywords

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# --- the decision over a simulated week (cap 2/day, 5/week) ----------------------------------------

# (hours after T0 the message is due, what the cap says then). Allowed messages are sent at that moment.
WEEK: list[tuple[float, Allowed | WaitUntil]] = [
    (0, Allowed()),
    (1, Allowed()),
    (2, WaitUntil(h(24))),  # 2 in 24 h: until the first leaves the day window
    (23.99, WaitUntil(h(24))),
    (24, Allowed()),  # the 0 h message left the window exactly now (rolling 24 h, not the calendar day)
    (24.5, WaitUntil(h(25))),  # 1 h and 24 h messages in the window: until 1 h leaves it
    (25, Allowed()),
    (48, Allowed()),  # 5 this week: 0, 1, 24, 25, 48
    (49.5, WaitUntil(h(168))),  # day cap fine (1 in 24 h), week cap full until the 0 h message is 7 days old
    (100, WaitUntil(h(168))),
    (167.99, WaitUntil(h(168))),
    (168, Allowed()),  # 1, 24, 25, 48 this week
    (169.5, Allowed()),  # 5 this week again (24, 25, 48, 168, 169.5), 2 today
    (170, WaitUntil(h(192))),  # both caps: day until 168 + 24, week until 24 + 168
    (192, Allowed()),  # day: 169.5; week: 25, 48, 168, 169.5
    (193, WaitUntil(h(193.5))),  # day: 169.5 and 192 -> until 169.5 leaves; week: 48, 168, 169.5, 192
    (193.5, Allowed()),
    (194, WaitUntil(h(216))),  # day until 192 + 24; week (48 .. 193.5) until 48 + 168
]


def test_a_simulated_week_cap_2_per_day_5_per_week() -> None:
    sent: list[datetime] = []
    for hours, expected in WEEK:
        now = h(hours)
        got = cap_decision(sent, now, 2, 5)
        assert got == expected, (hours, got, expected)
        if isinstance(got, Allowed):
            sent.append(now)
    assert [(t - T0).total_seconds() / 3600 for t in sent] == [0, 1, 24, 25, 48, 168, 169.5, 192, 193.5]


def test_week_table_checks_every_entry_against_a_brute_force_rule() -> None:
    """Independent check of the table: the earliest whole minute (or exact send time + window) at which
    both windows hold fewer than the cap, found by scanning, equals what cap_decision says."""
    sent: list[datetime] = []
    for hours, _ in WEEK:
        now = h(hours)
        got = cap_decision(sent, now, 2, 5)

        def ok(t: datetime) -> bool:
            day = sum(1 for s in sent if t - timedelta(days=1) < s <= t)
            week = sum(1 for s in sent if t - timedelta(days=7) < s <= t)
            return day < 2 and week < 5

        candidates = sorted({now} | {s + w for s in sent for w in (timedelta(days=1), timedelta(days=7))})
        first = next(t for t in candidates if t >= now and ok(t))
        assert got == (Allowed() if first == now else WaitUntil(first)), (hours, got, first)
        if isinstance(got, Allowed):
            sent.append(now)


def test_no_caps_and_single_caps() -> None:
    now = h(0)
    many = [now - timedelta(minutes=i) for i in range(50)]
    assert cap_decision(many, now, None, None) == Allowed()
    assert cap_decision(many, now, None, 100) == Allowed()
    assert cap_decision(many, now, None, 50) == WaitUntil(many[-1] + timedelta(days=7))
    assert cap_decision([now - timedelta(hours=30)], now, 1, None) == Allowed()  # outside the day window
    assert cap_decision([now - timedelta(hours=30)], now, None, 1) == WaitUntil(h(-30 + 168))


def test_in_flight_rows_count_as_sent_now() -> None:
    now = h(0)
    assert cap_decision([now, now], now, 2, None) == WaitUntil(now + timedelta(days=1))
    assert cap_decision([now], now, 2, None) == Allowed()


@settings(max_examples=300, deadline=None)
@given(
    offsets=st.lists(st.integers(min_value=0, max_value=8 * 24 * 60), max_size=20),
    day=st.one_of(st.none(), st.integers(min_value=1, max_value=5)),
    week=st.one_of(st.none(), st.integers(min_value=1, max_value=12)),
)
def test_wait_until_is_the_earliest_allowed_moment(offsets: list[int], day: int | None, week: int | None) -> None:
    now = h(8 * 24)
    sent = [now - timedelta(minutes=m) for m in offsets]
    got = cap_decision(sent, now, day, week)
    if isinstance(got, WaitUntil):
        assert got.at > now
        assert cap_decision(sent, got.at, day, week) == Allowed()
        assert cap_decision(sent, got.at - timedelta(microseconds=1), day, week) != Allowed()


# --- settings --------------------------------------------------------------------------------------

LIST: dict[str, Any] = {"name": "news", "program": "Acme News", "frequency": "2 msgs/day"}


def test_caps_in_the_list_settings() -> None:
    assert ProgramList(**LIST).max_per_day is None
    capped = ProgramList(**LIST, max_per_day=2, max_per_week=5, frequency_cap_action="reject")
    assert (capped.max_per_day, capped.max_per_week, capped.frequency_cap_action) == (2, 5, "reject")
    for bad in ({"max_per_day": 0}, {"max_per_week": -1}, {"frequency_cap_action": "drop"}):
        with pytest.raises(ValidationError):
            ProgramList(**LIST, **bad)
    kw = ShortCodeKeywords(
        program="Acme", contact="help@acme.example", frequency="2 msgs/day",
        lists=(ProgramList(**LIST, max_per_day=2), ProgramList(**{**LIST, "name": "deals"})),
    )
    assert caps_from_keywords({" +12345 ": kw}) == {("12345", "news"): ListCap(2, None, "wait")}


def test_the_example_config_documents_the_keys() -> None:
    text = (Path(__file__).resolve().parent.parent / "config" / "gateway.example.toml").read_text()
    for key in ("max_per_day = ", "max_per_week = ", "frequency_cap_action = "):
        assert key in text
    # The example's list promises "2 msgs/week" in its replies: its cap keeps that promise.
    settings = load_settings(Path(__file__).resolve().parent.parent / "config" / "gateway.example.toml")
    assert settings.keywords["12345"].list_named("news").max_per_week == 2


def test_number_keys() -> None:
    assert number_keys("+12025550123", "12025550123") == ["12025550123"]
    assert number_keys("+1 (202) 555-0123", "12025550123") == ["12025550123"]
    assert number_keys("2025550123", "12025550123") == ["12025550123", "2025550123"]


# --- the admission hook when the lookup fails ---------------------------------------------------------


class _Pool:
    """Consent says yes to everyone; the frequency-cap lookup fails (the database went away)."""

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[dict[str, Any]]:
        if query == consent_sql.CONSENT_CHECK:
            return [{"i": i, "opted_out": False, "subscribed": True, "exempt": False, "time_zone": None}
                    for i in range(1, len(args[0]) + 1)]
        raise ConnectionResetError("connection lost")


class _Writer:
    def __init__(self) -> None:
        self.settled: list[tuple[int, str, str | None]] = []

    def settle(self, row_id: int, token: str, status: str, **kw: Any) -> None:
        self.settled.append((row_id, status, kw.get("reason")))


async def test_a_failed_lookup_holds_only_the_capped_rows() -> None:
    writer = _Writer()
    admission = Admission(
        "sim", SmscSettings(system_id="smsgw", password="secret"), DispatcherSettings(quiet_hours=False), _Pool(),  # type: ignore[arg-type]
        writer,  # type: ignore[arg-type]
        keywords={"12345": ShortCodeKeywords(
            program="Acme", contact="help@acme.example", frequency="2 msgs/day",
            lists=(ProgramList(**LIST, max_per_day=2), ProgramList(**{**LIST, "name": "deals"})),
        )},
    )
    now = datetime.now(UTC)

    def row(row_id: int, cls: str, list_name: str | None) -> tuple[str, dict[str, Any]]:
        return f"t{row_id}", {
            "id": row_id, "source": "12345", "destination": "+15550003001", "body": "hi", "priority": 0,
            "message_class": cls, "expires_at": None, "attempts": 1, "created_at": now, "list_name": list_name,
            "is_opt_out_confirmation": False, "inbound_message_id": None,
        }

    rows = [row(1, "marketing", "news"), row(2, "transactional", "news"), row(3, "marketing", "deals")]
    ready = await admission.admit(rows, lease_until=0.0)  # type: ignore[arg-type]
    assert [item.msg.id for item in ready] == [2, 3]  # uncapped rows go on
    assert writer.settled == [(1, "queued", Reason.CLAIM_FAILED)]  # the capped one waits, settled once


# --- end to end ---------------------------------------------------------------------------------------

SC = "12345"
A, B = "15550003001", "15550003002"
KEYWORDS: dict[str, Any] = {
    "program": "Acme Alerts",
    "contact": "help@acme.example",
    "frequency": "Up to 2 msgs/day",
    "lists": [
        {"name": "news", "program": "Acme News", "frequency": "2 msgs/day", "max_per_day": 2},
        {"name": "deals", "program": "Acme Deals", "frequency": "2 msgs/day", "max_per_day": 2,
         "frequency_cap_action": "reject"},
        {"name": "weekly", "program": "Acme Weekly", "frequency": "2 msgs/day", "max_per_day": 2,
         "max_per_week": 3},
    ],
    "default_list": "news",
}


@pytest_asyncio.fixture(loop_scope="session")
async def sim() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as simulator:
        yield simulator


def texts_to(sim: SmscSimulator, number: str) -> list[str]:
    return [r.text for r in sim.submits if r.destination_addr == number and r.status == 0]


INSERT = """
INSERT INTO outbound_message (source, destination, body, message_class, list_name)
SELECT $1, d, b, c, l FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS u(d, b, c, l)
RETURNING id
"""


async def insert(pool: asyncpg.Pool, rows: list[tuple[str, str, str, str | None]]) -> list[int]:
    return [r["id"] for r in await pool.fetch(INSERT, SC, *map(list, zip(*rows, strict=True)))]


async def settled(pool: asyncpg.Pool, ids: list[int], timeout: float = 15) -> dict[int, asyncpg.Record]:
    """Wait until each row is final, or queued again by the cap; return them."""
    query = ("SELECT id, status, reason, attempts, send_after, submitted_at FROM outbound_message"
             " WHERE id = ANY($1::bigint[])")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rows = {r["id"]: r for r in await pool.fetch(query, ids)}
        done = all(r["status"] in ("delivered", "rejected", "failed", "undeliverable")
                   or (r["status"] == "queued" and r["reason"] == Reason.FREQUENCY_CAP) for r in rows.values())
        if done or loop.time() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def subscribe(pool: asyncpg.Pool, *numbers: str) -> None:
    """Lists as the gateway creates them at start (the rows are enqueued before it starts: one claim)."""
    await pool.execute(
        "INSERT INTO subscriber_list (short_code, name, program) SELECT $1, n, n"
        " FROM unnest('{news,deals,weekly}'::text[]) n ON CONFLICT DO NOTHING", SC,
    )
    for number in numbers:
        for lst in ("news", "deals", "weekly"):
            await pool.execute("SELECT smsgw_opt_in($1, $2, $3, 'api', NULL, NULL, NULL, 'test')", SC, number, lst)


@pytest.mark.parametrize("list_name", ["news", "deals"])
async def test_cap_two_per_day_in_one_batch_and_later(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator, list_name: str
) -> None:
    """3 marketing rows to A in one claim and 1 later: 2 go, the others wait ~24 h after the first ("news",
    action wait) or are rejected ("deals", action reject); a transactional row to A and B's rows go regardless."""
    await subscribe(db_pool, A, B)
    wait = list_name == "news"
    sim.submits.clear()
    # Inserted before the gateway starts: one claim takes them all (and A's three are one batch).
    ids = await insert(db_pool, [
        ("+" + A, f"{list_name} 1", "marketing", list_name),
        ("+" + A, f"{list_name} 2", "marketing", list_name),
        ("+" + B, f"{list_name} B1", "marketing", list_name),
        ("+1 555 000 3001", f"{list_name} 3", "marketing", list_name),  # A, written otherwise
        ("+" + A, "order 42 shipped", "transactional", list_name),  # never capped, even naming the list
        ("+" + B, f"{list_name} B2", "marketing", list_name),
    ])
    async with running_gateway(campaign_settings(db_dsn, sim, {SC: KEYWORDS})):
        rows = await settled(db_pool, ids)
        later = await insert(db_pool, [("+" + A, f"{list_name} 4", "marketing", list_name)])
        rows |= await settled(db_pool, later)
        await asyncio.sleep(0.5)  # nothing else goes (a capped row waiting for a day is not claimed again)
    a1, a2, b1, a3, tx, b2 = (rows[i] for i in ids)
    a4 = rows[later[0]]
    assert [r["status"] for r in (a1, a2, b1, tx, b2)] == ["delivered"] * 5
    assert sorted(texts_to(sim, A)) == sorted([f"{list_name} 1", f"{list_name} 2", "order 42 shipped"])
    assert sorted(texts_to(sim, B)) == [f"{list_name} B1", f"{list_name} B2"]
    for row in (a3, a4):
        assert row["reason"] == Reason.FREQUENCY_CAP
        if wait:
            assert row["status"] == "queued"
            assert row["attempts"] == 0  # the wait is not an attempt
            # Until the first of A's two leaves the 24 h window (the batch is counted as sent at admission).
            first = min(a1["submitted_at"], a2["submitted_at"])
            assert abs((row["send_after"] - (first + timedelta(days=1))).total_seconds()) < 5, (row, first)
        else:
            assert row["status"] == "rejected"


async def test_counts_what_was_sent_in_the_windows_and_rows_in_flight_elsewhere(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    """History from the table: 'weekly' (2/day, 3/week) with A sent 23 h and 3 days ago (written in another
    spelling), B sent 25 h ago and twice 8 days ago, another short code's and list's rows not counted; and a
    row for B claimed by another instance and not yet submitted counts too."""
    await subscribe(db_pool, A, B)
    sim.submits.clear()
    history = """
    INSERT INTO outbound_message (source, destination, body, message_class, list_name, status, submitted_at)
    VALUES ($1, '1 (555) 000-3001', 'old', 'marketing', 'weekly', 'delivered', now() - interval '23 hours'),
           ($1, '+15550003001', 'old', 'marketing', 'weekly', 'undeliverable', now() - interval '3 days'),
           ('99999', '+15550003001', 'other code', 'marketing', 'weekly', 'delivered', now() - interval '1 hour'),
           ($1, '+15550003001', 'other list', 'marketing', 'news', 'delivered', now() - interval '1 hour'),
           ($1, '+15550003001', 'transactional', 'transactional', 'weekly', 'delivered', now() - interval '1 hour'),
           ($1, '+15550003002', 'old', 'marketing', 'weekly', 'delivered', now() - interval '25 hours'),
           ($1, '+15550003002', 'old', 'marketing', 'weekly', 'delivered', now() - interval '8 days'),
           ($1, '+15550003002', 'old', 'marketing', 'weekly', 'delivered', now() - interval '8 days')
    """
    await db_pool.execute(history, SC)
    # Held by another gateway instance: claimed, not submitted yet.
    await db_pool.execute(
        "INSERT INTO outbound_message (source, destination, body, message_class, list_name, status, claimed_by,"
        " claimed_until, attempts) VALUES ($1, '+15550003002', 'elsewhere', 'marketing', 'weekly', 'claimed',"
        " 'other-instance:1:1', now() + interval '1 hour', 1)",
        SC,
    )
    ids = await insert(db_pool, [
        ("+" + A, "weekly A1", "marketing", "weekly"),  # A: 23 h + 3 d ago = 2 this week: one more, then full
        ("+" + A, "weekly A2", "marketing", "weekly"),
        ("+" + B, "weekly B1", "marketing", "weekly"),  # B: 25 h ago + the one in flight: 2 this week
        ("+" + B, "weekly B2", "marketing", "weekly"),
    ])
    async with running_gateway(campaign_settings(db_dsn, sim, {SC: KEYWORDS})):
        rows = await settled(db_pool, ids)
    a1, a2, b1, b2 = (rows[i] for i in ids)
    assert (a1["status"], b1["status"]) == ("delivered", "delivered")
    assert texts_to(sim, A) == ["weekly A1"] and texts_to(sim, B) == ["weekly B1"]
    old_a = await db_pool.fetchval(
        "SELECT min(submitted_at) FROM outbound_message WHERE body = 'old' AND destination = '+15550003001'"
    )
    # A: week full (3 days ago, 23 h ago, A1) until the 3-day-old one is 7 days old.
    assert (a2["status"], a2["reason"]) == ("queued", Reason.FREQUENCY_CAP)
    assert abs((a2["send_after"] - (old_a + timedelta(days=7))).total_seconds()) < 2
    # B: week full (25 h ago, in flight, B1); the 25 h one is the oldest counted: 7 days after it.
    old_b = await db_pool.fetchval(
        "SELECT max(submitted_at) FROM outbound_message WHERE body = 'old' AND destination = '+15550003002'"
    )
    assert (b2["status"], b2["reason"]) == ("queued", Reason.FREQUENCY_CAP)
    assert abs((b2["send_after"] - (old_b + timedelta(days=7))).total_seconds()) < 2


async def test_the_lookup_uses_the_cap_index(db_pool: asyncpg.Pool) -> None:
    from gateway.db.outbound_sql import FREQUENCY_CAP_SENT

    await db_pool.execute(
        "INSERT INTO outbound_message (source, destination, body, message_class, list_name)"
        " SELECT '12345', '+1555' || lpad(g::text, 7, '0'), 'x', 'marketing', 'news'"
        " FROM generate_series(1, 20000) g"
    )
    await db_pool.execute("ANALYZE outbound_message")
    plan = "\n".join(r[0] for r in await db_pool.fetch(
        "EXPLAIN " + FREQUENCY_CAP_SENT.replace("$6::timestamptz", "now()")
        .replace("$1::int[]", "'{1}'::int[]").replace("$2::text[]", "'{12345}'::text[]")
        .replace("$3::text[]", "'{news}'::text[]").replace("$4::text[]", "'{15550000001}'::text[]")
        .replace("$5::bigint[]", "'{}'::bigint[]")
    ))
    assert "outbound_message_cap_idx" in plan, plan


async def test_the_gateway_role_may_run_the_lookup(db_pool: asyncpg.Pool) -> None:
    """0011 grants what the statement needs (0009's rule): run it as the daemon's role."""
    from gateway.db.outbound_sql import FREQUENCY_CAP_SENT

    await db_pool.execute(
        "INSERT INTO outbound_message (source, destination, body, message_class, list_name, status, submitted_at)"
        " VALUES ('12345', '+15550003001', 'x', 'marketing', 'news', 'delivered', now() - interval '1 hour')"
    )
    async with db_pool.acquire() as conn:
        await conn.execute("SET ROLE smsgw_gateway")
        try:
            rows = await conn.fetch(
                FREQUENCY_CAP_SENT, [1], [SC], ["news"], ["15550003001"], [], datetime.now(UTC)
            )
        finally:
            await conn.execute("RESET ROLE")
    assert [r["i"] for r in rows] == [1]
