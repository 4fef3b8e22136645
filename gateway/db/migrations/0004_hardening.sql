-- 0004: hardening against hostile values: 64-bit columns where SMPP allows 32-bit unsigned values, a detail
-- column for the error behind a reason, and a quarantine for SMSC input that Postgres refused.

-- command_status and receipt err: codes are 32-bit unsigned (0xFFFFFFFF overflows integer).
ALTER TABLE outbound_message ALTER COLUMN error_code TYPE bigint;
ALTER TABLE pending_receipt ALTER COLUMN error_code TYPE bigint;
ALTER TABLE message_part ALTER COLUMN error_code TYPE bigint;
-- SAR references are 16-bit and UDH 8/16-bit, but some SMSCs put wider values there: never refuse a part.
ALTER TABLE mo_part ALTER COLUMN ref TYPE bigint;

-- The error behind `reason` (e.g. why a producer row was `invalid_row`), for people, not for matching.
ALTER TABLE outbound_message ADD COLUMN detail text;

-- What an SMSC sent that could not be stored normally (a receipt, an MO part or a submit result that Postgres
-- refused): kept raw with the error, then acknowledged, so one bad PDU never blocks the others.
CREATE TABLE quarantine (
    id           bigserial PRIMARY KEY,
    kind         text        NOT NULL,            -- receipt / mo_part / inbound / mark / settle / mo
    smsc         text,
    raw          bytea,                           -- the PDU body or user data as received, when there is one
    fields       jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- the decoded values, as text
    error        text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_received_idx ON quarantine (received_at);
