-- 0012: subscribers with attributes and personalised message templates (issue 10, part 1).
--
-- Attributes belong to the person on a short code, not to one list: a table `subscriber` keyed by
-- (short code in its one form, msisdn digits), independent of `subscription` (which stays the consent record, one
-- row per list). A number may have attributes without being subscribed to anything (a transactional customer).
--
-- Templates are named per short code. A producer may insert `template` + `variables` instead of `body`; the
-- BEFORE INSERT trigger below renders `body` at insert time (so the claim path is unchanged, and SQL inserts,
-- COPY and broadcasts all work). Values: the row's `variables`, then the subscriber's attributes, then the
-- placeholder's default ({first_name|there}). A missing value without a default ends the row
-- rejected / template_variable_missing (detail names the variables); an unknown template ends it
-- rejected / template_unknown. Syntax (as gateway/message_templates.py): {name}, {name|default}, {{ and }} for
-- literal braces; anything else is literal text here (the CLI refuses it when a template is saved).

CREATE TABLE subscriber (
    short_code  text        NOT NULL CHECK (short_code = smsgw_short_code(short_code)),
    msisdn      text        NOT NULL,            -- E.164 digits without '+', as subscription.msisdn
    attributes  jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(attributes) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (short_code, msisdn)
);

CREATE TABLE message_template (
    short_code    text        NOT NULL CHECK (short_code = smsgw_short_code(short_code)),
    name          text        NOT NULL CHECK (name <> ''),
    body          text        NOT NULL CHECK (body <> ''),
    message_class text        NOT NULL DEFAULT 'transactional' CHECK (message_class IN ('transactional', 'marketing')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (short_code, name)
);

ALTER TABLE outbound_message
    ADD COLUMN template  text,
    ADD COLUMN variables jsonb CHECK (variables IS NULL OR jsonb_typeof(variables) = 'object'),
    ALTER COLUMN body DROP NOT NULL,
    ADD CONSTRAINT outbound_message_body_or_template CHECK (body IS NOT NULL OR template IS NOT NULL);

-- The text of `template` with each placeholder replaced by vars->>name, else its default, else ''. Values are
-- inserted once, never parsed again (a value '{x}' stays '{x}').
CREATE FUNCTION smsgw_render(template text, vars jsonb) RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    pat constant text := '(\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)(?:\|([^{}]*))?\})';
    pieces text[];
    m text[];
    i int := 1;
    out text;
BEGIN
    IF template IS NULL THEN
        RETURN NULL;
    END IF;
    IF strpos(template, '{') = 0 AND strpos(template, '}') = 0 THEN
        RETURN template;
    END IF;
    pieces := regexp_split_to_array(template, pat);
    out := pieces[1];
    FOR m IN SELECT regexp_matches(template, pat, 'g') LOOP
        i := i + 1;
        IF m[2] IS NULL THEN
            out := out || left(m[1], 1);
        ELSE
            out := out || coalesce(vars ->> m[2], m[3], '');
        END IF;
        out := out || pieces[i];
    END LOOP;
    RETURN out;
END $$;

-- The placeholders of `template` that have neither a value in `vars` nor a default, in order, each once.
CREATE FUNCTION smsgw_template_missing(template text, vars jsonb) RETURNS text[] LANGUAGE sql IMMUTABLE
PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(name ORDER BY first), '{}')
    FROM (SELECT m[2] AS name, min(n) AS first
          FROM regexp_matches(template, '(\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)(?:\|([^{}]*))?\})', 'g')
               WITH ORDINALITY AS t(m, n)
          WHERE m[2] IS NOT NULL AND m[3] IS NULL AND vars ->> m[2] IS NULL
          GROUP BY m[2]) x
$$;

