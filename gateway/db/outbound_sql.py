"""Every SQL statement of the outbound queue, in one place.

Rules (measured in shared/postgres-queue.md): the claim's ORDER BY equals the queue index; every write
of a claimed row is fenced by its claim token; hot-path writes are `unnest` batches, never one row
per statement; no transaction is held open between statements.
"""

from __future__ import annotations

# $1 claim token, $2 lease seconds, $3 limit. The router picks the SMSC afterwards; marks and settles record it.
CLAIM = """
UPDATE outbound_message m
SET status = 'claimed', claimed_by = $1, claimed_until = now() + make_interval(secs => $2),
    attempts = m.attempts + 1, updated_at = now()
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
    smsc = i.smsc, smsc_message_id = i.message_id, smsc_msgid_key = i.msgid_key, bind_name = i.bind_name,
    submitted_at = now(), claimed_by = NULL, claimed_until = NULL,
    receipt_stat = parked.receipt_stat,
    error_code = parked.error_code,
    reason = parked.reason,
    done_at = CASE WHEN parked.status IS NULL THEN NULL ELSE now() END,
    updated_at = now()
FROM i LEFT JOIN parked ON parked.smsc = i.smsc AND parked.msgid_key = i.msgid_key
WHERE m.id = i.id AND m.claimed_by = i.token AND m.status = 'claimed'
"""

# The outcome of multi-part messages from the states of their parts ({parts}: message_id, seq, status,
# receipt_stat, error_code, reason): final when no part is still 'submitted'; delivered when every part is,
# else the first failing part (by seq) decides. One rule for the mark and for receipts.
_PART_OUTCOMES = """
    SELECT message_id, bool_and(status <> 'submitted') AS all_done,
           (array_agg(status ORDER BY seq) FILTER (WHERE failing))[1] AS fail_status,
           (array_agg(receipt_stat ORDER BY seq) FILTER (WHERE failing))[1] AS fail_stat,
           (array_agg(error_code ORDER BY seq) FILTER (WHERE failing))[1] AS fail_code,
           (array_agg(reason ORDER BY seq) FILTER (WHERE failing))[1] AS fail_reason
    FROM (SELECT *, status NOT IN ('submitted', 'delivered') AS failing FROM ({parts}) y) x
    GROUP BY message_id"""

# All parts of a multi-part message accepted: one row per part (receipts parked before are consumed), and the
# message is 'submitted' (or final at once, when every part's receipt was already parked).
MARK_PARTS_SUBMITTED = """
WITH i AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::smallint[], $5::smallint[], $6::text[],
                         $7::text[], $8::text[])
        AS t(id, token, smsc, seq, total, message_id, msgid_key, bind_name)
), fenced AS (
    SELECT i.* FROM i JOIN outbound_message m ON m.id = i.id AND m.claimed_by = i.token AND m.status = 'claimed'
), parked AS (
    DELETE FROM pending_receipt p USING fenced f
    WHERE p.smsc = f.smsc AND p.msgid_key = f.msgid_key
    RETURNING p.smsc, p.msgid_key, p.status, p.receipt_stat, p.error_code, p.reason
), parts AS (
    INSERT INTO message_part AS mp (message_id, seq, total, smsc, smsc_message_id, smsc_msgid_key, status,
                                    receipt_stat, error_code, reason, done_at)
    SELECT f.id, f.seq, f.total, f.smsc, f.message_id, f.msgid_key, coalesce(pk.status, 'submitted'),
           pk.receipt_stat, pk.error_code, pk.reason, CASE WHEN pk.status IS NULL THEN NULL ELSE now() END
    FROM fenced f LEFT JOIN parked pk ON pk.smsc = f.smsc AND pk.msgid_key = f.msgid_key
    -- A retried message replaces the parts of its earlier attempt.
    ON CONFLICT (message_id, seq) DO UPDATE
        SET smsc = EXCLUDED.smsc, smsc_message_id = EXCLUDED.smsc_message_id,
            smsc_msgid_key = EXCLUDED.smsc_msgid_key, status = EXCLUDED.status,
            receipt_stat = EXCLUDED.receipt_stat, error_code = EXCLUDED.error_code, reason = EXCLUDED.reason,
            submitted_at = now(), done_at = EXCLUDED.done_at
    RETURNING mp.message_id, mp.seq, mp.status, mp.receipt_stat, mp.error_code, mp.reason
), agg AS (
""" + _PART_OUTCOMES.format(parts="SELECT message_id, seq, status, receipt_stat, error_code, reason FROM parts") + """
)
UPDATE outbound_message m
SET status = CASE WHEN a.all_done THEN coalesce(a.fail_status, 'delivered') ELSE 'submitted' END,
    receipt_stat = CASE WHEN a.all_done THEN coalesce(a.fail_stat, 'DELIVRD') END,
    error_code = CASE WHEN a.all_done THEN a.fail_code END,
    reason = CASE WHEN a.all_done THEN coalesce(a.fail_reason, 'delivered') END,
    done_at = CASE WHEN a.all_done THEN now() END,
    smsc = f.smsc, smsc_message_id = f.message_id, bind_name = f.bind_name, parts = f.total,
    submitted_at = now(), claimed_by = NULL, claimed_until = NULL, updated_at = now()
FROM agg a JOIN fenced f ON f.id = a.message_id AND f.seq = 1
WHERE m.id = a.message_id
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
    smsc = COALESCE(i.smsc, m.smsc),
    done_at = CASE WHEN i.status = 'queued' THEN NULL ELSE now() END,
    claimed_by = NULL, claimed_until = NULL, updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[], $5::int[], $6::text[], $7::int[], $8::text[],
            $9::text[])
    AS i(id, token, status, delay, error_code, reason, attempts_delta, bind_name, smsc)
WHERE m.id = i.id AND m.claimed_by = i.token AND m.status = 'claimed'
"""

