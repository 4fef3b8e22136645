"""Every SQL statement of the outbound queue, in one place.

Rules (measured in shared/postgres-queue.md): the claim's ORDER BY equals the queue index; every write
of a claimed row is fenced by its claim token; hot-path writes are `unnest` batches, never one row
per statement; no transaction is held open between statements.

Plans must not depend on the queue's column statistics. Its status mix changes within seconds and the
statistics lag: analysed just after a broadcast is enqueued, they say no row is claimed or submitted. A constant
condition on the written table (`m.status = 'submitted'`) is then estimated at one row, and the planner put
outbound_message on the outer side of a nested loop and scanned the whole batch once per row (a 6,400-receipt
flush took 13.5 s), or scanned the whole table for every batch of marks. So in a batched write, every condition
on the written table is a join clause with the batch: its id and claim token, and the states and time limit of
the one-row `_GUARD` CTE, which MATERIALIZED hides from the planner. A key lookup per batch row is a scalar
subquery (`... LIMIT 1`), which the planner cannot turn into a scan of the whole table the way it may hash an
EXISTS. tests/test_plans.py checks each plan on statistics taken while every row was queued.
"""

from __future__ import annotations

# The states and the receipt window a batched write checks, as columns (see the module docstring). {since}: the
# parameter holding the receipt timeout in seconds, or NULL where no window applies.
_GUARD = """guard AS MATERIALIZED (
    SELECT 'claimed'::text AS claimed, 'submitted'::text AS submitted,
           now() - make_interval(secs => {since}) AS since
)"""

# $1 claim token, $2 lease seconds, $3 limit. The router picks the SMSC afterwards; marks and settles record it.
# `= ANY(ARRAY(...))`, not `IN (...)`: a generic plan does not know $3 and counts on a tenth of the table, so it
# joined the chosen ids to the table by hashing them and reading the whole table, every claim; an array of ids
# can only be looked up by primary key.
_CLAIM = """
UPDATE outbound_message m
SET status = 'claimed', claimed_by = $1, claimed_until = now() + make_interval(secs => $2),
    attempts = m.attempts + 1, updated_at = now()
WHERE m.id = ANY(ARRAY(
    SELECT id FROM outbound_message
    WHERE status = 'queued' AND send_after <= now(){excluding}
    ORDER BY priority DESC, send_after, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
))
RETURNING m.id, m.source, m.destination, m.body, m.priority, m.message_class,
          -- Timestamps a producer wrote are clamped to what Python can hold (asyncpg fails a whole fetch on a
          -- year past 9999 or BC, and returns 'infinity' as a naive datetime.max): 'infinity' and the far
          -- future mean never (NULL), '-infinity' and the distant past mean long expired.
          CASE WHEN m.expires_at >= '9000-01-01' THEN NULL
               WHEN m.expires_at < '1971-01-01' THEN timestamptz '1970-01-01 00:00+00'
               ELSE m.expires_at END AS expires_at,
          m.attempts,
          least(greatest(m.created_at, timestamptz '1970-01-01 00:00+00'), timestamptz '9000-01-01 00:00+00')
              AS created_at,
          m.list_name, m.is_opt_out_confirmation, m.inbound_message_id
"""
CLAIM = _CLAIM.format(excluding="")
# The same, leaving queued the rows the router knows belong to an SMSC whose buffer is full: $4-$6 (prefix,
# source or NULL, message_class or NULL), an E.164 destination '+<prefix>...' of a prefix route (see
# Router.blocked_rules). Only used while some SMSC is full, so the usual claim pays nothing for it.
CLAIM_EXCLUDING = _CLAIM.format(excluding="""
      AND NOT EXISTS (
          SELECT 1 FROM unnest($4::text[], $5::text[], $6::text[]) AS b(prefix, source, message_class)
          WHERE outbound_message.destination LIKE '+' || b.prefix || '%'
            AND (b.source IS NULL OR btrim(outbound_message.source) = b.source)
            AND (b.message_class IS NULL OR outbound_message.message_class = b.message_class))""")

# $1 ids, $2 their claim tokens, $3 lease seconds. Rows still held by a dispatcher (buffered, being sent, awaiting
# their response) keep their claim; a row no longer claimed with that token is not returned (it is not ours).
RENEW_LEASES = """
WITH """ + _GUARD.format(since="NULL") + """
UPDATE outbound_message m
SET claimed_until = now() + make_interval(secs => $3)
FROM unnest($1::bigint[], $2::text[]) AS i(id, token), guard g
WHERE m.id = i.id AND m.claimed_by = i.token AND m.status = g.claimed
RETURNING m.id
"""

