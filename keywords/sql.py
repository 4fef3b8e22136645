"""SQL of MO handling and consent, in one place. The consent functions themselves live in migrations 0002 and 0005
(`smsgw_opt_in`, `smsgw_opt_out`, `smsgw_leave_list`, `smsgw_broadcast`, `smsgw_short_code`) so other services
call the same code."""

from __future__ import annotations

# $1 reassembly timeout (s), $2 max messages of each kind. Single-part MOs (each its own message, however many
# one number sent), complete groups of parts, and groups whose first part is older than the timeout (assembled
# incomplete). The parts are deleted in the handling transaction: a rollback keeps them.
TAKE_GROUPS = """
WITH singles AS (
    SELECT id FROM mo_part WHERE total = 1 ORDER BY id LIMIT $2
), groups AS (
    SELECT smsc, source, destination, ref, total
    FROM mo_part
    WHERE total > 1
    GROUP BY smsc, source, destination, ref, total
    HAVING count(*) >= total OR min(received_at) < now() - make_interval(secs => $1)
    ORDER BY min(received_at)
    LIMIT $2
), chosen AS (
    SELECT id FROM singles
    UNION ALL
    SELECT p.id FROM mo_part p JOIN groups g USING (smsc, source, destination, ref, total)
)
-- = ANY(ARRAY(...)) keeps this a primary-key lookup whatever the (often stale) statistics of this short-lived
-- table say; a join here was planned as a nested loop over a sequential scan: 500 x 10,000 rows per batch.
DELETE FROM mo_part p
WHERE p.id = ANY(ARRAY(SELECT id FROM chosen))
RETURNING p.id, p.smsc, p.source, p.destination, p.ref, p.total, p.seq, p.data_coding, p.esm_class, p.payload,
          p.received_at
"""

# Duplicate detection (see the processor's docstring for the rule): for each MO, the most recent earlier MO from
# the same sender to the same short code on the same SMSC within the window ($5 s) before it. The caller compares
# its body: only an MO identical to that one is a duplicate, so STOP, START, STOP are three messages. One lookup
# for the whole batch, along inbound_message_dedup_idx.
LAST_MOS = """
SELECT t.i, l.id, l.body, l.received_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) WITH ORDINALITY
    AS t(smsc, source, destination, received_at, i)
LEFT JOIN LATERAL (
    SELECT m.id, m.body, m.received_at FROM inbound_message m
    WHERE m.smsc = t.smsc AND m.source = t.source AND m.destination = t.destination
      AND m.received_at <= t.received_at AND m.received_at > t.received_at - make_interval(secs => $5)
    ORDER BY m.received_at DESC, m.id DESC
    LIMIT 1
) l ON true
ORDER BY t.i
"""

# An MO that Postgres refused however it was handled: its user data and decoded fields (as text, NUL-free: jsonb
# cannot hold \u0000) with the error, for a person to look at. Its parts are deleted with the batch.
QUARANTINE_MO = """
INSERT INTO quarantine (kind, smsc, raw, fields, error) VALUES ('mo', $1, $2, $3::jsonb, $4)
"""

NEXT_INBOUND_IDS = "SELECT nextval(pg_get_serial_sequence('inbound_message', 'id')) FROM generate_series(1, $1)"

INSERT_MOS = """
INSERT INTO inbound_message (id, smsc, source, destination, body, data_coding, esm_class, raw_short_message,
                             received_at, short_code, msisdn, parts, incomplete, intent, keyword, list_name,
                             handled_at, note)
SELECT id, smsc, source, destination, body, data_coding, esm_class, raw, received_at, destination, msisdn, parts,
       incomplete, intent, keyword, list_name, now(), note
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::smallint[], $7::smallint[],
            $8::bytea[], $9::timestamptz[], $10::text[], $11::smallint[], $12::boolean[], $13::text[], $14::text[],
            $15::text[], $16::text[])
    AS t(id, smsc, source, destination, body, data_coding, esm_class, raw, received_at, msisdn, parts,
         incomplete, intent, keyword, list_name, note)
"""

