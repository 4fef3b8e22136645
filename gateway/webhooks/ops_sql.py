"""SQL of the webhook operations side: pruning and backlog gauges (maintenance), and `smsgw webhooks`
(list, replay, retry-dead). The sender's own statements are in `gateway/webhooks/sql.py`.

Rules: every DELETE is bounded (LIMIT in a sub-select) so that a huge backlog is pruned in many short
transactions, never one long one; every write wakes the sender with the same NOTIFY the triggers use.
"""

from __future__ import annotations

from typing import Final

NOTIFY: Final = "SELECT pg_notify('smsgw_webhook', '')"

# -- maintenance ------------------------------------------------------------------------------------------

# $1 retention (seconds), $2 rows at most. Delivered deliveries older than the retention
# (webhook_delivery_done_idx); dead ones are kept for `retry-dead` and inspection.
PRUNE_DELIVERED = """
DELETE FROM webhook_delivery
WHERE id IN (
    SELECT id FROM webhook_delivery
    WHERE status = 'delivered' AND delivered_at < now() - make_interval(secs => $1)
    LIMIT $2
)
"""

# $1 retention (seconds), $2 rows at most. Events older than the retention that no delivery refers to any more
# (webhook_event_created_idx, then webhook_delivery_event_idx per candidate).
PRUNE_EVENTS = """
DELETE FROM webhook_event
WHERE id IN (
    SELECT e.id FROM webhook_event e
    WHERE e.created_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM webhook_delivery d WHERE d.event_id = e.id)
    ORDER BY e.created_at
    LIMIT $2
)
"""

# Pending deliveries and the age of the oldest, per endpoint known to the database (one statement; the
# partial index webhook_delivery_due_idx covers exactly the pending rows).
BACKLOG = """
SELECT coalesce(w.name, p.endpoint) AS endpoint, coalesce(p.pending, 0) AS pending,
       coalesce(extract(epoch FROM now() - p.oldest), 0)::float8 AS oldest_age
FROM webhook_endpoint w
FULL JOIN (
    SELECT endpoint, count(*) AS pending, min(created_at) AS oldest
    FROM webhook_delivery WHERE status = 'pending' GROUP BY endpoint
) p ON p.endpoint = w.name
"""

# -- smsgw webhooks list ----------------------------------------------------------------------------------

ENDPOINTS = "SELECT name, events, short_codes, enabled, updated_at FROM webhook_endpoint ORDER BY name"

DELIVERY_STATS = """
SELECT endpoint,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'dead') AS dead,
       min(created_at) FILTER (WHERE status = 'pending') AS oldest_pending,
       max(last_error) FILTER (WHERE status = 'dead') AS a_dead_error
FROM webhook_delivery WHERE status IN ('pending', 'dead')
GROUP BY endpoint
"""

DELIVERED_LAST_HOUR = """
SELECT endpoint, count(*) AS delivered
FROM webhook_delivery WHERE status = 'delivered' AND delivered_at > now() - interval '1 hour'
GROUP BY endpoint
"""

# -- smsgw webhooks replay --------------------------------------------------------------------------------

# $1 since, $2 endpoint or NULL (every enabled endpoint), $3 event type or NULL. A new pending delivery for
# each event created since $1 that the endpoint wants (same event, so the same webhook-id: receivers dedup).
REPLAY = """
WITH ins AS (
    INSERT INTO webhook_delivery (event_id, endpoint, ordering_key)
    SELECT e.id, w.name, e.ordering_key
    FROM webhook_event e JOIN webhook_endpoint w
      ON w.enabled AND e.type = ANY (w.events)
         AND (cardinality(w.short_codes) = 0 OR e.short_code = ANY (w.short_codes))
    WHERE e.created_at >= $1
      AND ($2::text IS NULL OR w.name = $2)
      AND ($3::text IS NULL OR e.type = $3)
    ORDER BY e.id
    RETURNING event_id
)
SELECT count(*) AS deliveries, count(DISTINCT event_id) AS events FROM ins
"""

ENDPOINT = "SELECT name, events, enabled FROM webhook_endpoint WHERE name = $1"

OLDEST_EVENT = "SELECT min(created_at) FROM webhook_event"

# -- smsgw webhooks retry-dead ----------------------------------------------------------------------------

# $1 endpoint or NULL (all). Dead deliveries become pending again, due now, with a fresh attempt budget; the
# delivery's created_at restarts too (the oldest-pending gauge and a retry window counted per delivery).
RETRY_DEAD = """
UPDATE webhook_delivery
SET status = 'pending', next_attempt_at = now(), attempts = 0, created_at = now()
WHERE status = 'dead' AND ($1::text IS NULL OR endpoint = $1)
"""
