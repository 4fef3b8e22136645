"""SQL of MO handling and consent, in one place. The consent functions themselves live in migration 0002
(`smsgw_opt_in`, `smsgw_opt_out`, `smsgw_leave_list`, `smsgw_broadcast`) so other services call the same code."""

from __future__ import annotations

# $1 reassembly timeout (s), $2 max groups. Complete groups, and groups whose first part is older than the
# timeout (assembled incomplete). The parts are deleted in the handling transaction: a rollback keeps them.
TAKE_GROUPS = """
WITH groups AS (
    SELECT smsc, source, destination, ref, total
    FROM mo_part
    GROUP BY smsc, source, destination, ref, total
    HAVING count(*) >= total OR min(received_at) < now() - make_interval(secs => $1)
    ORDER BY min(received_at)
    LIMIT $2
)
DELETE FROM mo_part p USING groups g
WHERE p.smsc = g.smsc AND p.source = g.source AND p.destination = g.destination AND p.ref = g.ref
  AND p.total = g.total
RETURNING p.smsc, p.source, p.destination, p.ref, p.total, p.seq, p.data_coding, p.esm_class, p.payload,
          p.received_at
"""

# $1 dedup window (s). A message identical to one received within the window (the SMSC re-sent it because
# our ack was lost) is stored as a duplicate and not handled again.
FIND_DUPLICATE = """
SELECT id FROM inbound_message
WHERE smsc = $1 AND source = $2 AND destination = $3 AND body = $4
  AND received_at > now() - make_interval(secs => $5) AND intent IS DISTINCT FROM 'duplicate'
LIMIT 1
"""

INSERT_MO = """
INSERT INTO inbound_message (smsc, source, destination, body, data_coding, esm_class, raw_short_message,
                             received_at, short_code, msisdn, parts, incomplete, intent, keyword, list_name,
                             handled_at, note)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $3, $9, $10, $11, $12, $13, $14, now(), $15)
RETURNING id
"""

OPT_OUT = "SELECT smsgw_opt_out($1, $2, 'sms', $3, $4, $5)"
OPT_IN = "SELECT smsgw_opt_in($1, $2, $3, 'sms', $4, $5, $6)"
LEAVE_LIST = "SELECT smsgw_leave_list($1, $2, $3, 'sms', $4, $5, $6)"
HELP_EVENT = """
INSERT INTO consent_event (msisdn, short_code, action, channel, keyword, message_text, inbound_message_id)
VALUES ($1, $2, 'help', 'sms', $3, $4, $5)
"""

# Replies go through the outbound queue like any message: high priority, linked to their MO.
ENQUEUE_REPLY = """
INSERT INTO outbound_message (source, destination, body, priority, message_class, inbound_message_id,
                              is_opt_out_confirmation)
VALUES ($1, $2, $3, $4, 'transactional', $5, $6)
"""

SYNC_LIST = """
INSERT INTO subscriber_list (short_code, name, program, frequency, marketing)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (short_code, name) DO UPDATE
    SET program = EXCLUDED.program, frequency = EXCLUDED.frequency, marketing = EXCLUDED.marketing
"""

# Send-time enforcement, one indexed lookup per claimed batch: opted out of the short code, and (for
# marketing) actively subscribed to the message's list.
CONSENT_CHECK = """
SELECT t.i,
       EXISTS (SELECT 1 FROM opt_out o WHERE o.short_code = t.short_code AND o.msisdn = t.msisdn) AS opted_out,
       EXISTS (SELECT 1 FROM subscription s
               WHERE s.short_code = t.short_code AND s.list_name = t.list_name AND s.msisdn = t.msisdn
                 AND s.status = 'active') AS subscribed
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(short_code, msisdn, list_name, i)
"""

BROADCAST = "SELECT smsgw_broadcast($1, $2, $3, $4)"
