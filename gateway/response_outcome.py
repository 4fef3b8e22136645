"""What the answer to one submit_sm means for its message: accepted, throttled, retried, failed, re-bind.

Rule of this module: decisions only, no I/O, no clock, no writer. The dispatcher turns each decision into
one writer call (or a resend); the tables in tests/test_response_outcome.py pin every branch. A multi-part
message is settled once, when every part has answered: all accepted -> submitted; else the first failing
part (by seq) decides between a retry of the whole message and a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gateway.error_policy import ErrorClass, ErrorPolicy, backoff
from gateway.smpp.client import RequestTimeoutError
from gateway.smpp.pdu import GenericNack, Pdu, SubmitSmResp
from gateway.status import Reason, Status

# A response with status 0 that is no submit_sm_resp: generic_nack -> ESME_RUNKNOWNERR, else ESME_RSYSERR.
_NACK_WITHOUT_STATUS = 0xFF
_WRONG_RESPONSE_TYPE = 0x08


class Action(StrEnum):
    ACCEPT = "accept"  # the SMSC has the part: record its message id
    THROTTLE = "throttle"  # not a failure: slow the account down and send the same part again
    RETRY = "retry"  # send the message again later (or fail it past max attempts)
    FAIL = "fail"  # permanent: the message ends failed


@dataclass(frozen=True, slots=True)
class Outcome:
    """The meaning of one response (or of its absence)."""

    action: Action
    error_code: int | None = None
    reason: str = ""
    immediate: bool = False  # retry at once: the link failed, not the message
    rebind: bool = False  # the bind itself is wrong: close it (the message is fine)
    message_id: str = ""


def response_outcome(response: Pdu | None, error: BaseException | None, policy: ErrorPolicy) -> Outcome:
    """Classify the result of one submit_sm future: its response PDU, or the exception it failed with."""
    if error is not None or response is None:
        if isinstance(error, RequestTimeoutError):
            # Ambiguous: the SMSC may have the message. The attempt is recorded; retry within max_attempts.
            return Outcome(Action.RETRY, reason=Reason.RESPONSE_TIMEOUT)
        # The link died (ConnectionClosedError, or anything unforeseen): send again at once on another bind.
        return Outcome(Action.RETRY, reason=Reason.CONNECTION_LOST, immediate=True)
    status = response.command_status
    if status == 0 and isinstance(response, SubmitSmResp):
        return Outcome(Action.ACCEPT, message_id=response.message_id)
    if status == 0:
        status = _NACK_WITHOUT_STATUS if isinstance(response, GenericNack) else _WRONG_RESPONSE_TYPE
    kind = policy.classify(status)
    reason = policy.describe(status)
    if kind is ErrorClass.THROTTLE:
        return Outcome(Action.THROTTLE, error_code=status, reason=reason)
    if kind is ErrorClass.SESSION:
        return Outcome(Action.RETRY, error_code=status, reason=reason, immediate=True, rebind=True)
    if kind is ErrorClass.PERMANENT:
        return Outcome(Action.FAIL, error_code=status, reason=reason)
    return Outcome(Action.RETRY, error_code=status, reason=reason)


@dataclass(slots=True)
class PartGroup:
    """Outcome of each part of a multi-part message; the row is settled once every part has answered."""

    total: int
    accepted: dict[int, tuple[str, str]] = field(default_factory=dict)  # seq -> (message id, key)
    failed: dict[int, Outcome] = field(default_factory=dict)  # seq -> why it was not accepted
    settled: bool = False

    @property
    def untouched(self) -> bool:
        """No part has been answered or given up yet."""
        return not self.accepted and not self.failed

    def accept(self, seq: int, message_id: str, key: str) -> GroupOutcome | None:
        self.accepted[seq] = (message_id, key)
        return self._outcome()

    def fail(self, seq: int, outcome: Outcome) -> GroupOutcome | None:
        self.failed[seq] = outcome
        return self._outcome()

    def _outcome(self) -> GroupOutcome | None:
        if self.settled or len(self.accepted) + len(self.failed) < self.total:
            return None
        self.settled = True
        if not self.failed:
            return GroupOutcome(Action.ACCEPT, None, tuple((s, m, k) for s, (m, k) in sorted(self.accepted.items())))
        # The first failing part decides: a permanent error fails the message, else it is sent again whole.
        return GroupOutcome(self.failed[min(self.failed)].action, self.failed[min(self.failed)], ())


@dataclass(frozen=True, slots=True)
class GroupOutcome:
    """A multi-part message with every part answered: ACCEPT (with each part's ids), RETRY or FAIL."""

    action: Action
    deciding: Outcome | None
    parts: tuple[tuple[int, str, str], ...]


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a claim ends that was not accepted: back to the queue after `delay`, or a final status."""

    status: Status
    delay: float
    error_code: int | None
    reason: str


def settle_failure(
    outcome: Outcome, attempts: int, *, max_attempts: int, retry_base: float, retry_max: float
) -> Settlement:
    """Retry (with back-off, or at once when the link failed) within `max_attempts`, else fail."""
    if outcome.action is Action.FAIL:
        return Settlement(Status.FAILED, 0.0, outcome.error_code, outcome.reason)
    if attempts >= max_attempts:
        return Settlement(Status.FAILED, 0.0, outcome.error_code, f"{outcome.reason} after {attempts} attempts")
    delay = 0.0 if outcome.immediate else backoff(max(1, attempts), base=retry_base, cap=retry_max)
    return Settlement(Status.QUEUED, delay, outcome.error_code, outcome.reason)
