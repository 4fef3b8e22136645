"""Hostile producer rows next to good ones: every row ends final within seconds, the good ones delivered, each
bad one with a machine-readable reason (issue 7, item 1). Before the fix one `expires_at = 'infinity'` row made
every claim fail (`claim_failed` every 5 s, forever) and held the good rows claimed with it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import pytest_asyncio
from gw import enqueue, running_gateway, settings_for, wait_final

from gateway.admission import Admission
from gateway.settings import ConfigError, load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator

INSERT = """
INSERT INTO outbound_message (source, destination, body, expires_at, message_class, metadata)
VALUES ($1, $2, $3, $4::text::timestamptz, $5, $6::jsonb) RETURNING id
"""

# (name, source, destination, body, expires_at as SQL text, message_class, metadata) -> (status, reason)
HOSTILE = [
    ("infinite expiry", "12345", "+12025550001", "never expires", "infinity", "transactional", "{}",
     ("delivered", "delivered")),
    ("minus infinite expiry", "12345", "+12025550002", "always expired", "-infinity", "transactional", "{}",
     ("expired", "expired_before_submit")),
    ("past expiry", "12345", "+12025550003", "too late", "2001-01-01 00:00+00", "transactional", "{}",
     ("expired", "expired_before_submit")),
    ("far future expiry", "12345", "+12025550004", "year 20000", "20000-01-01 00:00+00", "transactional", "{}",
     ("delivered", "delivered")),
    ("BC expiry", "12345", "+12025550005", "before Christ", "0044-03-15 00:00+00 BC", "transactional", "{}",
     ("expired", "expired_before_submit")),
    ("100 kB body", "12345", "+12025550006", "x" * 100_000, None, "transactional", "{}",
     ("rejected", "too_long")),
    ("letters in number", "12345", "+1202555CALL", "hi", None, "transactional", "{}",
     ("rejected", "invalid_destination")),
    ("20-digit number", "12345", "+12345678901234567890", "hi", None, "transactional", "{}",
     ("rejected", "invalid_destination")),
    ("SQL-looking text", "12345", "+12025550007", "'); DROP TABLE outbound_message; --", None, "transactional",
     "{}", ("delivered", "delivered")),
    ("emoji", "12345", "+12025550008", "party 🎉🎉 time", None, "transactional", "{}", ("delivered", "delivered")),
    ("empty body", "12345", "+12025550009", "", None, "transactional", "{}", ("rejected", "empty_body")),
    ("huge metadata", "12345", "+12025550010", "meta", None, "transactional",
     json.dumps({"blob": "y" * 1_000_000, "nested": [[[[{"a": 1}]]]] * 1000}), ("delivered", "delivered")),
    ("100 kB number", "12345", "+1" + "2" * 100_000, "hi", None, "transactional", "{}",
     ("rejected", "invalid_destination")),
    ("blank source", "   ", "+12025550011", "hi", None, "transactional", "{}", ("rejected", "invalid_source")),
    ("long non-ASCII source", "ŠŠŠŠŠŠŠŠŠŠŠŠŠŠŠŠŠŠŠŠŠŠ", "+12025550012", "hi", None, "transactional", "{}",
     ("rejected", "invalid_source")),
]


@pytest_asyncio.fixture(loop_scope="session")
async def sim() -> AsyncIterator[SmscSimulator]:
    simulator = SmscSimulator(SimulatorConfig(receipt_delay=0.01))
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def test_unknown_message_class_is_refused_at_insert(db_pool: asyncpg.Pool) -> None:
    # The producer's error, not the gateway's: the CHECK constraint refuses the row, so it never reaches a claim.
    with pytest.raises(asyncpg.CheckViolationError):
        await db_pool.execute(INSERT, "12345", "+12025550001", "hi", None, "promotional", "{}")


async def test_hostile_rows_next_to_500_good_ones_all_end_final(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator
) -> None:
    await enqueue(db_pool, 250, start=100)
    ids = {}
    for name, source, dest, body, expires, cls, meta, _ in HOSTILE:
        ids[name] = await db_pool.fetchval(INSERT, source, dest, body, expires, cls, meta)
    await enqueue(db_pool, 250, start=400)
    async with running_gateway(settings_for(db_dsn, sim, window=50)):
        c = await wait_final(db_pool, timeout=20)
    assert not any(c.get(s) for s in ("queued", "claimed", "submitted")), c
    rows = {r["id"]: r for r in await db_pool.fetch("SELECT id, status, reason, detail FROM outbound_message")}
    got = {name: (rows[i]["status"], rows[i]["reason"]) for name, i in ids.items()}
    assert got == {h[0]: h[-1] for h in HOSTILE}
    good = [r for i, r in rows.items() if i not in ids.values()]
    assert len(good) == 500 and {(r["status"], r["reason"]) for r in good} == {("delivered", "delivered")}
    # Nothing was handed back whole: no claim failed.
    assert not await db_pool.fetchval("SELECT count(*) FROM outbound_message WHERE reason = 'claim_failed'")


async def test_row_that_cannot_be_prepared_ends_invalid_row_with_detail(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception while preparing one row (a bug, a value nobody foresaw) rejects that row alone."""
    from gateway import admission

    real_prepare = admission.prepare

    def prepare(msg, *args, **kwargs):  # type: ignore[no-untyped-def]
        if msg.body == "boom":
            raise RuntimeError("unforeseen value")
        return real_prepare(msg, *args, **kwargs)

    monkeypatch.setattr(admission, "prepare", prepare)
    await enqueue(db_pool, 20)
    bad = await db_pool.fetchval(INSERT, "12345", "+12025550099", "boom", None, "transactional", "{}")
    await enqueue(db_pool, 20, start=50)
    async with running_gateway(settings_for(db_dsn, sim)):
        c = await wait_final(db_pool, timeout=20)
    assert c == {"delivered": 40, "rejected": 1}
    row = await db_pool.fetchrow("SELECT status, reason, detail FROM outbound_message WHERE id = $1", bad)
    assert (row["status"], row["reason"]) == ("rejected", "invalid_row")
    assert row["detail"] == "RuntimeError: unforeseen value"