# Parked receipts a batch of marks ({marks}, each identified by {mark}) consumes (the DLR-before-resp race): a
# receipt parked within {window} seconds, naming the mark's key under any of its candidate keys, the id as
# written first. Each receipt goes to one mark and each mark takes at most one receipt (two parked copies of one
# receipt would otherwise hit one ON CONFLICT row twice); a copy left over is taken by the sweeper and finds its
# row already final. Older parked receipts (kept for days) never match a mark: the id may be a later message's.
_TAKE_PARKED = """
cand AS (
    SELECT {x_mark}, p.id AS pid, 0 AS rank FROM {marks} x
    JOIN pending_receipt p ON p.smsc = x.smsc AND p.msgid_key = x.msgid_key
    WHERE p.received_at > now() - make_interval(secs => {window})
    UNION ALL
    SELECT {x_mark}, p.id, 1 FROM {marks} x
    JOIN pending_receipt p ON p.smsc = x.smsc AND p.alt_key1 = x.msgid_key
    WHERE p.received_at > now() - make_interval(secs => {window})
    UNION ALL
    SELECT {x_mark}, p.id, 2 FROM {marks} x
    JOIN pending_receipt p ON p.smsc = x.smsc AND p.alt_key2 = x.msgid_key
    WHERE p.received_at > now() - make_interval(secs => {window})
), best AS (
    SELECT DISTINCT ON ({mark}) {mark}, pid FROM (
        SELECT DISTINCT ON (pid) {mark}, pid, rank FROM cand ORDER BY pid, rank, {mark}
    ) one_mark_per_receipt
    ORDER BY {mark}, rank, pid
), parked AS (
    DELETE FROM pending_receipt p USING best b
    WHERE p.id = b.pid
    RETURNING {b_mark}, p.status, p.receipt_stat, p.error_code, p.reason
)"""


def _take_parked(marks: str, window: str, mark: tuple[str, ...]) -> str:
    """_TAKE_PARKED for marks in CTE `marks` identified by the columns `mark`; `parked` returns them as mark_<col>."""
    return _TAKE_PARKED.format(
        marks=marks,
        window=window,
        mark=", ".join(mark),
        x_mark=", ".join(f"x.{col}" for col in mark),
        b_mark=", ".join(f"b.{col} AS mark_{col}" for col in mark),
    )


# Successful submit_sm_resp; $7 parked-receipt match window (seconds). Receipts parked before the mark
# (DLR-before-resp race) are consumed here.
MARK_SUBMITTED = """
WITH i AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
        AS t(id, token, smsc, message_id, msgid_key, bind_name)
), """ + _GUARD.format(since="NULL") + """, """ + _take_parked("i", "$7", ("id",)) + """
UPDATE outbound_message m
SET status = COALESCE(parked.status, 'submitted'),
    smsc = i.smsc, smsc_message_id = i.message_id, smsc_msgid_key = i.msgid_key, bind_name = i.bind_name,
    submitted_at = now(), claimed_by = NULL, claimed_until = NULL,
    receipt_stat = parked.receipt_stat,
    error_code = parked.error_code,
    reason = parked.reason,
    done_at = CASE WHEN parked.status IS NULL THEN NULL ELSE now() END,
    updated_at = now()
FROM i CROSS JOIN guard g LEFT JOIN parked ON parked.mark_id = i.id
WHERE m.id = i.id AND m.claimed_by = i.token AND m.status = g.claimed
"""

# The outcome of multi-part messages from the states of their parts ({parts}: message_id, seq, status,
# receipt_stat, error_code, reason): final when no part is still 'submitted'; delivered when every part is,
# else the first failing part (by seq) decides. One rule for the mark and for receipts. {first}: more aggregates.
_PART_OUTCOMES = """
    SELECT message_id,{first} bool_and(status <> 'submitted') AS all_done,
           (array_agg(status ORDER BY seq) FILTER (WHERE failing))[1] AS fail_status,
           (array_agg(receipt_stat ORDER BY seq) FILTER (WHERE failing))[1] AS fail_stat,
           (array_agg(error_code ORDER BY seq) FILTER (WHERE failing))[1] AS fail_code,
           (array_agg(reason ORDER BY seq) FILTER (WHERE failing))[1] AS fail_reason
    FROM (SELECT *, status NOT IN ('submitted', 'delivered') AS failing FROM ({parts}) y) x
    GROUP BY message_id"""

