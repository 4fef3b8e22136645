"""The result writer on its own: named rows against the SQL, clean values, per-item isolation and quarantine
(real Postgres), the whole-batch retry for database failures, flow control and the session's paused timers."""

from __future__ import annotations

import asyncio
import json
import re

import asyncpg
import pytest
from gw import enqueue

from gateway import results
from gateway.clean import REPLACEMENT, clean_text, fields_json
from gateway.flow_control import FlowControl
from gateway.results import KINDS, ResultWriter, is_data_error
from gateway.smpp import codec
from gateway.smpp import session as s
from gateway.smpp.pdu import BindTransceiver, EnquireLink, EnquireLinkResp, SubmitSm

# -- named rows: field order == the statement's unnest(...) AS t(...) column list -------------------------

_UNNEST = re.compile(r"unnest\((?P<args>[^()]*)\)\s+AS\s+\w+\((?P<cols>[^()]*)\)", re.IGNORECASE | re.DOTALL)


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_row_fields_are_the_sql_columns_in_order(kind: results.Kind) -> None:
    matches = list(_UNNEST.finditer(kind.sql))
    assert len(matches) == 1, f"{kind.name}: expected one unnest(...) AS t(...)"
    columns = tuple(c.strip() for c in matches[0]["cols"].split(","))
    params = [int(n) for n in re.findall(r"\$(\d+)::", matches[0]["args"])]
    assert kind.row._fields == columns
    assert params == list(range(1, len(columns) + 1))  # $1..$n in order, one per field


# -- clean values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain", "plain"),
        ("", ""),
        ("12\x0034", f"12{REPLACEMENT}34"),
        ("\x00\x00", REPLACEMENT * 2),
        ("caf\u00e9 \u00b2", "caf\u00e9 \u00b2"),
        ("a\ud800b", f"a{REPLACEMENT}b"),
        ("emoji \U0001f600", "emoji \U0001f600"),
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean
    clean_text(raw).encode("utf-8")  # always encodable


def test_fields_json_is_jsonb_safe() -> None:
    text = fields_json({"id": "1\x002", "raw": b"\x00\xff", "n": 5, "none": None, "bad": "\ud800"})
    assert "\\u0000" not in text
    assert json.loads(text) == {"id": f"1{REPLACEMENT}2", "raw": "00ff", "n": 5, "none": None, "bad": REPLACEMENT}


@pytest.mark.parametrize(
    ("exc", "data"),
    [
        (asyncpg.exceptions.CharacterNotInRepertoireError("NUL"), True),  # 22021
        (asyncpg.exceptions.NumericValueOutOfRangeError("int"), True),  # 22003
        (asyncpg.exceptions.UniqueViolationError("dup"), True),  # 23505
        (asyncpg.exceptions.CardinalityViolationError("ON CONFLICT twice"), True),  # 21000
        (asyncpg.exceptions.RaiseError("trigger"), True),  # P0001
        (ValueError("cannot encode"), True),
        (OverflowError("too big"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), False),
        (asyncpg.exceptions.AdminShutdownError("shutdown"), False),
        (asyncpg.exceptions.CannotConnectNowError("starting"), False),
        (asyncpg.exceptions.QueryCanceledError("statement timeout"), False),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), False),
        (asyncpg.exceptions.DiskFullError("disk"), False),
        (asyncpg.exceptions.UndefinedTableError("no table"), False),
        (asyncpg.exceptions.InsufficientPrivilegeError("no grant"), False),
        (asyncpg.InterfaceError("another operation is in progress"), False),
        (OSError("connection reset"), False),
        (TimeoutError(), False),
    ],
)
def test_data_errors_are_told_from_database_failures(exc: BaseException, data: bool) -> None:
    assert is_data_error(exc) is data


# -- flow control and the session's timers ------------------------------------------------------------


class _Conn:
    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def test_flow_control_pauses_above_high_resumes_at_low() -> None:
    flow = FlowControl(100)
    a, b = _Conn(), _Conn()
    flow.register(a)
    steps = [(50, False), (100, False), (101, True), (80, True), (51, True), (50, False), (101, True)]
    for level, paused in steps:
        flow.update(level)
        assert (flow.paused, a.paused) == (paused, paused), level
    flow.register(b)  # registered while paused: paused at once
    assert b.paused
    flow.unregister(a)
    flow.update(0)
    assert not b.paused and a.paused  # an unregistered connection is left alone