def test_admission_is_importable_with_a_name_for_what_it_does() -> None:
    assert Admission.__doc__


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("quiet_hours_default_tz", "Mars/Olympus_Mons", "dispatcher.quiet_hours_default_tz"),
        ("quiet_hours_default_tz", "", "dispatcher.quiet_hours_default_tz"),
        ("default_region", "ZZ", "dispatcher.default_region"),
        ("quiet_hours_end", "08:00", "dispatcher.quiet_hours"),  # equal to the start: an empty window
    ],
)
def test_settings_that_admission_depends_on_are_checked_at_load(key: str, value: str, named: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, dispatcher={key: value})
    assert named in str(exc.value)


def test_expiry_far_ahead_has_no_validity_period_rather_than_a_wrapped_year() -> None:
    from gateway.message import validity_period

    assert validity_period(datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)) == "310203040506000+"
    assert validity_period(datetime(2300, 1, 1, tzinfo=UTC)) == ""


async def test_row_whose_consent_lookup_postgres_refuses_is_isolated(
    db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch lookup fails on one row's values (a data error): rows are looked up one by one, and only the
    offending row is rejected, with Postgres' error as its detail."""
    from gateway import admission

    real_fetch = admission.Admission._consent_fetch

    async def fetch(self, items):  # type: ignore[no-untyped-def]
        if any(it.msg.body == "consent-boom" for it in items):
            raise asyncpg.InvalidParameterValueError("invalid E.164 number")
        return await real_fetch(self, items)

    monkeypatch.setattr(admission.Admission, "_consent_fetch", fetch)
    await enqueue(db_pool, 20)
    bad = await db_pool.fetchval(INSERT, "12345", "+12025550099", "consent-boom", None, "transactional", "{}")
    await enqueue(db_pool, 20, start=50)
    async with running_gateway(settings_for(db_dsn, sim)):
        c = await wait_final(db_pool, timeout=20)
    assert c == {"delivered": 40, "rejected": 1}
    row = await db_pool.fetchrow("SELECT status, reason, detail FROM outbound_message WHERE id = $1", bad)
    assert dict(row) == {"status": "rejected", "reason": "invalid_row",
                         "detail": "InvalidParameterValueError: invalid E.164 number"}