# All parts of a multi-part message accepted: one row per part (receipts parked before are consumed), and the
# message is 'submitted' (or final at once, when every part's receipt was already parked). $9: parked-receipt
# match window (seconds).
MARK_PARTS_SUBMITTED = """
WITH i AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::smallint[], $5::smallint[], $6::text[],
                         $7::text[], $8::text[])
        AS t(id, token, smsc, seq, total, message_id, msgid_key, bind_name)
), """ + _GUARD.format(since="NULL") + """, fenced AS (
    SELECT i.* FROM i CROSS JOIN guard g
    JOIN outbound_message m ON m.id = i.id AND m.claimed_by = i.token AND m.status = g.claimed
), """ + _take_parked("fenced", "$9", ("id", "seq")) + """, marked AS (
    SELECT f.*, coalesce(pk.status, 'submitted') AS status, pk.receipt_stat, pk.error_code, pk.reason
    FROM fenced f LEFT JOIN parked pk ON pk.mark_id = f.id AND pk.mark_seq = f.seq
), parts AS (
    INSERT INTO message_part AS mp (message_id, seq, total, smsc, smsc_message_id, smsc_msgid_key, status,
                                    receipt_stat, error_code, reason, done_at)
    SELECT id, seq, total, smsc, message_id, msgid_key, status, receipt_stat, error_code, reason,
           CASE WHEN status = 'submitted' THEN NULL ELSE now() END
    FROM marked
    -- A retried message replaces the parts of its earlier attempt.
    ON CONFLICT (message_id, seq) DO UPDATE
        SET smsc = EXCLUDED.smsc, smsc_message_id = EXCLUDED.smsc_message_id,
            smsc_msgid_key = EXCLUDED.smsc_msgid_key, status = EXCLUDED.status,
            receipt_stat = EXCLUDED.receipt_stat, error_code = EXCLUDED.error_code, reason = EXCLUDED.reason,
            submitted_at = now(), done_at = EXCLUDED.done_at
), agg AS (
    -- From the rows as written (not from another CTE's output joined back: see the module docstring), with the
    -- first part's SMSC fields for the message row.
""" + _PART_OUTCOMES.format(
    parts="SELECT id AS message_id, seq, total, smsc, message_id AS smsc_message_id, bind_name, status,"
          " receipt_stat, error_code, reason FROM marked",
    first="""
           (array_agg(smsc ORDER BY seq))[1] AS smsc, (array_agg(smsc_message_id ORDER BY seq))[1] AS smsc_message_id,
           (array_agg(bind_name ORDER BY seq))[1] AS bind_name, max(total) AS total,""",
) + """
)
UPDATE outbound_message m
SET status = CASE WHEN a.all_done THEN coalesce(a.fail_status, 'delivered') ELSE 'submitted' END,
    receipt_stat = CASE WHEN a.all_done THEN coalesce(a.fail_stat, 'DELIVRD') END,
    error_code = CASE WHEN a.all_done THEN a.fail_code END,
    reason = CASE WHEN a.all_done THEN coalesce(a.fail_reason, 'delivered') END,
    done_at = CASE WHEN a.all_done THEN now() END,
    smsc = a.smsc, smsc_message_id = a.smsc_message_id, bind_name = a.bind_name, parts = a.total,
    submitted_at = now(), claimed_by = NULL, claimed_until = NULL, updated_at = now()
FROM agg a
WHERE m.id = a.message_id
"""

# Anything else that ends a claim: back to the queue after a delay (retry, release) or a final status.
SETTLE = """
WITH """ + _GUARD.format(since="NULL") + """
UPDATE outbound_message m
SET status = i.status,
    send_after = CASE WHEN i.status = 'queued' THEN now() + make_interval(secs => i.delay) ELSE m.send_after END,
    attempts = m.attempts + i.attempts_delta,
    error_code = i.error_code,
    reason = i.reason,
    detail = i.detail,
    bind_name = COALESCE(i.bind_name, m.bind_name),
    smsc = COALESCE(i.smsc, m.smsc),
    done_at = CASE WHEN i.status = 'queued' THEN NULL ELSE now() END,
    claimed_by = NULL, claimed_until = NULL, updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[], $5::bigint[], $6::text[], $7::int[], $8::text[],
            $9::text[], $10::text[])
    AS i(id, token, status, delay, error_code, reason, attempts_delta, bind_name, smsc, detail), guard g
WHERE m.id = i.id AND m.claimed_by = i.token AND m.status = g.claimed
"""

