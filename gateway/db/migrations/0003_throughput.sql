-- 0003: live gateway instances per SMSC (to split an account's rate between them).

CREATE TABLE gateway_instance (
    instance   text        NOT NULL,
    smsc       text        NOT NULL,
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, smsc)
);

-- Parts of multi-part (concatenated) messages: each has its own SMSC message id and receipt. A single-part
-- message keeps its id on outbound_message itself (the hot path stays one row per message).
ALTER TABLE outbound_message ADD COLUMN parts smallint NOT NULL DEFAULT 1;

CREATE TABLE message_part (
    message_id      bigint      NOT NULL REFERENCES outbound_message (id) ON DELETE CASCADE,
    seq             smallint    NOT NULL,
    total           smallint    NOT NULL,
    smsc            text        NOT NULL,
    smsc_message_id text        NOT NULL,
    smsc_msgid_key  text        NOT NULL,
    status          text        NOT NULL DEFAULT 'submitted'
                    CHECK (status IN ('submitted', 'delivered', 'undeliverable', 'expired')),
    receipt_stat    text,
    error_code      integer,
    reason          text,
    submitted_at    timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz,
    PRIMARY KEY (message_id, seq)
);
CREATE INDEX message_part_msgid_idx ON message_part (smsc, smsc_msgid_key);

-- The receipt timeout looks only at rows still waiting for a receipt.
CREATE INDEX outbound_message_submitted_idx ON outbound_message (submitted_at) WHERE status = 'submitted';
