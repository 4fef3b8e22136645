-- 0008: webhooks through a transactional outbox. Events are written by triggers in the transaction of the
-- change they report (a rolled-back change sends nothing; nothing is lost while the gateway or an endpoint is
-- down), one delivery row per (event, endpoint that wants it). The sender delivers them at least once, in order
-- per ordering key (one message, one MO sender, one number's consent), different keys in parallel.

-- Endpoints, synchronised from the settings at start (the triggers only fan out to enabled ones; with none,
-- the triggers write nothing).
CREATE TABLE webhook_endpoint (
    name         text        PRIMARY KEY,
    events       text[]      NOT NULL,          -- event types it wants
    short_codes  text[]      NOT NULL DEFAULT '{}',  -- empty: every short code
    enabled      boolean     NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_event (
    id            bigserial   PRIMARY KEY,      -- the webhook-id header is 'evt_' || id
    type          text        NOT NULL,         -- message.submitted, message.final, message.part_final, mo.received, consent.changed
    ordering_key  text        NOT NULL,         -- msg:<id>, mo:<short code>:<sender>, consent:<short code>:<msisdn>
    short_code    text,
    data          jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_event_created_idx ON webhook_event (created_at);

CREATE TABLE webhook_delivery (
    id              bigserial   PRIMARY KEY,
    event_id        bigint      NOT NULL REFERENCES webhook_event (id) ON DELETE CASCADE,
    endpoint        text        NOT NULL,
    ordering_key    text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),   -- also the lease of an attempt in flight
    last_status     integer,                               -- HTTP status of the last attempt (NULL: no answer)
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
-- The sender's claim: due pending deliveries of one endpoint, and the head-of-line check per ordering key.
CREATE INDEX webhook_delivery_due_idx ON webhook_delivery (endpoint, next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_delivery_key_idx ON webhook_delivery (endpoint, ordering_key, id) WHERE status = 'pending';
CREATE INDEX webhook_delivery_event_idx ON webhook_delivery (event_id);
CREATE INDEX webhook_delivery_done_idx ON webhook_delivery (delivered_at) WHERE status = 'delivered';

-- Fan one statement's events out to the endpoints that want them, and wake the sender (one NOTIFY per statement).
-- By id list, not "id >= first": a concurrent transaction's committed events may have higher ids.
CREATE FUNCTION smsgw_webhook_fan_out(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF ids IS NULL THEN  -- the statement changed nothing an event reports
        RETURN;
    END IF;
    INSERT INTO webhook_delivery (event_id, endpoint, ordering_key)
    SELECT e.id, w.name, e.ordering_key
    FROM webhook_event e JOIN webhook_endpoint w
      ON w.enabled AND e.type = ANY (w.events)
         AND (cardinality(w.short_codes) = 0 OR e.short_code = ANY (w.short_codes))
    WHERE e.id = ANY (ids)
    -- Delivery ids in event order: the sender's head-of-line check per ordering key compares delivery ids.
    ORDER BY e.id, w.name;
    PERFORM pg_notify('smsgw_webhook', '');
END $$;

-- Message status changes (statement level with transition tables: one INSERT per batched UPDATE, not per row).
CREATE FUNCTION smsgw_webhook_message_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoint WHERE enabled) THEN
        RETURN NULL;
    END IF;
    WITH ins AS (
        INSERT INTO webhook_event (type, ordering_key, short_code, data)
        SELECT CASE WHEN n.status = 'submitted' THEN 'message.submitted' ELSE 'message.final' END,
               'msg:' || n.id, smsgw_short_code(n.source),
               jsonb_build_object(
                   'message_id', n.id, 'status', n.status, 'reason', n.reason, 'detail', n.detail,
                   'error_code', n.error_code, 'receipt_stat', n.receipt_stat, 'source', n.source,
                   'destination', n.destination, 'smsc', n.smsc, 'smsc_message_id', n.smsc_message_id,
                   'parts', n.parts, 'attempts', n.attempts, 'idempotency_key', n.idempotency_key,
                   'message_class', n.message_class, 'metadata', n.metadata, 'inbound_message_id',
                   n.inbound_message_id, 'created_at', n.created_at, 'submitted_at', n.submitted_at,
                   'done_at', n.done_at)
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE n.status IS DISTINCT FROM o.status
          AND n.status IN ('submitted', 'delivered', 'undeliverable', 'expired', 'rejected', 'failed')
        ORDER BY n.id
        RETURNING id
    )
    SELECT array_agg(id) INTO ids FROM ins;
    PERFORM smsgw_webhook_fan_out(ids);
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_message_events AFTER UPDATE ON outbound_message
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION smsgw_webhook_message_events();

-- Receipts of the parts of multi-part messages (the message's own final event follows from outbound_message).
CREATE FUNCTION smsgw_webhook_part_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoint WHERE enabled) THEN
        RETURN NULL;
    END IF;
    WITH ins AS (
        INSERT INTO webhook_event (type, ordering_key, short_code, data)
        SELECT 'message.part_final', 'msg:' || n.message_id, smsgw_short_code(m.source),
               jsonb_build_object(
                   'message_id', n.message_id, 'seq', n.seq, 'total', n.total, 'status', n.status,
                   'receipt_stat', n.receipt_stat, 'error_code', n.error_code, 'reason', n.reason,
                   'smsc', n.smsc, 'smsc_message_id', n.smsc_message_id, 'done_at', n.done_at)
        FROM new_rows n JOIN old_rows o ON o.message_id = n.message_id AND o.seq = n.seq
             JOIN outbound_message m ON m.id = n.message_id
        WHERE n.status IS DISTINCT FROM o.status AND n.status <> 'submitted'
        ORDER BY n.message_id, n.seq
        RETURNING id
    )
    SELECT array_agg(id) INTO ids FROM ins;
    PERFORM smsgw_webhook_fan_out(ids);
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_part_events AFTER UPDATE ON message_part
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION smsgw_webhook_part_events();

-- Handled MOs (rows the MO processor stores with their intent; raw unparseable PDUs have none).
CREATE FUNCTION smsgw_webhook_mo_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoint WHERE enabled) THEN
        RETURN NULL;
    END IF;
    WITH ins AS (
        INSERT INTO webhook_event (type, ordering_key, short_code, data)
        SELECT 'mo.received', 'mo:' || coalesce(n.short_code, n.destination) || ':' || coalesce(n.msisdn, n.source),
               coalesce(n.short_code, n.destination),
               jsonb_build_object(
                   'mo_id', n.id, 'smsc', n.smsc, 'source', n.source, 'msisdn', n.msisdn,
                   'short_code', coalesce(n.short_code, n.destination), 'body', n.body, 'intent', n.intent,
                   'keyword', n.keyword, 'list_name', n.list_name, 'parts', n.parts, 'incomplete', n.incomplete,
                   'note', n.note, 'received_at', n.received_at)
        FROM new_rows n
        WHERE n.intent IS NOT NULL
        ORDER BY n.id
        RETURNING id
    )
    SELECT array_agg(id) INTO ids FROM ins;
    PERFORM smsgw_webhook_fan_out(ids);
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_mo_events AFTER INSERT ON inbound_message
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION smsgw_webhook_mo_events();

-- Every consent change (the ledger is append-only: one event per ledger row).
CREATE FUNCTION smsgw_webhook_consent_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoint WHERE enabled) THEN
        RETURN NULL;
    END IF;
    WITH ins AS (
        INSERT INTO webhook_event (type, ordering_key, short_code, data)
        SELECT 'consent.changed', 'consent:' || n.short_code || ':' || n.msisdn, n.short_code,
               jsonb_build_object(
                   'consent_event_id', n.id, 'msisdn', n.msisdn, 'short_code', n.short_code,
                   'list_name', n.list_name, 'action', n.action, 'channel', n.channel, 'keyword', n.keyword,
                   'message_text', n.message_text, 'inbound_message_id', n.inbound_message_id,
                   'source_detail', n.source_detail, 'created_at', n.created_at)
        FROM new_rows n
        ORDER BY n.id
        RETURNING id
    )
    SELECT array_agg(id) INTO ids FROM ins;
    PERFORM smsgw_webhook_fan_out(ids);
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_consent_events AFTER INSERT ON consent_event
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION smsgw_webhook_consent_events();
