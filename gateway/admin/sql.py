"""Every SQL statement of the admin CLI, in one place.

Rules: a write is one statement whose WHERE names the statuses it may change (so two operators, or an operator
and a dispatcher, can never both win), and the refusals are explained by a second, read-only query afterwards.
Nothing here adds an index to `outbound_message`: every status change there is a non-HOT update, so each index
costs every message several writes; admin look-ups that have no index scan within a bound instead.
"""

from __future__ import annotations

# -- message show -----------------------------------------------------------------------------------------

MESSAGE = """
SELECT id, source, destination, body, priority, message_class, list_name, campaign_key, idempotency_key,
       metadata::text AS metadata, status, reason, detail, attempts, smsc, bind_name, smsc_message_id,
       smsc_msgid_key, receipt_stat, error_code, parts, claimed_by, claimed_until, inbound_message_id,
       is_opt_out_confirmation, created_at, send_after, expires_at, submitted_at, done_at, updated_at
FROM outbound_message WHERE id = $1
"""

MESSAGE_PARTS = """
SELECT seq, total, smsc, smsc_message_id, smsc_msgid_key, status, receipt_stat, error_code, reason, submitted_at,
       done_at
FROM message_part WHERE message_id = $1 ORDER BY seq
"""

# Receipts parked under any id the message (or one of its parts) was submitted with: they arrived before the
# submit_sm_resp was recorded, or never matched. pending_receipt is small (dropped after a few days).
MESSAGE_PARKED = """
WITH k AS (
    SELECT smsc, smsc_msgid_key AS key FROM outbound_message WHERE id = $1 AND smsc_msgid_key IS NOT NULL
    UNION
    SELECT smsc, smsc_msgid_key FROM message_part WHERE message_id = $1
)
SELECT p.id, p.smsc, p.message_id, p.status, p.receipt_stat, p.error_code, p.reason, p.received_at
FROM pending_receipt p JOIN k ON p.smsc = k.smsc AND k.key IN (p.msgid_key, p.alt_key1, p.alt_key2)
ORDER BY p.received_at, p.id
"""

MESSAGE_MO = """
SELECT id, smsc, source, destination, body, intent, keyword, list_name, received_at
FROM inbound_message WHERE id = $1
"""

# $1 candidate digit strings of the number (E.164 digits, national forms), $2 limit. `destination` has no index
# (see the module docstring): the primary key is walked backwards until $2 rows match, so the latest messages
# of a number that has any come back quickly; the caller re-checks each row with normalise_number.
MESSAGES_TO = """
SELECT id, source, destination, status, reason, attempts, smsc, parts, left(body, 60) AS body, created_at, done_at
FROM outbound_message
WHERE regexp_replace(destination, '[^0-9]', '', 'g') = ANY($1::text[])
ORDER BY id DESC
LIMIT $2
"""

# -- message retry / cancel -------------------------------------------------------------------------------

# $1 ids, $2 rejected reasons that may be retried. A final row that can be sent again goes back to the queue
# with a fresh attempt budget; `detail` keeps what it was. A row whose producer deadline (expires_at) has passed
# stays as it is. Parts of the earlier attempt are dropped: the next attempt writes its own (its SMSC may split
# differently), and their ids must not take a late receipt meant for the old attempt.
RETRY = """
WITH r AS (
    UPDATE outbound_message m
    SET status = 'queued', reason = 'manual_retry',
        detail = format('manual retry; was %s / %s after %s attempts', m.status, coalesce(m.reason, '-'), m.attempts),
        attempts = 0, send_after = now(), error_code = NULL, receipt_stat = NULL, done_at = NULL,
        submitted_at = NULL, smsc_message_id = NULL, smsc_msgid_key = NULL, parts = 1,
        claimed_by = NULL, claimed_until = NULL, updated_at = now()
    WHERE m.id = ANY($1::bigint[])
      AND (m.status IN ('failed', 'expired', 'undeliverable')
           OR (m.status = 'rejected' AND m.reason = ANY($2::text[])))
      AND (m.expires_at IS NULL OR m.expires_at > now())
    RETURNING m.id
), dropped AS (
    DELETE FROM message_part p USING r WHERE p.message_id = r.id
)
SELECT id FROM r
"""

# $1 ids. Only a queued row: a claimed one is in a dispatcher's hands and may be on the wire already.
CANCEL = """
UPDATE outbound_message
SET status = 'rejected', reason = 'cancelled', detail = 'cancelled by an operator (smsgw message cancel)',
    done_at = now(), updated_at = now()
WHERE id = ANY($1::bigint[]) AND status = 'queued'
RETURNING id
"""

# Why the others were not changed (read after the write; the caller words the answer).
EXPLAIN = """
SELECT id, status, reason, expires_at, expires_at IS NOT NULL AND expires_at <= now() AS past_deadline
FROM outbound_message WHERE id = ANY($1::bigint[])
"""

# Retried rows wait for the dispatchers' next poll otherwise (the queue's NOTIFY fires on INSERT only).
WAKE_DISPATCHERS = "SELECT pg_notify('smsgw_outbound', '')"

# -- subscribers ------------------------------------------------------------------------------------------

LIST_EXISTS = "SELECT program FROM subscriber_list WHERE short_code = $1 AND name = $2"

CREATE_LIST = """
INSERT INTO subscriber_list (short_code, name, program, frequency, marketing)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (short_code, name) DO NOTHING
"""

IMPORT_STAGE = """
CREATE TEMP TABLE smsgw_import (
    line        integer     NOT NULL,
    msisdn      text        NOT NULL,
    opted_in_at timestamptz,
    source      text,
    attributes  jsonb   -- the file's extra columns (issue 10), NULL when none
) ON COMMIT DROP
"""

