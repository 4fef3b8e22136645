"""SQL of the webhook sender (migration 0008): endpoint sync, the claim, and the batched result write.

Rule of this module: every statement is one round trip and touches one endpoint's rows through the partial
indexes of 0008 (webhook_delivery_due_idx for the claim, webhook_delivery_key_idx for the head-of-line check);
results are written with one `unnest` statement per batch, never one UPDATE per delivery on the hot path.
"""

from __future__ import annotations

from typing import Final

CHANNEL: Final = "smsgw_webhook"  # NOTIFY of the triggers (one per statement) and of `smsgw webhooks`

# $1 names, $2 events (one text: the list joined by ','), $3 short codes (likewise), $4 enabled.
# Arrays of arrays are awkward through unnest, hence the joined strings (event types and short codes hold no ',').
SYNC_ENDPOINTS = """
INSERT INTO webhook_endpoint (name, events, short_codes, enabled, updated_at)
SELECT t.name, string_to_array(t.events, ','), coalesce(string_to_array(nullif(t.short_codes, ''), ','), '{}'),
       t.enabled, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[]) AS t(name, events, short_codes, enabled)
ON CONFLICT (name) DO UPDATE
SET events = EXCLUDED.events, short_codes = EXCLUDED.short_codes, enabled = EXCLUDED.enabled, updated_at = now()
WHERE (webhook_endpoint.events, webhook_endpoint.short_codes, webhook_endpoint.enabled)
      IS DISTINCT FROM (EXCLUDED.events, EXCLUDED.short_codes, EXCLUDED.enabled)
"""

# $1 configured names: endpoints no longer in the settings stop receiving new events (their rows are kept).
DISABLE_UNLISTED = """
UPDATE webhook_endpoint SET enabled = false, updated_at = now()
WHERE enabled AND NOT (name = ANY($1::text[]))
"""

# $1 endpoint, $2 rows at most, $3 lease (seconds: the endpoint timeout plus a margin). Due pending deliveries
# that are the head of their ordering key (no earlier pending delivery of the same key for this endpoint), so a
# key's next event waits until the previous one is delivered or dead; different keys go in parallel. The lease
# is next_attempt_at itself: a claim of a sender that died comes due again once it has passed.
CLAIM = """
WITH due AS (
    SELECT d.id FROM webhook_delivery d
    WHERE d.endpoint = $1 AND d.status = 'pending' AND d.next_attempt_at <= now()
      AND NOT EXISTS (
          SELECT 1 FROM webhook_delivery p
          WHERE p.endpoint = d.endpoint AND p.ordering_key = d.ordering_key AND p.status = 'pending' AND p.id < d.id
      )
    ORDER BY d.next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_delivery d
SET next_attempt_at = now() + make_interval(secs => $3), attempts = d.attempts + 1
FROM due, webhook_event e
WHERE d.id = due.id AND e.id = d.event_id
RETURNING d.id, d.attempts, e.id AS event_id, e.type, e.data::text AS data, e.created_at
"""

# $1 ids, $2 ok, $3 HTTP status (NULL: no answer), $4 error, $5 retry delay (seconds), $6 max age (seconds).
# Delivered on ok; otherwise pending again after the delay, or dead once the delivery is older than the maximum
# retry period (kept with its last error). The delivery's age, not the event's: a replay or `retry-dead` starts a
# new retry period. Only pending rows: an operator's change since the claim wins.
RECORD_RESULTS = """
UPDATE webhook_delivery d
SET status = CASE WHEN r.ok THEN 'delivered'
                  WHEN d.created_at < now() - make_interval(secs => $6) THEN 'dead'
                  ELSE 'pending' END,
    delivered_at = CASE WHEN r.ok THEN now() END,
    next_attempt_at = CASE WHEN r.ok THEN d.next_attempt_at ELSE now() + make_interval(secs => r.delay) END,
    last_status = r.http_status,
    last_error = r.error
FROM unnest($1::bigint[], $2::bool[], $3::int[], $4::text[], $5::float8[]) AS r(id, ok, http_status, error, delay)
WHERE d.id = r.id AND d.status = 'pending'
RETURNING d.status
"""

ENDPOINT_TABLE_MISSING = "SELECT to_regclass('webhook_endpoint') IS NULL"