# A message (or part) submitted within the last $11 seconds (the receipt timeout) whose key is {key}: a receipt
# matches only those, so an id the SMSC reuses later never takes an old message's receipt, nor the reverse.
# Scalar subqueries, not EXISTS: one index probe per receipt (see the module docstring).
_LIVE_KEY = """(
        (SELECT true FROM outbound_message m WHERE m.smsc = i.smsc AND m.smsc_msgid_key = {key}
                AND m.submitted_at > g.since LIMIT 1)
        OR (SELECT true FROM message_part p WHERE p.smsc = i.smsc AND p.smsc_msgid_key = {key}
            AND p.submitted_at > g.since LIMIT 1))"""

# Final receipts: update the submitted single-part row, or the part of a multi-part message (which is final
# when all its parts are: delivered, or the first failing part's outcome), or park the receipt when no row
# carries that id yet. A CTE does not see another CTE's updates, so the aggregate joins the new part states in.
# Each receipt brings up to three candidate keys (gateway/smpp/receipt.py receipt_keys: key0 the id as written,
# key1 the hex spelling of a decimal id, key2 the decimal value of a hex id; NULL when not applicable): the first
# that names a live message is used, so an exact match always wins over the alternates and a receipt never
# updates rows under two keys. A receipt no key matches is parked with all its keys; $10 received_at keeps a
# re-parked receipt's age (NULL = now). Returns (smsc, matched, n): matched is the index of the key used
# (ID_MAPPINGS), NULL for parked receipts.
RECORD_RECEIPTS = """
WITH i AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::bigint[], $9::text[], $10::timestamptz[])
        AS t(smsc, key0, key1, key2, message_id, status, receipt_stat, error_code, reason, received_at)
), """ + _GUARD.format(since="$11") + """, k AS MATERIALIZED (
    -- One CASE, evaluated once per receipt (its probes stop at the first key that matches).
    SELECT i.*, CASE
        WHEN """ + _LIVE_KEY.format(key="i.key0") + """ THEN i.key0
        WHEN i.key1 IS NOT NULL AND """ + _LIVE_KEY.format(key="i.key1") + """ THEN i.key1
        WHEN i.key2 IS NOT NULL AND """ + _LIVE_KEY.format(key="i.key2") + """ THEN i.key2
    END AS msgid_key, g.submitted AS live, g.since
    FROM i CROSS JOIN guard g
), upd AS (
    UPDATE outbound_message m
    SET status = k.status, receipt_stat = k.receipt_stat, error_code = k.error_code, reason = k.reason,
        done_at = now(), updated_at = now()
    FROM k
    WHERE m.smsc = k.smsc AND m.smsc_msgid_key = k.msgid_key AND m.status = k.live AND m.submitted_at > k.since
    RETURNING m.id, m.smsc, m.status, m.receipt_stat, extract(epoch FROM now() - m.submitted_at)::float8 AS age
), part AS (
    UPDATE message_part p
    SET status = k.status, receipt_stat = k.receipt_stat, error_code = k.error_code, reason = k.reason, done_at = now()
    FROM k
    WHERE p.smsc = k.smsc AND p.smsc_msgid_key = k.msgid_key AND p.status = k.live AND p.submitted_at > k.since
    RETURNING p.message_id, p.seq, p.status, p.receipt_stat, p.error_code, p.reason
), agg AS (
""" + _PART_OUTCOMES.format(first="", parts="""
        -- Each part of the messages touched: its new state from `part`, else its stored one (a union, not a
        -- join of the table back to `part`: see the module docstring).
        SELECT DISTINCT ON (message_id, seq) message_id, seq, status, receipt_stat, error_code, reason
        FROM (SELECT message_id, seq, status, receipt_stat, error_code, reason, 0 AS stored FROM part
              UNION ALL
              SELECT p.message_id, p.seq, p.status, p.receipt_stat, p.error_code, p.reason, 1
              FROM message_part p WHERE p.message_id IN (SELECT message_id FROM part)) s
        ORDER BY message_id, seq, stored""") + """
), done AS (
    UPDATE outbound_message m
    SET status = coalesce(a.fail_status, 'delivered'), receipt_stat = coalesce(a.fail_stat, 'DELIVRD'),
        error_code = a.fail_code, reason = coalesce(a.fail_reason, 'delivered'), done_at = now(), updated_at = now()
    FROM agg a CROSS JOIN guard g
    WHERE m.id = a.message_id AND a.all_done AND m.status = g.submitted
    RETURNING m.id, m.smsc, m.status, m.receipt_stat, extract(epoch FROM now() - m.submitted_at)::float8 AS age
), parked AS (
    INSERT INTO pending_receipt (smsc, msgid_key, alt_key1, alt_key2, message_id, status, receipt_stat, error_code,
                                 reason, received_at)
    SELECT k.smsc, k.key0, k.key1, k.key2, k.message_id, k.status, k.receipt_stat, k.error_code, k.reason,
           coalesce(k.received_at, now())
    FROM k WHERE k.msgid_key IS NULL
)
SELECT smsc, CASE msgid_key WHEN key0 THEN 0 WHEN key1 THEN 1 WHEN key2 THEN 2 END AS matched, count(*)::int AS n,
       NULL::text AS status, NULL::text AS receipt_stat, NULL::float8[] AS ages
FROM k GROUP BY 1, 2
UNION ALL
-- Rows made final here, for the metrics (receipt_ids.observe_matches): per SMSC, status and stat, with the
-- submit -> receipt seconds of each (a few hundred floats per flush at most).
SELECT smsc, NULL, count(*)::int, status, receipt_stat, array_agg(age)
FROM (SELECT smsc, status, receipt_stat, age FROM upd UNION ALL SELECT smsc, status, receipt_stat, age FROM done) f
GROUP BY smsc, status, receipt_stat
"""

