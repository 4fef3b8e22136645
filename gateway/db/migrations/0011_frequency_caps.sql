-- 0011: frequency caps per list (gateway/frequency_caps.py). Admission counts, per claimed batch, the marketing
-- rows of a list sent to a number in the last 7 days and those still claimed (in flight) for it.

-- A recipient as the cap compares it: the digits of `destination` as the producer wrote it ('+1 202-555-0123'
-- and '12025550123' are one number). Never raises, so a row with a bad number can still be inserted (and ends
-- rejected / invalid_destination); the gateway compares it with the E.164 digits it sends to.
CREATE FUNCTION smsgw_cap_number(destination text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT regexp_replace(destination, '[^0-9]', '', 'g')
$$;

-- Only marketing rows of a list are entered (the predicate's columns are the producer's and never change).
-- submitted_at changes once, at the mark, together with status (already a non-HOT update: status is in the
-- queue index's predicate), so this index adds no non-HOT update; claimed rows (submitted_at NULL) are found
-- at the NULL end of the same key.
CREATE INDEX outbound_message_cap_idx
    ON outbound_message (smsgw_cap_number(destination), list_name, submitted_at)
    WHERE message_class = 'marketing' AND list_name IS NOT NULL;

-- Grants (0009's header): the gateway and reporting roles call the function, as they do smsgw_msisdn.
DO $grants$
DECLARE
    gateway   text := coalesce(nullif(current_setting('smsgw.gateway_role', true), ''), 'smsgw_gateway');
    reporting text := coalesce(nullif(current_setting('smsgw.reporting_role', true), ''), 'smsgw_reporting');
BEGIN
    EXECUTE format('GRANT EXECUTE ON FUNCTION smsgw_cap_number(text) TO %I, %I', gateway, reporting);
END $grants$;
