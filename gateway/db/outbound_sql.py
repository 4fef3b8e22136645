"""Every SQL statement of the outbound queue, in one place.

Rules (measured in shared/postgres-queue.md): the claim's ORDER BY equals the queue index; every write
of a claimed row is fenced by its claim token; hot-path writes are `unnest` batches, never one row
per statement; no transaction is held open between statements.
"""

from __future__ import annotations

# $1 claim token, $2 lease seconds, $3 limit, $4 smsc name
CLAIM = """
UPDATE outbound_message m
SET status = 'claimed', claimed_by = $1, claimed_until = now() + make_interval(secs => $2),
    attempts = m.attempts + 1, smsc = $4, updated_at = now()
WHERE m.id IN (
    SELECT id FROM outbound_message
    WHERE status = 'queued' AND send_after <= now()
    ORDER BY priority DESC, send_after, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING m.id, m.source, m.destination, m.body, m.priority, m.message_class, m.expires_at, m.attempts,
          m.created_at, m.list_name, m.is_opt_out_confirmation
"""

# Successful submit_sm_resp. Receipts parked before the mark (DLR-before-resp race) are consumed here.
MARK_SUBMITTED = """
WITH i AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
        AS t(id, token, smsc, message_id, msgid_key, bind_name)
), parked AS (
    DELETE FROM pending_receipt p USING i
    WHERE p.smsc = i.smsc AND p.msgid_key = i.msgid_key
    RETURNING p.smsc, p.msgid_key, p.status, p.receipt_stat, p.error_code, p.reason
)
UPDATE outbound_message m
SET status = COALESCE(parked.status, 'submitted'),
    smsc_message_id = i.message_id, smsc_msgid_key = i.msgid_key, bind_name = i.bind_name,
    submitted_at = now(), claimed_by = NULL, claimed_until = NULL,
    receipt_stat = parked.receipt_stat,
    error_code = parked.error_code,
    reason = parked.reason,
    done_at = CASE WHEN parked.status IS NULL THEN NULL ELSE now() END,
    updated_at = now()
FROM i LEFT JOIN parked ON parked.smsc = i.smsc AND parked.msgid_key = i.msgid_key
WHERE m.id = i.id AND m.claimed_by = i.token AND m.status = 'claimed'
"""

# Anything else that ends a claim: back to the queue after a delay (retry, release) or a final status.
SETTLE = """
UPDATE outbound_message m
SET status = i.status,
    send_after = CASE WHEN i.status = 'queued' THEN now() + make_interval(secs => i.delay) ELSE m.send_after END,
    attempts = m.attempts + i.attempts_delta,
    error_code = i.error_code,
    reason = i.reason,
    bind_name = COALESCE(i.bind_name, m.bind_name),
    done_at = CASE WHEN i.status = 'queued' THEN NULL ELSE now() END,
    claimed_by = NULL, claimed_until = NULL, updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[], $5::int[], $6::text[], $7::int[], $8::text[])
    AS i(id, token, status, delay, error_code, reason, attempts_delta, bind_name)
WHERE m.id = i.id AND m.claimed_by = i.token AND m.status = 'claimed'
"""

# Final receipts: update the submitted row, or park the receipt when no row carries that id yet.
RECORD_RECEIPTS = """
WITH i AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[])
        AS t(smsc, msgid_key, message_id, status, receipt_stat, error_code, reason)
), upd AS (
    UPDATE outbound_message m
    SET status = i.status, receipt_stat = i.receipt_stat, error_code = i.error_code, reason = i.reason,
        done_at = now(), updated_at = now()
    FROM i
    WHERE m.smsc = i.smsc AND m.smsc_msgid_key = i.msgid_key AND m.status = 'submitted'
    RETURNING m.id
)
INSERT INTO pending_receipt (smsc, msgid_key, message_id, status, receipt_stat, error_code, reason)
SELECT i.smsc, i.msgid_key, i.message_id, i.status, i.receipt_stat, i.error_code, i.reason
FROM i
WHERE NOT EXISTS (
    SELECT 1 FROM outbound_message m WHERE m.smsc = i.smsc AND m.smsc_msgid_key = i.msgid_key
)
"""

# Re-sent parts of a concatenated MO (same identity, not yet assembled) are stored once.
INSERT_MO_PARTS = """
INSERT INTO mo_part (smsc, source, destination, ref, total, seq, data_coding, esm_class, payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::smallint[], $6::smallint[],
                     $7::smallint[], $8::smallint[], $9::bytea[])
ON CONFLICT (smsc, source, destination, ref, total, seq) WHERE total > 1 DO NOTHING
"""

INSERT_INBOUND = """
INSERT INTO inbound_message (smsc, source, destination, body, data_coding, esm_class, raw_short_message)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::smallint[], $7::bytea[])
"""

# -- maintenance (every few seconds, on every instance) ---------------------------------------------------

# $1 max attempts. A lease that ran out belongs to a dead or stuck worker.
REAP_LEASES = """
UPDATE outbound_message
SET status = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END,
    reason = CASE WHEN attempts >= $1 THEN 'lease_expired_max_attempts' ELSE 'lease_expired' END,
    done_at = CASE WHEN attempts >= $1 THEN now() END,
    claimed_by = NULL, claimed_until = NULL, updated_at = now()
WHERE claimed_until < now() AND status = 'claimed'
"""

EXPIRE_QUEUED = """
UPDATE outbound_message
SET status = 'expired', reason = 'expired_before_submit', done_at = now(), updated_at = now()
WHERE status = 'queued' AND expires_at IS NOT NULL AND expires_at < now()
"""

# Receipts parked when their mark was in flight in another transaction (neither saw the other).
SWEEP_PARKED = """
WITH matched AS (
    DELETE FROM pending_receipt p
    USING outbound_message m
    WHERE m.smsc = p.smsc AND m.smsc_msgid_key = p.msgid_key
    RETURNING m.id AS row_id, p.status, p.receipt_stat, p.error_code, p.reason
)
UPDATE outbound_message m
SET status = matched.status, receipt_stat = matched.receipt_stat, error_code = matched.error_code,
    reason = matched.reason, done_at = now(), updated_at = now()
FROM matched
WHERE m.id = matched.row_id AND m.status = 'submitted'
"""

# $1 days
DROP_OLD_PARKED = """
DELETE FROM pending_receipt WHERE received_at < now() - make_interval(days => $1::int)
"""

# $1 instance, $2 SMSC names, $3 seconds after which an instance that stopped beating counts as gone.
HEARTBEAT = """
WITH beat AS (
    INSERT INTO gateway_instance (instance, smsc, last_seen)
    SELECT $1, s, now() FROM unnest($2::text[]) AS s
    ON CONFLICT (instance, smsc) DO UPDATE SET last_seen = now()
)
SELECT smsc, count(*) + CASE WHEN bool_or(instance = $1) THEN 0 ELSE 1 END AS live
FROM gateway_instance
WHERE last_seen > now() - make_interval(secs => $3) AND smsc = ANY($2::text[])
GROUP BY smsc
"""

DROP_STALE_INSTANCES = "DELETE FROM gateway_instance WHERE last_seen < now() - interval '1 day'"

LEAVE_INSTANCE = "DELETE FROM gateway_instance WHERE instance = $1"

QUEUE_DEPTH = """
SELECT status, count(*) FROM outbound_message
WHERE status IN ('queued', 'claimed', 'submitted') GROUP BY status
"""

LISTEN_CHANNEL = "smsgw_outbound"
INBOUND_CHANNEL = "smsgw_inbound"