# Re-sent parts of a concatenated MO (same identity, not yet assembled) are stored once.
INSERT_MO_PARTS = """
INSERT INTO mo_part (smsc, source, destination, ref, total, seq, data_coding, esm_class, payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::smallint[], $6::smallint[],
                     $7::smallint[], $8::smallint[], $9::bytea[])
    AS t(smsc, source, destination, ref, total, seq, data_coding, esm_class, payload)
ON CONFLICT (smsc, source, destination, ref, total, seq) WHERE total > 1 DO NOTHING
"""

INSERT_INBOUND = """
INSERT INTO inbound_message (smsc, source, destination, body, data_coding, esm_class, raw_short_message)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::smallint[], $7::bytea[])
    AS t(smsc, source, destination, body, data_coding, esm_class, raw_short_message)
"""

# What an SMSC sent (or a result we made) that Postgres refused: kept with its error, then acknowledged.
INSERT_QUARANTINE = """
INSERT INTO quarantine (kind, smsc, raw, fields, error)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[], $5::text[])
    AS t(kind, smsc, raw, fields, error)
"""

# A claimed row whose result could not be written ($3 status: 'submitted' when the SMSC accepted it, so it is
# not sent again and ends 'expired' without a receipt; else 'failed'): not left 'claimed' until its lease runs out.
SETTLE_INVALID_RESULT = """
UPDATE outbound_message
SET status = $3, reason = 'invalid_result', detail = $4, smsc = COALESCE($5, smsc),
    submitted_at = CASE WHEN $3 = 'submitted' THEN now() ELSE submitted_at END,
    done_at = CASE WHEN $3 = 'submitted' THEN NULL ELSE now() END,
    claimed_by = NULL, claimed_until = NULL, updated_at = now()
WHERE id = $1 AND claimed_by = $2 AND status = 'claimed'
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
# The same, returning (reaped, failed) for the maintenance log and the final-status counter.
REAP_LEASES_COUNTED = (
    "WITH r AS (" + REAP_LEASES.strip() + "\nRETURNING status)\n"
    "SELECT count(*)::int AS reaped, count(*) FILTER (WHERE status = 'failed')::int AS failed FROM r"
)

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
# here and recorded again with RECORD_RECEIPTS in the same transaction (the columns are its first ten
# parameters). $1 parked-receipt match window, $2 receipt timeout (seconds): only recent parked receipts, and
# only for messages submitted within the receipt timeout, as for the mark.
# The receipt's keys are probed one at a time with RECORD_RECEIPTS' _LIVE_KEY (hence the alias i), not as
# `smsc_msgid_key IN (three keys)`: on statistics that call the key columns empty, that list was costed dearer
# than the index's first column alone, and each parked receipt walked every key of its SMSC in message_part and
# outbound_message (385,000 rows read for 400 recent receipts).
TAKE_MATCHABLE_PARKED = """
WITH """ + _GUARD.format(since="$2") + """
DELETE FROM pending_receipt i USING guard g
WHERE i.received_at > now() - make_interval(secs => $1)
  AND (""" + _LIVE_KEY.format(key="i.msgid_key") + """
       OR (i.alt_key1 IS NOT NULL AND """ + _LIVE_KEY.format(key="i.alt_key1") + """)
       OR (i.alt_key2 IS NOT NULL AND """ + _LIVE_KEY.format(key="i.alt_key2") + """))
