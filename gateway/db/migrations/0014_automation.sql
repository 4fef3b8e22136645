-- 0014: automation (issue 10, part 2): event rules, and scheduled campaigns (table campaign, at the end).
-- A service records that something happened to a customer (`order_shipped` for +12025550123 with
-- {"order_id": "A-17"}); a rule of the short code names the template that answers it, and the message is
-- enqueued in the same transaction, transactional by default, so an order update needs no message code in the
-- service.
--
--   event_rule   (short_code, event) -> template, message_class, priority, enabled. Rules come from the config
--                ([[keywords."<sc>".events]], synced at daemon start: managed_by = 'config') or are managed in
--                SQL (managed_by = 'sql'; a sync never touches them, except that a config rule of the same
--                (short_code, event) replaces one).
--   smsgw_event  one row per event. The BEFORE INSERT trigger below (not AFTER: the event row gets its
--                message_id and outcome as it is written, without a second version of the row) finds the
--                enabled rule and inserts the outbound_message (template + the event's variables; 0012's render
--                trigger renders it, a missing variable ends that row rejected / template_variable_missing),
--                with idempotency_key 'event:<id>' and metadata {"event_id", "event"}.
--                outcome: 'enqueued' (the message is queued), 'rejected' (the message row was inserted already
--                final: its reason says why, e.g. template_variable_missing), 'no_rule' (no enabled rule: no
--                message), 'duplicate' (a message with the key existed: message_id is that one).
-- Producers (0009's role) get no table privileges here (their contract stays outbound_message and its status
-- view): they call smsgw_emit_event(short_code, event, number, variables), a SECURITY DEFINER function that
-- inserts the event and returns (event_id, message_id, outcome).

CREATE TABLE event_rule (
    short_code    text        NOT NULL CHECK (short_code = smsgw_short_code(short_code)),
    event         text        NOT NULL CHECK (event ~ '^[a-z][a-z0-9_.-]*$'),
    template      text        NOT NULL CHECK (template <> ''),
    message_class text        NOT NULL DEFAULT 'transactional' CHECK (message_class IN ('transactional', 'marketing')),
    priority      smallint    NOT NULL DEFAULT 0,
    enabled       boolean     NOT NULL DEFAULT true,
    managed_by    text        NOT NULL DEFAULT 'sql' CHECK (managed_by IN ('config', 'sql')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (short_code, event)
);

CREATE TABLE smsgw_event (
    id          bigserial   PRIMARY KEY,
    short_code  text        NOT NULL,
    name        text        NOT NULL CHECK (name <> ''),
    number      text        NOT NULL CHECK (number <> ''),
    variables   jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(variables) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    message_id  bigint,     -- the outbound_message it produced (no foreign key: old messages are purged)
    outcome     text        CHECK (outcome IN ('enqueued', 'rejected', 'no_rule', 'duplicate'))
);
CREATE INDEX smsgw_event_message_idx ON smsgw_event (message_id) WHERE message_id IS NOT NULL;

CREATE FUNCTION smsgw_event_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r event_rule%ROWTYPE;
    key text;
    msg_id bigint;
    msg_status text;
BEGIN
    NEW.short_code := smsgw_short_code(NEW.short_code);
    NEW.variables := coalesce(NEW.variables, '{}'::jsonb);
    -- Whatever the inserter wrote, the trigger decides these two.
    NEW.message_id := NULL;
    NEW.outcome := NULL;
    SELECT * INTO r FROM event_rule WHERE short_code = NEW.short_code AND event = NEW.name AND enabled;
    IF NOT FOUND THEN
        NEW.outcome := 'no_rule';
        RETURN NEW;
    END IF;
    key := 'event:' || NEW.id;
    INSERT INTO outbound_message (source, destination, template, variables, priority, message_class,
                                  idempotency_key, metadata)
    VALUES (NEW.short_code, NEW.number, r.template, NEW.variables, r.priority, r.message_class, key,
            jsonb_build_object('event_id', NEW.id, 'event', NEW.name))
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, status INTO msg_id, msg_status;
    IF msg_id IS NULL THEN
        SELECT id INTO msg_id FROM outbound_message WHERE idempotency_key = key;
        NEW.outcome := 'duplicate';
    ELSIF msg_status = 'queued' THEN
        NEW.outcome := 'enqueued';
    ELSE
        NEW.outcome := 'rejected';
    END IF;
    NEW.message_id := msg_id;
    RETURN NEW;
END $$;

CREATE TRIGGER smsgw_event_apply BEFORE INSERT ON smsgw_event
    FOR EACH ROW EXECUTE FUNCTION smsgw_event_apply();

-- The producer's way in: insert one event, return what became of it.
CREATE FUNCTION smsgw_emit_event(p_short_code text, p_event text, p_number text,
                                 p_variables jsonb DEFAULT '{}'::jsonb)
RETURNS TABLE (event_id bigint, message_id bigint, outcome text) LANGUAGE sql AS $$
    INSERT INTO smsgw_event (short_code, name, number, variables)
    VALUES (p_short_code, p_event, p_number, coalesce(p_variables, '{}'::jsonb))
    RETURNING id, message_id, outcome
$$;

-- Scheduled campaigns: a broadcast of a template to a list, one-off or recurring, run by the daemon's scheduler
-- (gateway/campaigns.py). `schedule` is a cron expression (5 fields, croniter) or one ISO timestamp. Times are
-- UTC, or with local_time the wall-clock time in each recipient's time zone (attribute `time_zone`, else the
-- number's zone). next_occurrence is the next occurrence as a wall time (UTC when not local_time); next_run is
-- when the scheduler enqueues it (the occurrence itself, or 14 h before it with local_time: the earliest zone).
-- Each occurrence is enqueued once with campaign_key '<key>@<occurrence ISO>': the unique (campaign_key,
-- destination) index of 0002 keeps a second gateway, or a restarted one, from enqueuing it twice.
CREATE TABLE campaign (
    key             text        PRIMARY KEY CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$'),
    short_code      text        NOT NULL CHECK (short_code = smsgw_short_code(short_code)),
    list_name       text        NOT NULL,
    template        text        NOT NULL,
    variables       jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(variables) = 'object'),
    schedule        text        NOT NULL,
    local_time      boolean     NOT NULL DEFAULT false,
    status          text        NOT NULL DEFAULT 'active'
                                CHECK (status IN ('active', 'paused', 'cancelled', 'done')),
    next_occurrence timestamp,
    next_run        timestamptz,
    last_occurrence timestamp,
    last_enqueued   bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'active' OR (next_run IS NOT NULL AND next_occurrence IS NOT NULL))
);
CREATE INDEX campaign_due_idx ON campaign (next_run) WHERE status = 'active';