# Final receipts: update the submitted single-part row, or the part of a multi-part message (which is final
# when all its parts are: delivered, or the first failing part's outcome), or park the receipt when no row
# carries that id yet. A CTE does not see another CTE's updates, so the aggregate joins the new part states in.
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
), part AS (
    UPDATE message_part p
    SET status = i.status, receipt_stat = i.receipt_stat, error_code = i.error_code, reason = i.reason, done_at = now()
    FROM i
    WHERE p.smsc = i.smsc AND p.smsc_msgid_key = i.msgid_key AND p.status = 'submitted'
    RETURNING p.message_id, p.seq, p.status, p.receipt_stat, p.error_code, p.reason
), agg AS (
""" + _PART_OUTCOMES.format(parts="""
        SELECT p.message_id, p.seq, coalesce(n.status, p.status) AS status,
               coalesce(n.receipt_stat, p.receipt_stat) AS receipt_stat,
               coalesce(n.error_code, p.error_code) AS error_code, coalesce(n.reason, p.reason) AS reason
        FROM message_part p LEFT JOIN part n ON n.message_id = p.message_id AND n.seq = p.seq
        WHERE p.message_id IN (SELECT message_id FROM part)""") + """
), done AS (
    UPDATE outbound_message m
    SET status = coalesce(a.fail_status, 'delivered'), receipt_stat = coalesce(a.fail_stat, 'DELIVRD'),
        error_code = a.fail_code, reason = coalesce(a.fail_reason, 'delivered'), done_at = now(), updated_at = now()
    FROM agg a
    WHERE m.id = a.message_id AND a.all_done AND m.status = 'submitted'
    RETURNING m.id
)
INSERT INTO pending_receipt (smsc, msgid_key, message_id, status, receipt_stat, error_code, reason)
SELECT i.smsc, i.msgid_key, i.message_id, i.status, i.receipt_stat, i.error_code, i.reason
FROM i
WHERE NOT EXISTS (SELECT 1 FROM outbound_message m WHERE m.smsc = i.smsc AND m.smsc_msgid_key = i.msgid_key)
  AND NOT EXISTS (SELECT 1 FROM message_part p WHERE p.smsc = i.smsc AND p.smsc_msgid_key = i.msgid_key)
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

# $1 seconds. A submitted row whose receipt never came (the SMSC lost it, or sends none) ends here.
EXPIRE_SUBMITTED = """
UPDATE outbound_message
SET status = 'expired', reason = 'no_receipt_within_timeout', done_at = now(), updated_at = now()
WHERE status = 'submitted' AND submitted_at < now() - make_interval(secs => $1)
"""

EXPIRE_QUEUED = """
UPDATE outbound_message
SET status = 'expired', reason = 'expired_before_submit', done_at = now(), updated_at = now()
WHERE status = 'queued' AND expires_at IS NOT NULL AND expires_at < now()
"""

# Receipts parked when their mark was in flight in another transaction (neither saw the other): taken out
# here and recorded again with RECORD_RECEIPTS in the same transaction.
TAKE_MATCHABLE_PARKED = """
DELETE FROM pending_receipt p
WHERE EXISTS (SELECT 1 FROM outbound_message m WHERE m.smsc = p.smsc AND m.smsc_msgid_key = p.msgid_key)
   OR EXISTS (SELECT 1 FROM message_part mp WHERE mp.smsc = p.smsc AND mp.smsc_msgid_key = p.msgid_key)
RETURNING smsc, msgid_key, message_id, status, receipt_stat, error_code, reason
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