RETURNING i.smsc, i.msgid_key, i.alt_key1, i.alt_key2, i.message_id, i.status, i.receipt_stat, i.error_code,
          i.reason, i.received_at
"""

# $1 parked-receipt match window (seconds). Parked receipts per SMSC, and how many of them are past the window
# (no mark will take them: their id matched nothing in time), for the gauge and the pile-up warning.
PARKED_RECEIPTS = """
SELECT smsc, count(*) AS parked, count(*) FILTER (WHERE received_at < now() - make_interval(secs => $1)) AS stale
FROM pending_receipt GROUP BY smsc
"""

# $1 days
DROP_OLD_PARKED = """
DELETE FROM pending_receipt WHERE received_at < now() - make_interval(days => $1::int)
"""

# The heartbeat (gateway/maintenance.py) is one transaction per pass: LOCK_RATE_SHARE, RATE_SHARE_MEMBERS, decide
# (gateway/rate_share.py), HEARTBEAT, commit. The lock serialises every instance's decision about its grant of
# an account's rate, so each sees the grants committed before it (one key for all accounts: no lock order to
# get wrong, and a pass holds it for a couple of milliseconds). Key: 'smsgw_rs' as a big-endian bigint.
# An instance frozen while it holds the lock (SIGSTOP, a stalled host) would stop every other instance's
# heartbeat, and their grants would run out: the server ends such a transaction after 2 s idle (its row keeps
# its former grant: safe), and a waiter gives up after 3 s and tries again at its next pass.
RATE_SHARE_LOCK_KEY = 0x736D_7367_775F_7273
LOCK_RATE_SHARE = f"""
SET LOCAL idle_in_transaction_session_timeout = '2s';
SET LOCAL lock_timeout = '3s';
SELECT pg_advisory_xact_lock({RATE_SHARE_LOCK_KEY});
"""

# $1 SMSC names, $2 this instance. The other instances' rows for those accounts, stale ones too (the decision
# tells them apart by age, on the database clock). A row from before 0010 has no grant: it holds its whole tps.
RATE_SHARE_MEMBERS = """
SELECT smsc, instance, coalesce(grant_tps, tps) AS grant_tps, tps,
       extract(epoch FROM now() - last_seen)::float8 AS age_s
FROM gateway_instance
WHERE smsc = ANY($1::text[]) AND instance <> $2
"""

# $1 instance, $2 SMSC names; per SMSC (same order as $2): $3 the grant just decided (rate_share.py); for the
# status page and `smsgw status` (gateway/ops_status.py): $4 binds up, $5 binds configured, $6 configured TPS,
# $7 effective TPS, $8 last bind error text, $9 its time (NULL: none yet). last_seen is now(): the start of the
# heartbeat's transaction, later than the moment its grant's fence counts from.
HEARTBEAT = """
INSERT INTO gateway_instance AS g (instance, smsc, last_seen, grant_tps, binds_up, binds_total, tps, effective_tps,
                                   last_error, last_error_at)
SELECT $1, s.smsc, now(), s.grant_tps, s.binds_up, s.binds_total, s.tps, s.effective_tps, s.last_error,
       s.last_error_at
FROM unnest($2::text[], $3::float8[], $4::int[], $5::int[], $6::float8[], $7::float8[], $8::text[],
            $9::timestamptz[])
    AS s(smsc, grant_tps, binds_up, binds_total, tps, effective_tps, last_error, last_error_at)
