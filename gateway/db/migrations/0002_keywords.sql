-- 0002: MO handling and consent: message parts, subscriber lists, opt-outs, the consent ledger,
-- links between MOs and replies, broadcasts. Numbers (msisdn) are E.164 digits without '+'.

-- Parts of (possibly concatenated) MOs, stored and acknowledged one by one, assembled by the MO processor.
CREATE TABLE mo_part (
    id            bigserial PRIMARY KEY,
    smsc          text        NOT NULL,
    source        text        NOT NULL,
    destination   text        NOT NULL,
    ref           integer     NOT NULL DEFAULT 0,   -- concatenation reference (UDH 8/16-bit or SAR)
    total         smallint    NOT NULL DEFAULT 1,
    seq           smallint    NOT NULL DEFAULT 1,
    data_coding   smallint    NOT NULL,
    esm_class     smallint    NOT NULL,
    payload       bytea       NOT NULL,            -- user data without the UDH
    received_at   timestamptz NOT NULL DEFAULT now()
);
-- A part of a concatenated MO that the SMSC sends again before its group is assembled is stored once.
-- Single-part MOs have no identity of their own (two "STOP"s are two messages); content dedup handles them.
CREATE UNIQUE INDEX mo_part_identity_idx ON mo_part (smsc, source, destination, ref, total, seq) WHERE total > 1;
CREATE INDEX mo_part_received_idx ON mo_part (received_at);

ALTER TABLE inbound_message
    ADD COLUMN short_code     text,
    ADD COLUMN msisdn         text,              -- sender in E.164 digits; NULL when not a valid number
    ADD COLUMN parts          smallint NOT NULL DEFAULT 1,
    ADD COLUMN incomplete     boolean  NOT NULL DEFAULT false,
    ADD COLUMN intent         text,              -- opt_out / opt_in / help / join / custom / other / duplicate
    ADD COLUMN keyword        text,
    ADD COLUMN list_name      text,
    ADD COLUMN handled_at     timestamptz,
    ADD COLUMN note           text;
CREATE INDEX inbound_message_dedup_idx ON inbound_message (smsc, source, destination, received_at);

-- Subscriber lists (programs) per short code; rows are synchronised from the keyword settings at start.
CREATE TABLE subscriber_list (
    short_code   text        NOT NULL,
    name         text        NOT NULL,
    program      text        NOT NULL,
    frequency    text        NOT NULL DEFAULT '',
    marketing    boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (short_code, name)
);

CREATE TABLE subscription (
    short_code   text        NOT NULL,
    list_name    text        NOT NULL,
    msisdn       text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('active', 'opted_out')),
    opted_in_at  timestamptz,
    opted_out_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (short_code, list_name, msisdn),
    FOREIGN KEY (short_code, list_name) REFERENCES subscriber_list (short_code, name)
);
CREATE INDEX subscription_active_idx ON subscription (short_code, list_name) WHERE status = 'active';

-- A number that said STOP to a short code: nothing more goes from that short code to it until it opts in again.
CREATE TABLE opt_out (
    short_code   text        NOT NULL,
    msisdn       text        NOT NULL,
    opted_out_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (short_code, msisdn)
);

