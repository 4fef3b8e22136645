"""Tables for the decisions of the outbound path, without sockets: what a response means, multi-part accounting,
retry or fail, the send buffer's cap and leases; and `Status` against the SQL CHECK constraint."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from gateway.error_policy import ErrorPolicy
from gateway.message import ClaimedMessage
from gateway.response_outcome import (
    Action,
    Outcome,
    PartGroup,
    response_outcome,
    settle_failure,
)
from gateway.send_buffer import Item, Lease, SendBuffer, buffer_cap
from gateway.smpp.client import ConnectionClosedError, RequestTimeoutError
from gateway.smpp.pdu import DataSmResp, GenericNack, SubmitSm, SubmitSmResp
from gateway.status import Reason, Status

POLICY = ErrorPolicy.from_config({"0x45": "transient"})


@pytest.mark.parametrize(
    ("response", "error", "expected"),
    [
        (SubmitSmResp(message_id="abc"), None, Outcome(Action.ACCEPT, message_id="abc")),
        (None, RequestTimeoutError("x"), Outcome(Action.RETRY, reason=Reason.RESPONSE_TIMEOUT)),
        (None, ConnectionClosedError("x"), Outcome(Action.RETRY, reason=Reason.CONNECTION_LOST, immediate=True)),
        (None, RuntimeError("x"), Outcome(Action.RETRY, reason=Reason.CONNECTION_LOST, immediate=True)),
        (SubmitSmResp(command_status=0x58), None, Outcome(Action.THROTTLE, 0x58, "ESME_RTHROTTLED")),
        (SubmitSmResp(command_status=0x14), None, Outcome(Action.THROTTLE, 0x14, "ESME_RMSGQFUL")),
        (SubmitSmResp(command_status=0x08), None, Outcome(Action.RETRY, 0x08, "ESME_RSYSERR")),
        (SubmitSmResp(command_status=0x0B), None, Outcome(Action.FAIL, 0x0B, "ESME_RINVDSTADR")),
        (SubmitSmResp(command_status=0x45), None, Outcome(Action.RETRY, 0x45, "ESME_RSUBMITFAIL")),  # override
        (SubmitSmResp(command_status=0x04), None,
         Outcome(Action.RETRY, 0x04, "ESME_RINVBNDSTS", immediate=True, rebind=True)),
        (SubmitSmResp(command_status=0xFFFFFFFF), None, Outcome(Action.FAIL, 0xFFFFFFFF, "0xFFFFFFFF")),
        (GenericNack(command_status=0x03), None, Outcome(Action.RETRY, 0x03, "ESME_RINVCMDID", True, True)),
        # status 0 but not a submit_sm_resp: generic_nack -> RUNKNOWNERR, another type -> RSYSERR
        (GenericNack(command_status=0), None, Outcome(Action.RETRY, 0xFF, "ESME_RUNKNOWNERR")),
        (DataSmResp(command_status=0), None, Outcome(Action.RETRY, 0x08, "ESME_RSYSERR")),
    ],
)
def test_response_outcome(response: object, error: BaseException | None, expected: Outcome) -> None:
    assert response_outcome(response, error, POLICY) == expected  # type: ignore[arg-type]


RETRY = Outcome(Action.RETRY, 0x08, "ESME_RSYSERR")
LOST = Outcome(Action.RETRY, None, "connection_lost", immediate=True)
FAIL = Outcome(Action.FAIL, 0x0B, "ESME_RINVDSTADR")


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        # (seq, outcome or None = accepted); expected: None while parts are open, else (action, deciding reason)
        ([(1, None)], None),
        ([(1, None), (2, None)], (Action.ACCEPT, None)),
        ([(2, None), (1, None)], (Action.ACCEPT, None)),
        ([(1, None), (2, RETRY)], (Action.RETRY, "ESME_RSYSERR")),
        ([(2, FAIL), (1, RETRY)], (Action.RETRY, "ESME_RSYSERR")),  # the first failing part by seq decides
        ([(1, FAIL), (2, RETRY)], (Action.FAIL, "ESME_RINVDSTADR")),
        ([(1, LOST), (2, LOST)], (Action.RETRY, "connection_lost")),
    ],
)
def test_part_group_settles_once_every_part_answered(
    events: list[tuple[int, Outcome | None]], expected: tuple[Action, str | None] | None
) -> None:
    group = PartGroup(2)
    result = None
    for seq, outcome in events:
        result = group.accept(seq, f"id{seq}", f"k{seq}") if outcome is None else group.fail(seq, outcome)
    if expected is None:
        assert result is None and not group.settled
        return
    assert result is not None
    assert (result.action, result.deciding.reason if result.deciding else None) == expected
    if result.action is Action.ACCEPT:
        assert result.parts == ((1, "id1", "k1"), (2, "id2", "k2"))
    # Settled once: a late duplicate answer changes nothing.
    assert group.accept(1, "again", "again") is None


@pytest.mark.parametrize(
    ("outcome", "attempts", "expected_status", "expected_reason", "delay"),
    [
        (RETRY, 1, Status.QUEUED, "ESME_RSYSERR", "backoff"),
        (LOST, 1, Status.QUEUED, "connection_lost", 0.0),
        (RETRY, 3, Status.FAILED, "ESME_RSYSERR after 3 attempts", 0.0),
        (LOST, 3, Status.FAILED, "connection_lost after 3 attempts", 0.0),
        (FAIL, 1, Status.FAILED, "ESME_RINVDSTADR", 0.0),
    ],
)
def test_settle_failure(outcome: Outcome, attempts: int, expected_status: Status, expected_reason: str,
                        delay: object) -> None:
    end = settle_failure(outcome, attempts, max_attempts=3, retry_base=2.0, retry_max=300.0)
    assert (end.status, end.reason, end.error_code) == (expected_status, expected_reason, outcome.error_code)
    if delay == "backoff":
        assert 1.6 <= end.delay <= 2.4
    else:
        assert end.delay == delay


@pytest.mark.parametrize(
    ("windows", "rate", "lease", "fraction", "cap"),
    [
        (0, 50, 60, 0.5, 0),  # no bind up: nothing
        (20, 0, 60, 0.5, 20),  # no rate limit: the windows
        (20, 50, 60, 0.5, 20),  # windows smaller than a second of sending
        (200, 50, 60, 0.5, 50),  # at most one second of the rate
        (200, 50, 1, 0.5, 25),  # ... and what the rate sends within half the lease
        (200, 0.5, 10, 0.5, 1),  # never below one row
    ],
)
def test_buffer_cap(windows: int, rate: float, lease: float, fraction: float, cap: int) -> None:
    assert buffer_cap(windows, rate, lease, fraction) == cap


def _item(row_id: int, until: float) -> Item:
    msg = ClaimedMessage(id=row_id, source="12345", destination="+12025550100", body="x", priority=0,
                         message_class="transactional", expires_at=None, attempts=1,
                         created_at=datetime(2024, 1, 1, tzinfo=UTC))
    return Item(msg, Lease(row_id, f"t:{row_id}", until), [(1, SubmitSm(destination_addr="12025550100"))], None, 0.0)


async def test_send_buffer_never_sends_on_a_lease_near_expiry_or_lost() -> None:
    given_back: list[tuple[int, str]] = []
    buf = SendBuffer(10.0, lambda item, reason: given_back.append((item.msg.id, reason)))
    buf.add([_item(1, until=100.0), _item(2, until=101.0), _item(3, until=120.0)])
    buf._held[2].lost = True  # a renewal found row 2 reaped: another claim owns it
    assert buf.held == 3 and len(buf) == 3
    assert [lease.row_id for lease in buf.due(96.0)] == [1]  # less than half the lease left; lost ones never
    item = buf.take(now=99.0)  # row 1 has 1 s left: under the send margin (1.5 s)
    assert item is not None and item.msg.id == 3
    assert given_back == [(1, "lease_renewal")]
    assert buf.held == 1 and len(buf) == 0 and buf.take(now=99.0) is None


def test_status_matches_the_sql_check_constraint() -> None:
    sql = Path(__file__).parent.parent.joinpath("gateway/db/migrations/0001_outbound.sql").read_text()
    match = re.search(r"status\s+text\s+NOT NULL DEFAULT 'queued'\s+CHECK \(status IN \(([^)]*)\)\)", sql)
    assert match is not None
    assert set(re.findall(r"'(\w+)'", match.group(1))) == {s.value for s in Status}


async def test_status_matches_the_check_constraint_of_a_migrated_database(db_pool: asyncpg.Pool) -> None:
    definitions = await db_pool.fetch(
        "SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint"
        " WHERE conrelid = 'outbound_message'::regclass AND contype = 'c'"
    )
    (status_check,) = [r["d"] for r in definitions if "status" in r["d"] and "message_class" not in r["d"]]
    assert set(re.findall(r"'(\w+)'::text", status_check)) == {s.value for s in Status}
    assert {s for s in Status if s.final} == {
        Status.DELIVERED, Status.UNDELIVERABLE, Status.EXPIRED, Status.REJECTED, Status.FAILED
    }