# Consent effects, one statement per kind for a round of MOs (at most one MO per number in a round, so the
# order of a number's own messages is kept across rounds). Each row runs the same function other services call.
OPT_OUT_MANY = """
SELECT t.i, smsgw_opt_out(t.short_code, t.msisdn, 'sms', t.keyword, t.body, t.mo_id) AS changed
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) WITH ORDINALITY
    AS t(short_code, msisdn, keyword, body, mo_id, i)
ORDER BY t.i
"""
OPT_IN_MANY = """
SELECT t.i, smsgw_opt_in(t.short_code, t.msisdn, t.list_name, 'sms', t.keyword, t.body, t.mo_id) AS changed
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[]) WITH ORDINALITY
    AS t(short_code, msisdn, list_name, keyword, body, mo_id, i)
ORDER BY t.i
"""
LEAVE_MANY = """
SELECT t.i, smsgw_leave_list(t.short_code, t.msisdn, t.list_name, 'sms', t.keyword, t.body, t.mo_id) AS changed
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[]) WITH ORDINALITY
    AS t(short_code, msisdn, list_name, keyword, body, mo_id, i)
ORDER BY t.i
"""
HELP_MANY = """
INSERT INTO consent_event (msisdn, short_code, action, channel, keyword, message_text, inbound_message_id)
SELECT msisdn, short_code, 'help', 'sms', keyword, body, mo_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) AS t(short_code, msisdn, keyword, body, mo_id)
"""

# Replies go through the outbound queue like any message: high priority, linked to their MO.
ENQUEUE_REPLIES = """
INSERT INTO outbound_message (source, destination, body, priority, message_class, inbound_message_id,
                              is_opt_out_confirmation)
SELECT source, destination, body, $4, 'transactional', mo_id, stop_confirmation
FROM unnest($1::text[], $2::text[], $3::text[], $5::bigint[], $6::boolean[])
    AS t(source, destination, body, mo_id, stop_confirmation)
"""

SYNC_LIST = """
INSERT INTO subscriber_list (short_code, name, program, frequency, marketing)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (short_code, name) DO UPDATE
    SET program = EXCLUDED.program, frequency = EXCLUDED.frequency, marketing = EXCLUDED.marketing
"""

# Send-time enforcement, one indexed lookup per claimed batch: opted out of the short code, (for marketing)
# actively subscribed to the message's list, and exempt from the opt-out rule. $1 short codes (any form: compared
# as smsgw_short_code, the SQL twin of short_code_key), $2 destination digits, $3 list names, $4 the rows'
# inbound_message_id. Exempt means the row answers a HELP or STOP (opt_out) MO that this very number sent to this
# very short code within a day (HELP is answered to anyone; a STOP gets its one confirmation). It is derived from
# the MO the row links to, never from a column a producer writes alone (is_opt_out_confirmation is ignored).
#
# Each lookup is a scalar subquery on a primary key, not an EXISTS: a whole import of subscribers or opt-outs
# lands between two ANALYZEs, and on statistics taken before it Postgres hashed the EXISTS, reading all of opt_out,
# subscription and inbound_message for every batch. The subscription's status is read from its row, not put in
# the WHERE: `status = 'active'` matches subscription_active_idx, (short_code, list_name) only, which those
# statistics call empty; walked once per row to find the number, it read 10 million rows for 200 messages.
CONSENT_CHECK = """
SELECT t.i,
       coalesce((SELECT true FROM opt_out o WHERE o.short_code = t.short_code AND o.msisdn = t.msisdn LIMIT 1),
                false) AS opted_out,
       coalesce((SELECT s.status = 'active' FROM subscription s
                 WHERE s.short_code = t.short_code AND s.list_name = t.list_name AND s.msisdn = t.msisdn),
                false) AS subscribed,
       t.inbound_message_id IS NOT NULL AND coalesce((SELECT true FROM inbound_message im
               WHERE im.id = t.inbound_message_id AND im.intent IN ('help', 'opt_out')
                 AND im.msisdn = t.msisdn AND smsgw_short_code(im.short_code) = t.short_code
                 AND im.received_at > now() - interval '1 day' LIMIT 1), false) AS exempt,
       -- The subscriber's own zone for quiet hours (gateway/quiet_hours.py); only list messages can be marketing.
       CASE WHEN t.list_name IS NOT NULL THEN (SELECT sb.attributes ->> 'time_zone' FROM subscriber sb
                                               WHERE sb.short_code = t.short_code AND sb.msisdn = t.msisdn)
       END AS time_zone
FROM (SELECT smsgw_short_code(u.short_code) AS short_code, ltrim(u.msisdn, '+') AS msisdn, u.list_name,
             u.inbound_message_id, u.i
      FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY
          AS u(short_code, msisdn, list_name, inbound_message_id, i)) t
"""

BROADCAST = "SELECT smsgw_broadcast($1, $2, $3, $4)"