-- Append-only consent evidence.
CREATE TABLE consent_event (
    id            bigserial PRIMARY KEY,
    msisdn        text        NOT NULL,
    short_code    text        NOT NULL,
    list_name     text,
    action        text        NOT NULL CHECK (action IN ('opt_in', 'opt_out', 'help')),
    channel       text        NOT NULL CHECK (channel IN ('sms', 'api', 'import')),
    keyword       text,
    message_text  text,
    inbound_message_id bigint REFERENCES inbound_message (id),
    source_detail text,                                   -- e.g. the web form or CRM that called the API
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_event_number_idx ON consent_event (short_code, msisdn, created_at);

CREATE FUNCTION consent_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consent_event is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER consent_event_append_only BEFORE UPDATE OR DELETE ON consent_event
    FOR EACH ROW EXECUTE FUNCTION consent_event_append_only();

ALTER TABLE outbound_message
    ADD COLUMN list_name          text,
    ADD COLUMN inbound_message_id bigint,
    ADD COLUMN is_opt_out_confirmation boolean NOT NULL DEFAULT false,
    ADD COLUMN campaign_key       text;
-- A broadcast enqueues each subscriber once per campaign, however often it is called.
CREATE UNIQUE INDEX outbound_message_campaign_idx ON outbound_message (campaign_key, destination)
    WHERE campaign_key IS NOT NULL;

-- -- API for other services (web forms, CRM, imports): numbers as E.164 ('+' optional). ------------------

CREATE FUNCTION smsgw_msisdn(number text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    digits text := regexp_replace(number, '^\+', '');
BEGIN
    IF digits !~ '^[1-9][0-9]{6,14}$' THEN
        RAISE EXCEPTION 'invalid E.164 number: %', number USING ERRCODE = '22023';
    END IF;
    RETURN digits;
END $$;

-- Opt a number in to a list (and lift a short-code opt-out). Returns true when the state changed.
CREATE FUNCTION smsgw_opt_in(
    p_short_code text, p_number text, p_list text, p_channel text DEFAULT 'api',
    p_keyword text DEFAULT NULL, p_message_text text DEFAULT NULL, p_inbound_message_id bigint DEFAULT NULL,
    p_source_detail text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    n text := smsgw_msisdn(p_number);
    was_out boolean;
    changed boolean;
BEGIN
    DELETE FROM opt_out WHERE short_code = p_short_code AND msisdn = n RETURNING true INTO was_out;
    IF p_list IS NOT NULL THEN  -- NULL: only lift the short-code opt-out (START / UNSTOP without a list)
        INSERT INTO subscription AS s (short_code, list_name, msisdn, status, opted_in_at)
        VALUES (p_short_code, p_list, n, 'active', now())
        ON CONFLICT (short_code, list_name, msisdn) DO UPDATE
            SET status = 'active', opted_in_at = now(), updated_at = now()
            WHERE s.status <> 'active'
        RETURNING true INTO changed;
    END IF;
    INSERT INTO consent_event (msisdn, short_code, list_name, action, channel, keyword, message_text,
                               inbound_message_id, source_detail)
    VALUES (n, p_short_code, p_list, 'opt_in', p_channel, p_keyword, p_message_text, p_inbound_message_id,
            p_source_detail);
    PERFORM pg_notify('smsgw_consent', '');
    RETURN coalesce(changed, false) OR coalesce(was_out, false);
END $$;

-- Opt a number out of a whole short code (every list). Returns true when it was not opted out before.
CREATE FUNCTION smsgw_opt_out(
    p_short_code text, p_number text, p_channel text DEFAULT 'api',
    p_keyword text DEFAULT NULL, p_message_text text DEFAULT NULL, p_inbound_message_id bigint DEFAULT NULL,
    p_source_detail text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    n text := smsgw_msisdn(p_number);
    added boolean;
BEGIN
    INSERT INTO opt_out (short_code, msisdn) VALUES (p_short_code, n)
    ON CONFLICT DO NOTHING RETURNING true INTO added;
    UPDATE subscription SET status = 'opted_out', opted_out_at = now(), updated_at = now()
    WHERE short_code = p_short_code AND msisdn = n AND status = 'active';
    INSERT INTO consent_event (msisdn, short_code, action, channel, keyword, message_text, inbound_message_id,
                               source_detail)
    VALUES (n, p_short_code, 'opt_out', p_channel, p_keyword, p_message_text, p_inbound_message_id,
            p_source_detail);
    PERFORM pg_notify('smsgw_consent', '');
    RETURN coalesce(added, false);
END $$;

-- Leave one list only (a custom keyword's `leave`); the short code may still send other lists' messages.
CREATE FUNCTION smsgw_leave_list(
    p_short_code text, p_number text, p_list text, p_channel text DEFAULT 'api',
    p_keyword text DEFAULT NULL, p_message_text text DEFAULT NULL, p_inbound_message_id bigint DEFAULT NULL,
    p_source_detail text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    n text := smsgw_msisdn(p_number);
    changed boolean;
BEGIN
    UPDATE subscription SET status = 'opted_out', opted_out_at = now(), updated_at = now()
    WHERE short_code = p_short_code AND list_name = p_list AND msisdn = n AND status = 'active'
    RETURNING true INTO changed;
    INSERT INTO consent_event (msisdn, short_code, list_name, action, channel, keyword, message_text,
                               inbound_message_id, source_detail)
    VALUES (n, p_short_code, p_list, 'opt_out', p_channel, p_keyword, p_message_text, p_inbound_message_id,
            p_source_detail);
    PERFORM pg_notify('smsgw_consent', '');
    RETURN coalesce(changed, false);
END $$;

-- Enqueue one marketing message to every active subscriber of a list, skipping opted-out numbers, in one
-- statement; idempotent by campaign key. Returns the number of rows enqueued by this call.
CREATE FUNCTION smsgw_broadcast(
    p_short_code text, p_list text, p_body text, p_campaign_key text,
    p_send_after timestamptz DEFAULT now(), p_priority smallint DEFAULT 0
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    inserted bigint;
BEGIN
    IF p_campaign_key IS NULL OR p_campaign_key = '' THEN
        RAISE EXCEPTION 'a broadcast needs a campaign key' USING ERRCODE = '22023';
    END IF;
    INSERT INTO outbound_message (source, destination, body, priority, send_after, message_class, list_name,
                                  campaign_key)
    SELECT p_short_code, '+' || s.msisdn, p_body, p_priority, p_send_after, 'marketing', p_list, p_campaign_key
    FROM subscription s
    WHERE s.short_code = p_short_code AND s.list_name = p_list AND s.status = 'active'
      AND NOT EXISTS (SELECT 1 FROM opt_out o WHERE o.short_code = s.short_code AND o.msisdn = s.msisdn)
    ON CONFLICT (campaign_key, destination) WHERE campaign_key IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END $$;
