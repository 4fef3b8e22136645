-- 0005: consent that cannot be lost. One form of a short code everywhere (as keywords.consent_watch.short_code_key
-- in Python: surrounding blanks and leading '+' removed), and a NOTIFY smsgw_consent payload naming the changed
-- pair, so that dispatchers can re-check rows they admitted before the change (keywords/consent_watch.py).
-- The consent functions keep their signatures: other services call them.

CREATE FUNCTION smsgw_short_code(code text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT regexp_replace(regexp_replace(code, '^\s*\+*\s*', ''), '\s+$', '')
$$;

-- Opt-outs written before this migration under '+12345' now count for '12345' too (a union: nobody who said STOP
-- becomes reachable). Subscriptions are left as they are: their lists are keyed by the configured short code.
INSERT INTO opt_out (short_code, msisdn, opted_out_at)
SELECT smsgw_short_code(short_code), msisdn, opted_out_at FROM opt_out
WHERE short_code <> smsgw_short_code(short_code)
ON CONFLICT DO NOTHING;
DELETE FROM opt_out WHERE short_code <> smsgw_short_code(short_code);

CREATE OR REPLACE FUNCTION smsgw_opt_in(
    p_short_code text, p_number text, p_list text, p_channel text DEFAULT 'api',
    p_keyword text DEFAULT NULL, p_message_text text DEFAULT NULL, p_inbound_message_id bigint DEFAULT NULL,
    p_source_detail text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    sc text := smsgw_short_code(p_short_code);
    n text := smsgw_msisdn(p_number);
    was_out boolean;
    changed boolean;
BEGIN
    DELETE FROM opt_out WHERE short_code = sc AND msisdn = n RETURNING true INTO was_out;
    IF p_list IS NOT NULL THEN  -- NULL: only lift the short-code opt-out (START / UNSTOP without a list)
        INSERT INTO subscription AS s (short_code, list_name, msisdn, status, opted_in_at)
        VALUES (sc, p_list, n, 'active', now())
        ON CONFLICT (short_code, list_name, msisdn) DO UPDATE
            SET status = 'active', opted_in_at = now(), updated_at = now()
            WHERE s.status <> 'active'
        RETURNING true INTO changed;
    END IF;
    INSERT INTO consent_event (msisdn, short_code, list_name, action, channel, keyword, message_text,
                               inbound_message_id, source_detail)
    VALUES (n, sc, p_list, 'opt_in', p_channel, p_keyword, p_message_text, p_inbound_message_id, p_source_detail);
    PERFORM pg_notify('smsgw_consent', json_build_object('short_code', sc, 'msisdn', n)::text);
    RETURN coalesce(changed, false) OR coalesce(was_out, false);
END $$;

CREATE OR REPLACE FUNCTION smsgw_opt_out(
    p_short_code text, p_number text, p_channel text DEFAULT 'api',
    p_keyword text DEFAULT NULL, p_message_text text DEFAULT NULL, p_inbound_message_id bigint DEFAULT NULL,
    p_source_detail text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    sc text := smsgw_short_code(p_short_code);
    n text := smsgw_msisdn(p_number);
    added boolean;
BEGIN
    INSERT INTO opt_out (short_code, msisdn) VALUES (sc, n)
    ON CONFLICT DO NOTHING RETURNING true INTO added;
    UPDATE subscription SET status = 'opted_out', opted_out_at = now(), updated_at = now()
    WHERE short_code = sc AND msisdn = n AND status = 'active';
    -- Recorded every time, also when the number was already out: every revocation is evidence.
    INSERT INTO consent_event (msisdn, short_code, action, channel, keyword, message_text, inbound_message_id,
                               source_detail)
    VALUES (n, sc, 'opt_out', p_channel, p_keyword, p_message_text, p_inbound_message_id, p_source_detail);
    PERFORM pg_notify('smsgw_consent', json_build_object('short_code', sc, 'msisdn', n)::text);
    RETURN coalesce(added, false);
END $$;

CREATE OR REPLACE FUNCTION smsgw_leave_list(
    p_short_code text, p_number text, p_list text, p_channel text DEFAULT 'api',
    p_keyword text DEFAULT NULL, p_message_text text DEFAULT NULL, p_inbound_message_id bigint DEFAULT NULL,
    p_source_detail text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    sc text := smsgw_short_code(p_short_code);
    n text := smsgw_msisdn(p_number);
    changed boolean;
BEGIN
    UPDATE subscription SET status = 'opted_out', opted_out_at = now(), updated_at = now()
    WHERE short_code = sc AND list_name = p_list AND msisdn = n AND status = 'active'
    RETURNING true INTO changed;
    INSERT INTO consent_event (msisdn, short_code, list_name, action, channel, keyword, message_text,
                               inbound_message_id, source_detail)
    VALUES (n, sc, p_list, 'opt_out', p_channel, p_keyword, p_message_text, p_inbound_message_id, p_source_detail);
    PERFORM pg_notify('smsgw_consent', json_build_object('short_code', sc, 'msisdn', n)::text);
    RETURN coalesce(changed, false);
END $$;

-- Same body as in 0002, with the short code in its one form (a caller writing '+12345' reaches the lists of 12345).
CREATE OR REPLACE FUNCTION smsgw_broadcast(
    p_short_code text, p_list text, p_body text, p_campaign_key text,
    p_send_after timestamptz DEFAULT now(), p_priority smallint DEFAULT 0
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    sc text := smsgw_short_code(p_short_code);
    inserted bigint;
BEGIN
    IF p_campaign_key IS NULL OR p_campaign_key = '' THEN
        RAISE EXCEPTION 'a broadcast needs a campaign key' USING ERRCODE = '22023';
    END IF;
    INSERT INTO outbound_message (source, destination, body, priority, send_after, message_class, list_name,
                                  campaign_key)
    SELECT sc, '+' || s.msisdn, p_body, p_priority, p_send_after, 'marketing', p_list, p_campaign_key
    FROM subscription s
    WHERE s.short_code = sc AND s.list_name = p_list AND s.status = 'active'
      AND NOT EXISTS (SELECT 1 FROM opt_out o WHERE o.short_code = s.short_code AND o.msisdn = s.msisdn)
    ON CONFLICT (campaign_key, destination) WHERE campaign_key IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END $$;