-- Merge `attributes` into the subscriber's (a key set to JSON null is removed); creates the subscriber. Returns
-- the attributes after the merge.
CREATE FUNCTION smsgw_set_attributes(p_short_code text, p_number text, p_attributes jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    sc text := smsgw_short_code(p_short_code);
    n text := smsgw_msisdn(p_number);
    merged jsonb;
BEGIN
    IF p_attributes IS NULL OR jsonb_typeof(p_attributes) <> 'object' THEN
        RAISE EXCEPTION 'attributes must be a JSON object' USING ERRCODE = '22023';
    END IF;
    INSERT INTO subscriber AS s (short_code, msisdn, attributes)
    VALUES (sc, n, jsonb_strip_nulls(p_attributes))
    ON CONFLICT (short_code, msisdn) DO UPDATE
        SET attributes = jsonb_strip_nulls(s.attributes || p_attributes), updated_at = now()
    RETURNING attributes INTO merged;
    RETURN merged;
END $$;

-- BEFORE INSERT on rows naming a template. SECURITY DEFINER: the producer role reads neither templates nor
-- attributes; it only gets its row rendered. The subscriber is found by the destination's digits (as
-- smsgw_cap_number: '+1 202-555-0123' is 12025550123); a national-format destination finds no attributes.
-- A marketing template makes the row marketing (the stricter class wins; a producer cannot send a promotion
-- past the consent check by leaving message_class at its default).
CREATE FUNCTION outbound_message_render() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pat constant text := '(\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)(?:\|([^{}]*))?\})';
    sc text := smsgw_short_code(NEW.source);
    tpl_body text;
    tpl_class text;
    vars jsonb;
    pieces text[];
    m text[];
    v text;
    i int := 1;
    out text;
    missing text[] := '{}';
BEGIN
    SELECT t.body, t.message_class INTO tpl_body, tpl_class
    FROM message_template t WHERE t.short_code = sc AND t.name = NEW.template;
    IF NOT FOUND THEN
        NEW.status := 'rejected';
        NEW.reason := 'template_unknown';
        NEW.detail := format('no template %L on short code %s', NEW.template, sc);
        NEW.done_at := now();
        NEW.updated_at := now();
        RETURN NEW;
    END IF;
    IF tpl_class = 'marketing' THEN
        NEW.message_class := 'marketing';
    END IF;
    vars := coalesce((SELECT s.attributes FROM subscriber s
                      WHERE s.short_code = sc AND s.msisdn = regexp_replace(NEW.destination, '[^0-9]', '', 'g')),
                     '{}'::jsonb)
            || coalesce(NEW.variables, '{}'::jsonb);
    -- One pass: smsgw_render and smsgw_template_missing together (the same rules).
    pieces := regexp_split_to_array(tpl_body, pat);
    out := pieces[1];
    FOR m IN SELECT regexp_matches(tpl_body, pat, 'g') LOOP
        i := i + 1;
        IF m[2] IS NULL THEN
            out := out || left(m[1], 1);
        ELSE
            v := coalesce(vars ->> m[2], m[3]);
            IF v IS NULL AND NOT m[2] = ANY(missing) THEN
                missing := missing || m[2];
            END IF;
            out := out || coalesce(v, '');
        END IF;
        out := out || pieces[i];
    END LOOP;
    IF cardinality(missing) > 0 THEN
        NEW.status := 'rejected';
        NEW.reason := 'template_variable_missing';
        NEW.detail := format('template %L: no value for %s', NEW.template,
                             array_to_string(ARRAY(SELECT '{' || x || '}' FROM unnest(missing) x), ', '));
        NEW.done_at := now();
        NEW.updated_at := now();
        RETURN NEW;
    END IF;
    NEW.body := out;
    RETURN NEW;
END $$;

CREATE TRIGGER outbound_message_render BEFORE INSERT ON outbound_message
    FOR EACH ROW WHEN (NEW.template IS NOT NULL) EXECUTE FUNCTION outbound_message_render();

