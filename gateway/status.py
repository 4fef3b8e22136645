"""The statuses of an outbound row and the machine-readable reasons the gateway writes with them.

Rule of this module: every status and every fixed reason the gateway writes is a member here; a test checks
`Status` against the SQL CHECK constraint, so the table contract and the code cannot drift apart. Reasons
that carry an SMSC value (a command_status name, a receipt stat) are built by the functions below from a
fixed prefix, never free text.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """`outbound_message.status`: queued -> claimed -> submitted -> one of the final statuses."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self not in (Status.QUEUED, Status.CLAIMED, Status.SUBMITTED)


class Reason(StrEnum):
    """Fixed values of `outbound_message.reason` (the gateway's own; SMSC-derived ones are built below)."""

    # refused before sending
    INVALID_ROW = "invalid_row"
    EMPTY_BODY = "empty_body"
    INVALID_SOURCE = "invalid_source"
    INVALID_DESTINATION = "invalid_destination"
    TOO_LONG = "too_long"
    UNENCODABLE_BODY = "unencodable_body"
    EXPIRED_BEFORE_SUBMIT = "expired_before_submit"
    OPTED_OUT = "opted_out"
    NOT_SUBSCRIBED = "not_subscribed"
    NO_ROUTE = "no_route"
    # back to the queue (not failures)
    NO_SMSC_AVAILABLE = "no_smsc_available"
    SMSC_BUSY = "smsc_busy"  # its SMSC's buffer is full: the row waits in the queue, not in memory
    SMSC_DOWN = "smsc_down"
    QUIET_HOURS = "quiet_hours"
    FREQUENCY_CAP = "frequency_cap"  # a list's max_per_day / max_per_week: queued until allowed, or rejected
    RELEASED_ON_SHUTDOWN = "released_on_shutdown"
    CLAIM_FAILED = "claim_failed"
    CLAIM_CANCELLED = "claim_cancelled"
    LEASE_RENEWAL = "lease_renewal"
    CONSENT_CHANGED = "consent_changed"
    # send outcomes
    RESPONSE_TIMEOUT = "response_timeout"
    CONNECTION_LOST = "connection_lost"
    ENCODE_ERROR = "encode_error"
    DELIVERED = "delivered"
    # a submit result Postgres refused (quarantined; the row is settled with the error in `detail`)
    INVALID_RESULT = "invalid_result"
    # maintenance
    LEASE_EXPIRED = "lease_expired"
    LEASE_EXPIRED_MAX_ATTEMPTS = "lease_expired_max_attempts"
    NO_RECEIPT_WITHIN_TIMEOUT = "no_receipt_within_timeout"
    # operator actions (smsgw message cancel / retry)
    CANCELLED = "cancelled"  # status rejected: a queued row an operator withdrew
    MANUAL_RETRY = "manual_retry"  # status queued: a final row an operator queued again (the old state in detail)
    # content checks before sending (gateway/content.py: content_<rule>; what matched is in `detail`)
    CONTENT_PROGRAM_NAME = "content_program_name"
    CONTENT_OPT_OUT = "content_opt_out"
    CONTENT_LINK_SHORTENER = "content_link_shortener"
    CONTENT_SHAFT = "content_shaft"
    CONTENT_MAX_SEGMENTS = "content_max_segments"
    # personalised templates (rendered at insert by 0012's trigger; the names are in `detail`)
    TEMPLATE_VARIABLE_MISSING = "template_variable_missing"
    TEMPLATE_UNKNOWN = "template_unknown"