ON CONFLICT (instance, smsc) DO UPDATE
    SET last_seen = now(), grant_tps = EXCLUDED.grant_tps, binds_up = EXCLUDED.binds_up,
        binds_total = EXCLUDED.binds_total, tps = EXCLUDED.tps, effective_tps = EXCLUDED.effective_tps,
        last_error = coalesce(EXCLUDED.last_error, g.last_error),
        last_error_at = coalesce(EXCLUDED.last_error_at, g.last_error_at)
"""

DROP_STALE_INSTANCES = "DELETE FROM gateway_instance WHERE last_seen < now() - interval '1 day'"

# A graceful stop, once nothing is sent any more: the grants are free for the others at their next heartbeat.
LEAVE_INSTANCE = "DELETE FROM gateway_instance WHERE instance = $1"

# Non-final rows by status and priority class (metrics.priority_class: reply >= 100, high > 0, normal), and the
# earliest send_after of the queued rows (the oldest due row's wait is now - that). The minimum is found by a
# loose index scan of the queue index (priority DESC, send_after, id): one probe per distinct priority, not a
# scan of the queued rows. Measured in README "Metrics".
QUEUE_STATS = """
SELECT status, CASE WHEN priority >= 100 THEN 'reply' WHEN priority > 0 THEN 'high' ELSE 'normal' END AS priority,
       count(*)::bigint AS n
FROM outbound_message
WHERE status IN ('queued', 'claimed', 'submitted') GROUP BY 1, 2
"""
QUEUE_OLDEST_DUE = """
WITH RECURSIVE p AS (
    (SELECT priority FROM outbound_message WHERE status = 'queued' ORDER BY priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT o.priority FROM outbound_message o
            WHERE o.status = 'queued' AND o.priority < p.priority ORDER BY o.priority DESC LIMIT 1)
    FROM p WHERE p.priority IS NOT NULL
)
SELECT greatest(0, extract(epoch FROM now() - min(f.send_after)))::float8 AS age
FROM p CROSS JOIN LATERAL (
    SELECT o.send_after FROM outbound_message o
    WHERE o.status = 'queued' AND o.priority = p.priority ORDER BY o.priority DESC, o.send_after, o.id LIMIT 1
) f
WHERE p.priority IS NOT NULL
"""

LISTEN_CHANNEL = "smsgw_outbound"
INBOUND_CHANNEL = "smsgw_inbound"

# Frequency caps (gateway/frequency_caps.py), one statement per admitted batch. $1 item index, $2 short code,
# $3 list name, $4 smsgw_cap_number key (an item may have two: one row each), $5 the batch's ids (its rows are
# counted in memory, in queue order), $6 the admission's clock. Per item: the submitted_at of each marketing row of
# that short code, list and number sent in the last 7 days, and NULL for each one still claimed and not yet
# submitted (by any instance): in flight, counted as sent now.
# The rows of item t's short code, list and number on the cap index (0011), apart from the batch's own.
_CAP_ROWS = """
    SELECT m.id, m.submitted_at FROM outbound_message m
    WHERE smsgw_cap_number(m.destination) = t.number_key AND m.list_name = t.list_name
      AND m.message_class = 'marketing' AND m.list_name IS NOT NULL
      AND smsgw_short_code(m.source) = t.short_code
      AND m.id <> ALL($5::bigint[])"""
# Probes per item in a lateral subquery that OFFSET 0 keeps from being flattened into a join: with a join, the
# order is the statistics' choice, and analysed before a broadcast's rows existed they say the cap index is empty,
# so the planner read the whole index (every marketing row of the week) per batch and compared each row with every
# item (600 x 200 pairs for 600 rows found). Two probes, not one with an OR, so each is a range of the index: the
# week's rows, then the in-flight ones at the NULL end of the same key; older rows are never read.
FREQUENCY_CAP_SENT = """
SELECT DISTINCT ON (t.i, m.id) t.i, m.submitted_at
FROM unnest($1::int[], $2::text[], $3::text[], $4::text[]) AS t(i, short_code, list_name, number_key)
CROSS JOIN LATERAL (""" + _CAP_ROWS + """ AND m.submitted_at > $6::timestamptz - interval '7 days'
    UNION ALL""" + _CAP_ROWS + """ AND m.submitted_at IS NULL AND m.status = 'claimed'
    OFFSET 0
) m
"""