-- A broadcast that renders per subscriber: smsgw_broadcast with a template instead of a body. `p_variables` are
-- common to every row (a subscriber's attributes fill the rest). Rows of an unknown template or with a missing
-- variable are inserted rejected (the count includes them; the rows say why).
CREATE FUNCTION smsgw_broadcast_template(
    p_short_code text, p_list text, p_template text, p_campaign_key text, p_variables jsonb DEFAULT '{}'::jsonb,
    p_send_after timestamptz DEFAULT now(), p_priority smallint DEFAULT 0
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    sc text := smsgw_short_code(p_short_code);
    inserted bigint;
BEGIN
    IF p_campaign_key IS NULL OR p_campaign_key = '' THEN
        RAISE EXCEPTION 'a broadcast needs a campaign key' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM message_template WHERE short_code = sc AND name = p_template) THEN
        RAISE EXCEPTION 'no template % on short code %', p_template, sc USING ERRCODE = '22023';
    END IF;
    INSERT INTO outbound_message (source, destination, template, variables, priority, send_after, message_class,
                                  list_name, campaign_key)
    SELECT sc, '+' || s.msisdn, p_template, coalesce(p_variables, '{}'::jsonb), p_priority, p_send_after,
           'marketing', p_list, p_campaign_key
    FROM subscription s
    WHERE s.short_code = sc AND s.list_name = p_list AND s.status = 'active'
      AND NOT EXISTS (SELECT 1 FROM opt_out o WHERE o.short_code = s.short_code AND o.msisdn = s.msisdn)
    ON CONFLICT (campaign_key, destination) WHERE campaign_key IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END $$;

-- What producers read about their messages: the view of 0009 with the two new producer columns at the end.
CREATE OR REPLACE VIEW outbound_message_status WITH (security_barrier) AS
SELECT id, source, destination, priority, message_class, list_name, campaign_key, idempotency_key, metadata,
       created_at, send_after, expires_at, status, reason, detail, error_code, receipt_stat, smsc, smsc_message_id,
       parts, attempts, submitted_at, done_at, updated_at, template, variables
FROM outbound_message
WHERE inbound_message_id IS NULL;

-- Grants (0009's header).
DO $grants$
DECLARE
    producer  text := coalesce(nullif(current_setting('smsgw.producer_role', true), ''), 'smsgw_producer');
    gateway   text := coalesce(nullif(current_setting('smsgw.gateway_role', true), ''), 'smsgw_gateway');
    reporting text := coalesce(nullif(current_setting('smsgw.reporting_role', true), ''), 'smsgw_reporting');
    f text;
BEGIN
    -- Definer functions: pinned search_path, no EXECUTE for PUBLIC.
    FOREACH f IN ARRAY ARRAY['smsgw_set_attributes(text, text, jsonb)', 'outbound_message_render()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    -- producer: a row may name a template and carry variables (rendered by the trigger, as the definer).
    EXECUTE format('GRANT INSERT (template, variables) ON outbound_message TO %I', producer);
    -- gateway: reads templates and attributes; broadcasts insert template rows; attributes change through
    -- smsgw_set_attributes only.
    EXECUTE format('GRANT SELECT ON subscriber, message_template TO %I', gateway);
    EXECUTE format('GRANT INSERT (template, variables) ON outbound_message TO %I', gateway);
    EXECUTE format('GRANT EXECUTE ON FUNCTION smsgw_set_attributes(text, text, jsonb),'
                   ' smsgw_broadcast_template(text, text, text, text, jsonb, timestamptz, smallint),'
                   ' smsgw_render(text, jsonb), smsgw_template_missing(text, jsonb)'
                   ' TO %I', gateway);
    -- reporting: read only.
    EXECUTE format('GRANT SELECT ON subscriber, message_template TO %I', reporting);
    EXECUTE format('GRANT EXECUTE ON FUNCTION smsgw_render(text, jsonb), smsgw_template_missing(text, jsonb)'
                   ' TO %I', reporting);
END $grants$;