-- Grants (0009's header).
DO $grants$
DECLARE
    producer  text := coalesce(nullif(current_setting('smsgw.producer_role', true), ''), 'smsgw_producer');
    gateway   text := coalesce(nullif(current_setting('smsgw.gateway_role', true), ''), 'smsgw_gateway');
    reporting text := coalesce(nullif(current_setting('smsgw.reporting_role', true), ''), 'smsgw_reporting');
    f text;
BEGIN
    -- Definer functions: pinned search_path, no EXECUTE for PUBLIC. The trigger runs as the owner: whoever
    -- inserts an event gets its message without any privilege on outbound_message or event_rule.
    FOREACH f IN ARRAY ARRAY['smsgw_event_apply()', 'smsgw_emit_event(text, text, text, jsonb)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    -- producer: events through the function only.
    EXECUTE format('GRANT EXECUTE ON FUNCTION smsgw_emit_event(text, text, text, jsonb) TO %I', producer);
    -- gateway: syncs the configured rules (`smsgw run`); may record events and read them.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON event_rule TO %I', gateway);
    EXECUTE format('GRANT SELECT, INSERT (short_code, name, number, variables) ON smsgw_event TO %I', gateway);
    EXECUTE format('GRANT USAGE ON SEQUENCE smsgw_event_id_seq TO %I', gateway);
    EXECUTE format('GRANT EXECUTE ON FUNCTION smsgw_emit_event(text, text, text, jsonb) TO %I', gateway);
    -- gateway: the scheduler advances campaigns; `smsgw campaign create|pause|resume|cancel` as the gateway role.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON campaign TO %I', gateway);
    -- reporting: read only.
    EXECUTE format('GRANT SELECT ON event_rule, smsgw_event, campaign TO %I', reporting);
END $grants$;
