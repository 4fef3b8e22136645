"""Scheduled campaigns (issue 10, part 2; migration 0014 and gateway/campaigns.py): the occurrence maths with the
time as an argument (table tests), local-time sends in three time zones, pause / resume / cancel, the CLI, and a
recurring campaign across two occurrences with a gateway restart in between (each occurrence enqueued once)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from click.testing import CliRunner
from gw import campaign_settings, running_gateway, wait_final

from gateway import campaigns
from gateway.admin import AdminError, campaign_admin
from gateway.campaigns import Schedule
from gateway.cli import main
from gateway.simulator import SimulatorConfig, SmscSimulator

SC = "12345"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def naive(*args: int) -> datetime:
    return datetime(*args)  # type: ignore[misc]


# -- the maths ---------------------------------------------------------------------------------------------

NEXT_CASES = [
    # (schedule, local_time, after, next)
    ("* * * * *", False, naive(2026, 6, 1, 9, 59, 30), naive(2026, 6, 1, 10, 0)),
    ("* * * * *", False, naive(2026, 6, 1, 10, 0), naive(2026, 6, 1, 10, 1)),
    ("0 10 * * 1", False, naive(2026, 6, 1, 10, 0), naive(2026, 6, 8, 10, 0)),  # Mondays 10:00
    ("0 10 * * *", True, naive(2026, 6, 1, 9, 0), naive(2026, 6, 1, 10, 0)),
    ("2026-06-01T10:00", False, naive(2026, 6, 1, 9, 0), naive(2026, 6, 1, 10, 0)),
    ("2026-06-01T10:00", False, naive(2026, 6, 1, 10, 0), None),
    ("2026-06-01T12:00+02:00", False, naive(2026, 6, 1, 9, 0), naive(2026, 6, 1, 10, 0)),  # to UTC
]


@pytest.mark.parametrize(("expression", "local", "after", "expected"), NEXT_CASES)
def test_next_after(expression: str, local: bool, after: datetime, expected: datetime | None) -> None:
    assert Schedule(expression, local).next_after(after) == expected


LATEST_CASES = [
    # (schedule, local_time, first pending occurrence, clock, latest due occurrence)
    ("* * * * *", False, naive(2026, 6, 1, 10, 0), utc(2026, 6, 1, 9, 59, 59), None),
    ("* * * * *", False, naive(2026, 6, 1, 10, 0), utc(2026, 6, 1, 10, 0), naive(2026, 6, 1, 10, 0)),
    ("* * * * *", False, naive(2026, 6, 1, 10, 0), utc(2026, 6, 1, 10, 0, 59), naive(2026, 6, 1, 10, 0)),
    # a gateway down for hours: only the latest missed occurrence
    ("* * * * *", False, naive(2026, 6, 1, 10, 0), utc(2026, 6, 1, 13, 7, 30), naive(2026, 6, 1, 13, 7)),
    # local time: due 14 h before the wall time (the earliest zone, UTC+14)
    ("0 10 * * *", True, naive(2026, 6, 1, 10, 0), utc(2026, 5, 31, 19, 59), None),
    ("0 10 * * *", True, naive(2026, 6, 1, 10, 0), utc(2026, 5, 31, 20, 0), naive(2026, 6, 1, 10, 0)),
    ("2026-06-01T10:00", False, naive(2026, 6, 1, 10, 0), utc(2026, 7, 1), naive(2026, 6, 1, 10, 0)),
]


@pytest.mark.parametrize(("expression", "local", "first", "clock", "expected"), LATEST_CASES)
def test_latest_due(expression: str, local: bool, first: datetime, clock: datetime,
                    expected: datetime | None) -> None:
    assert Schedule(expression, local).latest_due(first, clock) == expected


def test_keys_first_run_and_bad_schedules() -> None:
    assert Schedule("* * * * *").key("k", naive(2026, 6, 1, 10, 0)) == "k@2026-06-01T10:00:00Z"
    assert Schedule("0 10 * * *", True).key("k", naive(2026, 6, 1, 10, 0)) == "k@2026-06-01T10:00:00"
    assert campaigns.first_run(Schedule("*/5 * * * *"), utc(2026, 6, 1, 10, 2)) == (
        naive(2026, 6, 1, 10, 5), utc(2026, 6, 1, 10, 5))
    assert campaigns.first_run(Schedule("0 10 * * *", True), utc(2026, 6, 1, 12)) == (
        naive(2026, 6, 2, 10, 0), utc(2026, 6, 1, 20, 0))
    # a one-off already past is sent at once
    assert campaigns.first_run(Schedule("2026-06-01T10:00"), utc(2026, 7, 1))[0] == naive(2026, 6, 1, 10)
    for bad in ("every monday", "61 * * * *", ""):
        with pytest.raises(ValueError, match="neither"):
            Schedule(bad)
    with pytest.raises(ValueError, match="wall-clock"):
        Schedule("2026-06-01T10:00Z", True)


def test_local_send_after_and_zones() -> None:
    at = naive(2026, 6, 1, 10, 0)
    expected = {  # 10:00 local in June
        ("+12025550001", None): utc(2026, 6, 1, 14),       # New York, EDT
        ("+442071234567", None): utc(2026, 6, 1, 9),       # London, BST
        ("+81312345678", None): utc(2026, 6, 1, 1),        # Tokyo
        ("+12025550001", "America/Los_Angeles"): utc(2026, 6, 1, 17),  # the attribute wins
        ("+12025550001", "Not/AZone"): utc(2026, 6, 1, 14),            # an unknown zone: the number's
    }
    for (number, tz), instant in expected.items():
        assert campaigns.local_send_after(at, campaigns.recipient_zone(number, tz)) == instant, (number, tz)
    # spring forward: 02:30 does not exist in New York on 2026-03-08; the row goes just after the change
    ny = ZoneInfo("America/New_York")
    assert campaigns.local_send_after(naive(2026, 3, 8, 2, 30), ny) == utc(2026, 3, 8, 7, 30)


# -- the database ------------------------------------------------------------------------------------------

NUMBERS = ["12025550001", "442071234567", "81312345678", "12025550004"]


async def _setup(pool: asyncpg.Pool, numbers: list[str] = NUMBERS) -> None:
    await pool.execute(
        "INSERT INTO subscriber_list (short_code, name, program, frequency, marketing)"
        " VALUES ($1, 'news', 'Acme News', '4 msgs/month', true)", SC)
    await pool.execute(
        "INSERT INTO subscription (short_code, list_name, msisdn, status, opted_in_at)"
        " SELECT $1, 'news', n, 'active', now() FROM unnest($2::text[]) n", SC, numbers)
    await pool.execute(
        "INSERT INTO message_template (short_code, name, body, message_class)"
        " VALUES ($1, 'promo', 'Acme News: hi {first_name|there}, sale today. Reply STOP to opt out', 'marketing')",
        SC)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    now = [utc(2026, 6, 1, 9, 59, 30)]
    monkeypatch.setattr(campaigns, "now", lambda: now[0])
    monkeypatch.setattr(campaigns, "SCHEDULER_INTERVAL", 0.05)
    return now


async def _create(pool: asyncpg.Pool, key: str, schedule: str, *, local_time: bool = False) -> dict[str, Any]:
    async with pool.acquire() as conn:
        return await campaign_admin.create(conn, key=key, short_code=SC, list_name="news", template="promo",
                                           schedule=schedule, local_time=local_time)


async def _keys(pool: asyncpg.Pool) -> dict[str, int]:
    return dict(await pool.fetch(  # type: ignore[arg-type]
        "SELECT campaign_key, count(*) FROM outbound_message WHERE campaign_key IS NOT NULL GROUP BY 1"))


async def test_local_time_sends_in_three_zones(db_pool: asyncpg.Pool, clock: list[datetime]) -> None:
    await _setup(db_pool)
    await db_pool.execute("SELECT smsgw_set_attributes($1, '+12025550004', '{\"time_zone\": \"America/Denver\"}')",
                          SC)
    clock[0] = utc(2026, 5, 31, 12)
    row = await _create(db_pool, "tz", "2026-06-01T10:00", local_time=True)
    assert (row["next_occurrence"], row["next_run"]) == (naive(2026, 6, 1, 10), utc(2026, 5, 31, 20))
    assert await campaigns.run_due(db_pool) == 0  # not yet: 10:00 is still more than 14 h away everywhere
    clock[0] = utc(2026, 5, 31, 20)
    assert await campaigns.run_due(db_pool) == 1
    rows = dict(await db_pool.fetch(
        "SELECT destination, send_after FROM outbound_message WHERE campaign_key = 'tz@2026-06-01T10:00:00'"))
    assert rows == {
        "+12025550001": utc(2026, 6, 1, 14),   # New York
        "+442071234567": utc(2026, 6, 1, 9),   # London
        "+81312345678": utc(2026, 6, 1, 1),    # Tokyo
        "+12025550004": utc(2026, 6, 1, 16),   # the subscriber's time_zone attribute: Denver
    }
    status = await db_pool.fetchrow("SELECT status, next_run, last_enqueued FROM campaign WHERE key = 'tz'")
    assert tuple(status) == ("done", None, 4)  # a one-off ends after its occurrence
    assert await campaigns.run_due(db_pool) == 0


async def test_pause_resume_cancel(db_pool: asyncpg.Pool, clock: list[datetime]) -> None:
    await _setup(db_pool)
    clock[0] = utc(2026, 6, 1, 9, 30)
    await _create(db_pool, "hourly", "0 * * * *")
    async with db_pool.acquire() as conn:
        assert (await campaign_admin.set_status(conn, "hourly", "pause"))["status"] == "paused"
        with pytest.raises(AdminError, match="cannot pause"):
            await campaign_admin.set_status(conn, "hourly", "pause")
        clock[0] = utc(2026, 6, 1, 10, 5)
        assert await campaigns.run_due(db_pool) == 0  # paused: 10:00 is not sent
        resumed = await campaign_admin.set_status(conn, "hourly", "resume")
        assert (resumed["status"], resumed["next_occurrence"]) == ("active", naive(2026, 6, 1, 11))  # 10:00 skipped
        assert await campaigns.run_due(db_pool) == 0
        clock[0] = utc(2026, 6, 1, 11, 0, 2)
        assert await campaigns.run_due(db_pool) == 1
        assert await _keys(db_pool) == {"hourly@2026-06-01T11:00:00Z": 4}
        cancelled = await campaign_admin.set_status(conn, "hourly", "cancel")
        assert (cancelled["status"], cancelled["next_run"]) == ("cancelled", None)
        for action in ("pause", "resume", "cancel"):
            with pytest.raises(AdminError, match="cancelled"):
                await campaign_admin.set_status(conn, "hourly", action)
        clock[0] = utc(2026, 6, 1, 14)
        assert await campaigns.run_due(db_pool) == 0
        assert await _keys(db_pool) == {"hourly@2026-06-01T11:00:00Z": 4}
        with pytest.raises(AdminError, match="no campaign"):
            await campaign_admin.set_status(conn, "nope", "pause")
        with pytest.raises(AdminError, match="exists already"):
            await campaign_admin.create(conn, key="hourly", short_code=SC, list_name="news", template="promo",
                                        schedule="0 * * * *")
        for kwargs, message in (({"template": "nope"}, "no template"), ({"list_name": "nope"}, "no list"),
                                ({"schedule": "sometimes"}, "neither"), ({"key": "a@b"}, "campaign key")):
            args = {"key": "other", "short_code": SC, "list_name": "news", "template": "promo",
                    "schedule": "0 * * * *"} | kwargs
            with pytest.raises(AdminError, match=message):
                await campaign_admin.create(conn, **args)


async def test_two_schedulers_enqueue_an_occurrence_once(db_pool: asyncpg.Pool, clock: list[datetime]) -> None:
    await _setup(db_pool)
    await _create(db_pool, "race", "* * * * *")
    clock[0] = utc(2026, 6, 1, 10, 0, 1)
    handled = await asyncio.gather(*(campaigns.run_due(db_pool) for _ in range(3)))
    assert sum(handled) == 1
    assert await _keys(db_pool) == {"race@2026-06-01T10:00:00Z": 4}
    # even a campaign row set back to the enqueued occurrence (a scheduler that died before committing its
    # advance, in another design) inserts nothing twice: the unique (campaign_key, destination) index
    await db_pool.execute("UPDATE campaign SET next_occurrence = '2026-06-01T10:00', next_run = '2026-06-01T10:00Z'")
    assert await campaigns.run_due(db_pool) == 1
    assert await _keys(db_pool) == {"race@2026-06-01T10:00:00Z": 4}
    assert await db_pool.fetchval("SELECT last_enqueued FROM campaign") == 0


async def test_cli(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    await _setup(db_pool)
    runner = CliRunner()

    async def invoke(*args: str) -> Any:
        env = {"COLUMNS": "250", "SMSGW_CONFIG": None, "SMSGW_DATABASE__URL": db_dsn}
        return await asyncio.to_thread(runner.invoke, main, ["campaign", *args], env=env, catch_exceptions=False)

    res = await invoke("create", "weekly", "--short-code", SC, "--list", "news", "--template", "promo",
                       "--schedule", "0 10 * * 1", "--local-time")
    assert res.exit_code == 0, res.output
    assert "weekly: active" in res.output and "(local time)" in res.output
    res = await invoke("create", "bad", "--short-code", SC, "--list", "news", "--template", "promo",
                       "--schedule", "soon")
    assert res.exit_code != 0 and "neither a cron expression" in res.output
    res = await invoke("pause", "weekly", "--json")
    assert res.exit_code == 0 and '"paused"' in res.output
    res = await invoke("resume", "weekly")
    assert res.exit_code == 0 and "weekly: active" in res.output
    res = await invoke("cancel", "weekly")
    assert res.exit_code == 0 and "weekly: cancelled" in res.output
    assert await db_pool.fetchval("SELECT status FROM campaign WHERE key = 'weekly'") == "cancelled"


# -- end to end: a recurring campaign across two occurrences with a restart in between ----------------------

async def _wait_keys(pool: asyncpg.Pool, want: dict[str, int], timeout: float = 15) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    keys = await _keys(pool)
    while keys != want and loop.time() < deadline:
        await asyncio.sleep(0.05)
        keys = await _keys(pool)
    return keys


async def test_recurring_campaign_across_a_restart(
    db_pool: asyncpg.Pool, db_dsn: str, clock: list[datetime]
) -> None:
    numbers = [f"1202555{i:04d}" for i in range(1, 51)]
    await _setup(db_pool, numbers)
    await _create(db_pool, "minutely", "* * * * *")
    first, second = "minutely@2026-06-01T10:00:00Z", "minutely@2026-06-01T10:01:00Z"
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01, deliver_timeout=1.0)) as sim:
        settings = campaign_settings(db_dsn, sim, window=50, maintenance_interval=0.5)
        async with running_gateway(settings):
            await asyncio.sleep(0.2)
            assert await _keys(db_pool) == {}  # 09:59:30: nothing due
            clock[0] = utc(2026, 6, 1, 10, 0, 5)
            assert await _wait_keys(db_pool, {first: 50}) == {first: 50}
            await asyncio.sleep(0.3)  # more ticks within the same minute
        # the restart: a new gateway (a new scheduler) at the same minute enqueues nothing again
        async with running_gateway(settings):
            await asyncio.sleep(0.3)
            assert await _keys(db_pool) == {first: 50}
            clock[0] = utc(2026, 6, 1, 10, 1, 10)
            assert await _wait_keys(db_pool, {first: 50, second: 50}) == {first: 50, second: 50}
            await asyncio.sleep(0.3)
            final = await wait_final(db_pool, timeout=30)
        per_number: dict[str, int] = {}
        for r in sim.submits:
            if r.status == 0:
                per_number[r.destination_addr] = per_number.get(r.destination_addr, 0) + 1
    assert final == {"delivered": 100}, final
    assert per_number == {n: 2 for n in numbers}
    row = await db_pool.fetchrow("SELECT status, last_occurrence, next_occurrence FROM campaign")
    assert tuple(row) == ("active", naive(2026, 6, 1, 10, 1), naive(2026, 6, 1, 10, 2))


async def test_the_gateway_role_runs_the_scheduler_and_the_rule_sync(
    db_pool: asyncpg.Pool, db_dsn: str, clock: list[datetime]
) -> None:
    from keywords.config import ShortCodeKeywords

    await _setup(db_pool)
    await _create(db_pool, "as-gateway", "2026-06-01T10:00", local_time=True)
    clock[0] = utc(2026, 6, 1)
    keywords = {SC: ShortCodeKeywords.model_validate({
        "program": "Acme", "contact": "help@acme.example", "frequency": "4 msgs/month",
        "events": [{"event": "order_shipped", "template": "promo"}]})}

    async def as_gateway(conn: asyncpg.Connection) -> None:
        await conn.execute("SET ROLE smsgw_gateway")

    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2, setup=as_gateway)
    try:
        await campaigns.sync_event_rules(pool, keywords)
        assert await campaigns.run_due(pool) == 1
        await campaigns.sync_event_rules(pool, {})
    finally:
        await pool.close()
    assert await _keys(db_pool) == {"as-gateway@2026-06-01T10:00:00": 4}
    assert await db_pool.fetchval("SELECT count(*) FROM event_rule") == 0


async def test_a_broken_campaign_does_not_stop_the_others(db_pool: asyncpg.Pool, clock: list[datetime]) -> None:
    await _setup(db_pool)
    await _create(db_pool, "good", "* * * * *")
    await _create(db_pool, "orphan", "* * * * *")
    await db_pool.execute(  # written in SQL with a schedule that is neither cron nor a timestamp
        "INSERT INTO campaign (key, short_code, list_name, template, schedule, next_occurrence, next_run)"
        " VALUES ('bad', $1, 'news', 'promo', 'sometimes', '2026-06-01T10:00', '2026-06-01T10:00Z')", SC)
    await db_pool.execute("UPDATE campaign SET template = 'gone' WHERE key = 'orphan'")  # its template: unknown
    clock[0] = utc(2026, 6, 1, 10, 0, 1)
    assert await campaigns.run_due(db_pool) == 1
    assert await _keys(db_pool) == {"good@2026-06-01T10:00:00Z": 4}
    # the broken ones are not advanced (retried at every look, logged); the good one is
    rows = dict(await db_pool.fetch("SELECT key, next_occurrence FROM campaign"))
    assert rows == {"good": naive(2026, 6, 1, 10, 1), "orphan": naive(2026, 6, 1, 10), "bad": naive(2026, 6, 1, 10)}