def test_paused_session_neither_times_out_nor_declares_the_link_dead() -> None:
    # The plain timeout (no enquire_link probe first); the probing session is the next test.
    sess = s.Session(window=2, response_timeout=5.0, enquire_link_interval=10.0, probe_overdue=False)
    sess.bind(BindTransceiver(system_id="x"), 0.0)
    # bind_transceiver_resp, status 0
    sess.receive_data(bytes.fromhex("00000015800000090000000000000001") + b"smsc\x00", 0.0)
    assert sess.is_bound
    sess.send_request(SubmitSm(source_addr="1", destination_addr="2"), 1.0)
    sess.data_to_send()
    sess.pause_timers(2.0)
    assert sess.next_deadline() is None
    assert sess.handle_timer(100.0) == []  # 98 s paused: no timeout, no enquire_link, no LinkDead
    assert sess.data_to_send() == b""
    sess.resume_timers(100.0)
    assert sess.next_deadline() == pytest.approx(6.0 + 98.0)  # the submit's deadline moved by the pause
    assert sess.handle_timer(103.9) == [] and sess.is_bound
    events = sess.handle_timer(104.1)  # due now, as if the pause had not happened
    assert [e.sequence_number for e in events] == [2] and sess.is_bound


def test_paused_probing_session_probes_only_after_the_pause() -> None:
    """The gateway's session (probe_overdue): an overdue submit after a pause is probed, not declared lost."""
    sess = s.Session(window=2, response_timeout=5.0, enquire_link_interval=10.0)
    sess.bind(BindTransceiver(system_id="x"), 0.0)
    sess.receive_data(bytes.fromhex("00000015800000090000000000000001") + b"smsc\x00", 0.0)
    sess.send_request(SubmitSm(source_addr="1", destination_addr="2"), 1.0)
    sess.data_to_send()
    sess.pause_timers(2.0)
    assert sess.handle_timer(100.0) == [] and sess.data_to_send() == b""  # paused: no probe either
    sess.resume_timers(100.0)
    assert sess.handle_timer(104.1) == [] and sess.is_bound  # due: kept in its slot while a probe goes out
    (probe,) = [codec.decode(f) for f in codec.Framer().feed(sess.data_to_send())]
    assert isinstance(probe, EnquireLink)
    assert sess.receive_data(codec.encode(EnquireLinkResp(sequence_number=probe.sequence_number)), 104.2) == []
    events = sess.handle_timer(104.2)  # only timers release submits
    assert [e.sequence_number for e in events] == [2] and sess.is_bound  # read by the SMSC: overdue, not lost


# -- the writer against Postgres ------------------------------------------------------------------------


async def _claimed(pool: asyncpg.Pool, n: int) -> list[int]:
    await enqueue(pool, n)
    await pool.execute("UPDATE outbound_message SET status = 'claimed', claimed_by = 'tok', attempts = 1")
    return [r["id"] for r in await pool.fetch("SELECT id FROM outbound_message ORDER BY id")]