# One set-based statement for the whole file: $1 short code (its one form), $2 list, $3 source detail prefix.
# The first line of a number wins. A number opted out of the short code, or out of this list, is NOT subscribed
# again by an import (only the person can opt back in): those are returned to be reported. A number already
# active is left alone and gets no new event, so importing a file twice adds nothing. Each subscription added
# gets its consent_event with channel 'import' and where it came from (file, line, the file's own source and
# opt-in time). No NOTIFY: an opt-in never makes a queued row unsendable, and a consent_watch gap would
# make every dispatcher re-check its whole buffer.
IMPORT_APPLY = """
WITH staged AS (
    SELECT DISTINCT ON (msisdn) line, msisdn, opted_in_at, source, attributes FROM smsgw_import
    ORDER BY msisdn, line
), refused AS (
    SELECT s.line, s.msisdn FROM staged s
    WHERE EXISTS (SELECT 1 FROM opt_out o WHERE o.short_code = $1 AND o.msisdn = s.msisdn)
       OR EXISTS (SELECT 1 FROM subscription x
                  WHERE x.short_code = $1 AND x.list_name = $2 AND x.msisdn = s.msisdn AND x.status = 'opted_out')
), added AS (
    INSERT INTO subscription (short_code, list_name, msisdn, status, opted_in_at)
    SELECT $1, $2, s.msisdn, 'active', coalesce(s.opted_in_at, now()) FROM staged s
    WHERE NOT EXISTS (SELECT 1 FROM refused r WHERE r.msisdn = s.msisdn)
    ON CONFLICT (short_code, list_name, msisdn) DO NOTHING
    RETURNING msisdn
), events AS (
    INSERT INTO consent_event (msisdn, short_code, list_name, action, channel, source_detail)
    SELECT s.msisdn, $1, $2, 'opt_in', 'import',
           $3 || ' line ' || s.line || coalesce('; source: ' || s.source, '')
              || coalesce('; opted in at '
                          || to_char(s.opted_in_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '')
    FROM staged s JOIN added a USING (msisdn)
    RETURNING 1
), attrs AS (
    -- Attributes are the person's, not consent: merged for every number of the file that has some.
    INSERT INTO subscriber AS t (short_code, msisdn, attributes)
    SELECT $1, s.msisdn, s.attributes FROM staged s WHERE s.attributes IS NOT NULL
    ON CONFLICT (short_code, msisdn) DO UPDATE
        SET attributes = t.attributes || EXCLUDED.attributes, updated_at = now()
    RETURNING 1
)
SELECT (SELECT count(*) FROM smsgw_import) AS rows,
       (SELECT count(*) FROM attrs) AS attributes,
       (SELECT count(*) FROM staged) AS numbers,
       (SELECT count(*) FROM added) AS added,
       (SELECT count(*) FROM events) AS events,
       (SELECT coalesce(array_agg(line ORDER BY line), '{}') FROM refused) AS refused_lines,
       (SELECT coalesce(array_agg(msisdn ORDER BY line), '{}') FROM refused) AS refused_numbers
"""

# $1 short code, $2 list, $3 status or NULL for all.
EXPORT = """
SELECT msisdn, status, opted_in_at, opted_out_at, updated_at
FROM subscription
WHERE short_code = $1 AND list_name = $2 AND ($3::text IS NULL OR status = $3)
ORDER BY msisdn
"""

# -- consent history --------------------------------------------------------------------------------------

# The short codes that have any consent evidence, by a loose index scan on consent_event_number_idx (a few
# index probes per short code instead of reading the whole ledger), then each one's events for the number.
# $1 msisdn, $2 short code or NULL for all.
CONSENT_EVENTS = """
WITH RECURSIVE codes AS (
    (SELECT short_code FROM consent_event ORDER BY short_code LIMIT 1)
    UNION ALL
    SELECT (SELECT e.short_code FROM consent_event e WHERE e.short_code > c.short_code ORDER BY e.short_code LIMIT 1)
    FROM codes c WHERE c.short_code IS NOT NULL
)
SELECT e.id, e.short_code, e.list_name, e.action, e.channel, e.keyword, e.message_text, e.inbound_message_id,
       e.source_detail, e.created_at
FROM codes c JOIN consent_event e ON e.short_code = c.short_code AND e.msisdn = $1
WHERE c.short_code IS NOT NULL AND ($2::text IS NULL OR c.short_code = smsgw_short_code($2))
ORDER BY e.created_at, e.id
"""

# $1 msisdn, $2 short codes to look at (opt_out's key starts with the short code).
CONSENT_OPT_OUTS = """
SELECT short_code, opted_out_at FROM opt_out WHERE short_code = ANY($2::text[]) AND msisdn = $1 ORDER BY short_code
"""

# Through subscriber_list (small) so each probe uses subscription's primary key.
CONSENT_SUBSCRIPTIONS = """
SELECT s.short_code, s.list_name, s.status, s.opted_in_at, s.opted_out_at
FROM subscriber_list l
JOIN subscription s ON s.short_code = l.short_code AND s.list_name = l.name AND s.msisdn = $1
WHERE $2::text IS NULL OR l.short_code = smsgw_short_code($2)
ORDER BY s.short_code, s.list_name
"""

# Every short code the number may have state under: those with evidence, and those with lists.
CONSENT_CODES = """
SELECT DISTINCT short_code FROM subscriber_list WHERE $1::text IS NULL OR short_code = smsgw_short_code($1)
"""
