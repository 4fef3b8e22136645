-- 0001: the outbound queue, parked receipts, inbound messages.
-- Never edit a migration once it has landed; add a new numbered file.

CREATE TABLE outbound_message (
    id               bigserial PRIMARY KEY,
    -- written by producers
    source           text        NOT NULL,               -- short code / sender id
    destination      text        NOT NULL,               -- recipient, E.164 preferred
    body             text        NOT NULL,
    priority         smallint    NOT NULL DEFAULT 0,      -- higher is sent first
    send_after       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz,
    idempotency_key  text UNIQUE,
    message_class    text        NOT NULL DEFAULT 'transactional'
                     CHECK (message_class IN ('transactional', 'marketing')),
    metadata         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- owned by the gateway
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'claimed', 'submitted', 'delivered', 'undeliverable',
                                       'expired', 'rejected', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    claimed_by       text,
    claimed_until    timestamptz,
    smsc             text,
    bind_name        text,
    smsc_message_id  text,
    smsc_msgid_key   text,
    submitted_at     timestamptz,
    done_at          timestamptz,
    receipt_stat     text,
    error_code       integer,
    reason           text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The claim's ORDER BY is (priority DESC, send_after, id): this index must match it column for column.
CREATE INDEX outbound_message_queue_idx
    ON outbound_message (priority DESC, send_after, id) WHERE status = 'queued';
-- Lease index on claimed_until, not on status = 'claimed' (the planner would pick the latter for fenced marks).
CREATE INDEX outbound_message_lease_idx
    ON outbound_message (claimed_until) WHERE claimed_until IS NOT NULL;
CREATE INDEX outbound_message_msgid_idx
    ON outbound_message (smsc, smsc_msgid_key) WHERE smsc_msgid_key IS NOT NULL;
CREATE INDEX outbound_message_expiry_idx
    ON outbound_message (expires_at) WHERE status = 'queued' AND expires_at IS NOT NULL;

-- Every status change is a non-HOT update: vacuum early and often so the queue index stays small.
ALTER TABLE outbound_message SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0
);

-- Statement-level wake-up with an empty payload: free for COPY and multi-row inserts, and it does not
-- serialise single-row producers the way a per-row NOTIFY would.
CREATE FUNCTION outbound_message_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smsgw_outbound', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbound_message_notify AFTER INSERT ON outbound_message
    FOR EACH STATEMENT EXECUTE FUNCTION outbound_message_notify();

-- Receipts that arrived before their submit_sm_resp was recorded (or whose mark was in flight).
CREATE TABLE pending_receipt (
    id           bigserial PRIMARY KEY,
    smsc         text        NOT NULL,
    msgid_key    text        NOT NULL,
    message_id   text        NOT NULL,
    status       text        NOT NULL,      -- the outbound status the receipt leads to
    receipt_stat text,
    error_code   integer,
    reason       text,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_receipt_key_idx ON pending_receipt (smsc, msgid_key);

-- Mobile-originated messages, stored before the deliver_sm is acknowledged.
CREATE TABLE inbound_message (
    id           bigserial PRIMARY KEY,
    smsc         text        NOT NULL,
    source       text        NOT NULL,
    destination  text        NOT NULL,
    body         text        NOT NULL,
    data_coding  smallint    NOT NULL,
    esm_class    smallint    NOT NULL,
    raw_short_message bytea  NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