async def test_one_bad_item_is_quarantined_and_the_rest_commit(db_pool: asyncpg.Pool) -> None:
    ids = await _claimed(db_pool, 40)
    writer = ResultWriter(db_pool, flush_interval=0.01, flush_max_rows=10_000)
    acked: list[str] = []
    # All added before the writer starts: one batch, so the bad items meet the good ones in one transaction.
    for i, row_id in enumerate(ids[:30]):
        writer.mark_submitted(row_id, "tok", "sim", f"m{i}", f"m{i}", "b0")
    # A mark whose id Postgres refuses (NUL in text): quarantined, the row settled 'submitted' / invalid_result.
    writer.mark_submitted(ids[30], "tok", "sim", "bad\x00id", "bad\x00id", "b0")
    # A settle whose code does not fit bigint: quarantined, the row settled 'failed' / invalid_result.
    writer.settle(ids[31], "tok", "failed", error_code=2**64, reason="x")
    for row_id in ids[32:]:
        writer.settle(row_id, "tok", "rejected", reason="invalid_row", detail="bad \x00 value")
    for i in range(20):
        writer.receipt("sim", (f"m{i}", None, None), f"m{i}", "delivered", "DELIVRD", None, "delivered",
                       lambda i=i: acked.append(f"r{i}"))
    for i in range(20):
        source = "+1202555\x000" if i == 7 else f"+1202555{i:04d}"  # MO 7: a NUL that got past the edge
        writer.mo_part("sim", source, "12345", 0, 1, 1, 0, 0, f"mo {i}".encode(), lambda i=i: acked.append(f"mo{i}"))
    writer.start()
    try:
        assert await writer.drain(20)
    finally:
        await writer.stop(5)
    assert sorted(acked) == sorted([f"r{i}" for i in range(20)] + [f"mo{i}" for i in range(20)])
    assert await db_pool.fetchval("SELECT count(*) FROM mo_part") == 19
    got = dict(await db_pool.fetch("SELECT status, count(*) FROM outbound_message GROUP BY status"))
    assert got == {"delivered": 20, "submitted": 11, "failed": 1, "rejected": 8}
    bad = await db_pool.fetch(
        "SELECT id, status, reason, detail FROM outbound_message WHERE reason = 'invalid_result' ORDER BY id"
    )
    assert [(r["id"], r["status"]) for r in bad] == [(ids[30], "submitted"), (ids[31], "failed")]
    assert all(r["detail"] for r in bad)
    assert await db_pool.fetchval("SELECT detail FROM outbound_message WHERE id = $1", ids[32]) == "bad \ufffd value"
    q = await db_pool.fetch("SELECT kind, smsc, raw, fields, error FROM quarantine ORDER BY id")
    assert sorted(r["kind"] for r in q) == ["mark", "mo_part", "settle"]
    mo = next(r for r in q if r["kind"] == "mo_part")
    assert mo["raw"] == b"mo 7" and json.loads(mo["fields"])["source"] == "+1202555\ufffd0" and mo["smsc"] == "sim"
    assert "0x00" in mo["error"] or "UTF8" in mo["error"]
    assert writer.pending == 0


async def test_database_failure_retries_the_batch_whole_and_acks_only_after_commit(
    db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = ResultWriter(db_pool, flush_interval=0.01)
    failures = [asyncpg.exceptions.ConnectionDoesNotExistError("gone"), OSError("reset")]
    real = ResultWriter._write_on

    async def flaky(self: ResultWriter, conn: asyncpg.Connection, b: object) -> None:
        if failures:
            raise failures.pop(0)
        await real(self, conn, b)  # type: ignore[arg-type]

    monkeypatch.setattr(ResultWriter, "_write_on", flaky)
    acked: list[int] = []
    for i in range(10):
        writer.mo_part("sim", f"+1202555{i:04d}", "12345", 0, 1, 1, 0, 0, b"x", lambda i=i: acked.append(i))
    writer.start()
    try:
        assert await writer.drain(10)
    finally:
        await writer.stop(5)
    assert failures == [] and acked == list(range(10))
    assert await db_pool.fetchval("SELECT count(*) FROM mo_part") == 10
    assert await db_pool.fetchval("SELECT count(*) FROM quarantine") == 0


async def test_pending_counts_the_flush_under_way_and_pauses_reading(db_pool: asyncpg.Pool) -> None:
    writer = ResultWriter(db_pool, flush_interval=0.01, max_pending=50)
    conn = _Conn()
    writer.flow.register(conn)
    writer.start()
    try:
        async with db_pool.acquire() as locker, locker.transaction():
            await locker.execute("LOCK TABLE mo_part IN ACCESS EXCLUSIVE MODE")
            for _ in range(40):
                writer.mo_part("sim", "+12025550000", "12345", 0, 1, 1, 0, 0, b"x", lambda: None)
            await asyncio.sleep(0.1)  # the writer took these 40 and is blocked on the lock
            assert writer.pending == 40 and not conn.paused
            for _ in range(11):
                writer.mo_part("sim", "+12025550000", "12345", 0, 1, 1, 0, 0, b"x", lambda: None)
            assert writer.pending == 51 and conn.paused
        assert await writer.drain(10)
        assert not conn.paused and writer.pending == 0
    finally:
        await writer.stop(5)
