"""SQL for operations: the status report (status page, `smsgw status`) and the readiness checks.

Rule of this module: read-only statements, each answered from an index or a small table (never a scan of the
whole queue), so that a status page left open, or `smsgw status --watch`, costs the queue nothing. Phone
numbers never leave the database whole: they are masked to the last four digits here.
"""

from __future__ import annotations

from typing import Final

# The start of today in UTC ("today" on the status page and in the CLI is the UTC day, whatever the server's zone).
_MIDNIGHT_UTC: Final = "(date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"

# Every instance's view of each SMSC, as its last heartbeat wrote it; age_s tells a live instance from a dead one.
INSTANCES: Final = """
SELECT instance, smsc, binds_up, binds_total, tps, effective_tps, last_error, last_error_at, last_seen,
       extract(epoch FROM now() - last_seen)::float8 AS age_s
FROM gateway_instance
ORDER BY smsc, instance
"""

# Non-final rows by status, one branch per status so that each is answered from its partial index
# (0001 queue / lease indexes, 0003 submitted index). The oldest queued age counts rows that are due
# (send_after passed): a row scheduled for tomorrow is not late.
QUEUE: Final = """
SELECT 'queued' AS status, count(*)::bigint AS n,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE send_after <= now()))::float8 AS oldest_s
FROM outbound_message WHERE status = 'queued'
UNION ALL
SELECT 'claimed', count(*), NULL FROM outbound_message WHERE status = 'claimed' AND claimed_until IS NOT NULL
UNION ALL
SELECT 'submitted', count(*), extract(epoch FROM now() - min(submitted_at))::float8
FROM outbound_message WHERE status = 'submitted' AND submitted_at IS NOT NULL
"""

# Final rows since midnight UTC by status (0007 done index).
FINAL_TODAY: Final = f"""
SELECT status, count(*)::bigint AS n FROM outbound_message
WHERE done_at IS NOT NULL AND done_at >= {_MIDNIGHT_UTC}
GROUP BY status
"""

# $1 how many. The newest rows that ended without delivery (0007 failed index), the number masked.
LAST_ERRORS: Final = """
SELECT id, done_at, status, reason, error_code, smsc, bind_name,
       CASE WHEN length(destination) > 4 THEN '…' || right(destination, 4) ELSE '…' END AS destination
FROM outbound_message
WHERE status IN ('failed', 'undeliverable', 'rejected', 'expired') AND done_at IS NOT NULL
ORDER BY done_at DESC
LIMIT $1
"""

# Counts that are not about outbound rows: parked receipts (small table), consent and quarantine since midnight.
COUNTS: Final = f"""
SELECT (SELECT count(*) FROM pending_receipt)::bigint AS receipts_parked,
       (SELECT count(*) FROM consent_event
        WHERE action = 'opt_out' AND created_at >= {_MIDNIGHT_UTC})::bigint AS opt_outs_today,
       (SELECT count(*) FROM consent_event
        WHERE action = 'opt_in' AND created_at >= {_MIDNIGHT_UTC})::bigint AS opt_ins_today,
       (SELECT count(*) FROM quarantine WHERE received_at >= {_MIDNIGHT_UTC})::bigint AS quarantined_today,
       now() AS now
"""

# Readiness: the database answers and which migrations it has (compared with the shipped files in Python).
APPLIED_MIGRATIONS: Final = "SELECT version, name FROM schema_migrations"
