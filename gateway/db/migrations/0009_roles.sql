-- 0009: least-privilege roles, and a consent ledger that nobody but its owner can empty or rewrite.
--
-- Three NOLOGIN group roles (names from the custom settings smsgw.producer_role / smsgw.gateway_role /
-- smsgw.reporting_role when set, e.g. `ALTER DATABASE smsgw SET smsgw.producer_role = 'acme_producer'` before
-- migrating, or `migrate(conn, roles=...)`; else the defaults below). Operators give them LOGIN, or grant them to
-- login roles of their own (README "Security: roles and secrets"):
--   producer   INSERT into the queue (producer columns only, never a status, a result or is_opt_out_confirmation),
--              read statuses through the view outbound_message_status; no consent table at all.
--   gateway    what the daemon (`smsgw run`, `smsgw webhooks run`) does and nothing more; owns nothing, so it
--              cannot run DDL. The consent ledger is append-only for it (INSERT, SELECT); opt-outs and
--              subscriptions change only through the SECURITY DEFINER consent functions, which record evidence.
--   reporting  SELECT on every table and view; no writes.
-- Roles are cluster-wide (this file runs once per database: CREATE ROLE only when missing, and a concurrent
-- migration of another database in the same cluster that created it first is not an error); privileges are
-- per database and granted here on this database's objects.
--
-- FUTURE MIGRATIONS MUST KEEP THE GRANTS RIGHT. A migration that
--   * adds a table: GRANT SELECT to the reporting role, and to the gateway role exactly what the daemon's SQL
--     does with it (sequences of serial columns: USAGE where it inserts); the producer role gets nothing unless
--     the table is part of the producer contract;
--   * adds a column to outbound_message a producer may write: GRANT INSERT (col) to the producer role (and add it
--     to outbound_message_status if producers should read it); a column the gateway updates: GRANT UPDATE (col);
--   * replaces smsgw_opt_in / smsgw_opt_out / smsgw_leave_list (CREATE OR REPLACE resets SECURITY DEFINER and
--     the search_path): declare them SECURITY DEFINER SET search_path = <schema>, pg_temp again.
-- tests/test_roles.py checks the catalogue (every table readable by reporting and gateway, the producer's columns,
-- the definer functions) and runs the daemon as the gateway role, so a forgotten grant fails the tests.
-- Read the role names as the DO blocks below do: current_setting('smsgw.gateway_role', true), else the default.

DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY[
        coalesce(nullif(current_setting('smsgw.producer_role', true), ''), 'smsgw_producer'),
        coalesce(nullif(current_setting('smsgw.gateway_role', true), ''), 'smsgw_gateway'),
        coalesce(nullif(current_setting('smsgw.reporting_role', true), ''), 'smsgw_reporting')
    ] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION
                -- Another database of this cluster migrating at the same moment created it first.
                WHEN duplicate_object OR unique_violation THEN NULL;
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'role % does not exist and % may not create roles', r, current_user
                        USING HINT = format('create it once per cluster as a role with CREATEROLE: '
                                            'CREATE ROLE %I NOLOGIN; then migrate again', r);
            END;
        END IF;
    END LOOP;
END $roles$;

-- The ledger cannot be emptied either: TRUNCATE skips row triggers, so a statement-level one refuses it.
CREATE TRIGGER consent_event_no_truncate BEFORE TRUNCATE ON consent_event
    FOR EACH STATEMENT EXECUTE FUNCTION consent_event_append_only();

-- What producers read about their messages: the producer columns and the results, never the keyword replies
-- (rows answering an MO: who said STOP or HELP is consent data). security_barrier: a producer's own function in
-- a WHERE clause cannot see the rows the view filters out.
CREATE VIEW outbound_message_status WITH (security_barrier) AS
SELECT id, source, destination, priority, message_class, list_name, campaign_key, idempotency_key, metadata,
       created_at, send_after, expires_at, status, reason, detail, error_code, receipt_stat, smsc, smsc_message_id,
       parts, attempts, submitted_at, done_at, updated_at
FROM outbound_message
WHERE inbound_message_id IS NULL;

-- Consent state (opt_out, subscription) changes only here, with its evidence in consent_event: the gateway role
-- may read those tables but not write them. smsgw_opt_in is the only way an opt_out row is removed. Callers need
-- EXECUTE, which PUBLIC has no more; search_path pinned to this schema, pg_temp last (no shadowing tables).
DO $definer$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'smsgw_opt_in(text, text, text, text, text, text, bigint, text)',
        'smsgw_opt_out(text, text, text, text, text, bigint, text)',
        'smsgw_leave_list(text, text, text, text, text, text, bigint, text)'
    ] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $definer$;

DO $grants$
DECLARE
    producer  text := coalesce(nullif(current_setting('smsgw.producer_role', true), ''), 'smsgw_producer');
    gateway   text := coalesce(nullif(current_setting('smsgw.gateway_role', true), ''), 'smsgw_gateway');
    reporting text := coalesce(nullif(current_setting('smsgw.reporting_role', true), ''), 'smsgw_reporting');
    t text;
BEGIN
    -- PUBLIC has USAGE on the public schema; a schema of our own needs it granted (when we may).
    IF has_schema_privilege(current_schema(), 'USAGE WITH GRANT OPTION') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I, %I, %I', current_schema(), producer, gateway, reporting);
    END IF;

    -- producer: the producer columns of the README contract, nothing the gateway owns. SELECT (id) for
    -- RETURNING id, SELECT (idempotency_key) for ON CONFLICT (idempotency_key) DO NOTHING; statuses via the view.
    EXECUTE format('GRANT INSERT (source, destination, body, priority, send_after, expires_at, idempotency_key,'
                   ' message_class, metadata, list_name, campaign_key) ON outbound_message TO %I', producer);
    EXECUTE format('GRANT SELECT (id, idempotency_key) ON outbound_message TO %I', producer);
    EXECUTE format('GRANT SELECT ON outbound_message_status TO %I', producer);
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I',
                   pg_get_serial_sequence('outbound_message', 'id'), producer);

    -- gateway: from the SQL of gateway/db/outbound_sql.py, gateway/results.py, keywords/sql.py,
    -- gateway/webhooks/sql.py + ops_sql.py, gateway/db/ops_sql.py, gateway/maintenance.py and the triggers its
    -- statements fire (they run as the gateway role: webhook_event / webhook_delivery inserts).
    EXECUTE format('GRANT SELECT ON outbound_message, outbound_message_status TO %I', gateway);
    -- Keyword replies (keywords/sql.py ENQUEUE_REPLIES) and `smsgw broadcast` (smsgw_broadcast, SECURITY INVOKER).
    EXECUTE format('GRANT INSERT (source, destination, body, priority, send_after, message_class, list_name,'
                   ' campaign_key, inbound_message_id, is_opt_out_confirmation) ON outbound_message TO %I', gateway);
    -- The status columns: claim, marks, settles, receipts, maintenance. Never the producer's columns.
    EXECUTE format('GRANT UPDATE (status, attempts, claimed_by, claimed_until, smsc, bind_name, smsc_message_id,'
                   ' smsc_msgid_key, submitted_at, done_at, receipt_stat, error_code, reason, detail, send_after,'
                   ' parts, updated_at) ON outbound_message TO %I', gateway);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON message_part TO %I', gateway);
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON pending_receipt, mo_part TO %I', gateway);
    EXECUTE format('GRANT SELECT, INSERT ON inbound_message, quarantine, consent_event, webhook_event TO %I',
                   gateway);
    EXECUTE format('GRANT DELETE ON webhook_event TO %I', gateway);  -- pruning (maintenance)
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON gateway_instance, webhook_delivery TO %I', gateway);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON subscriber_list, webhook_endpoint TO %I', gateway);
    -- Read for the send-time consent check and the status page; written only through the consent functions.
    EXECUTE format('GRANT SELECT ON subscription, opt_out, schema_migrations TO %I', gateway);
    FOREACH t IN ARRAY ARRAY['outbound_message', 'pending_receipt', 'inbound_message', 'mo_part', 'quarantine',
                             'consent_event', 'webhook_event', 'webhook_delivery'] LOOP
        EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', pg_get_serial_sequence(t, 'id'), gateway);
    END LOOP;
    EXECUTE format('GRANT EXECUTE ON FUNCTION smsgw_msisdn(text), smsgw_short_code(text),'
                   ' smsgw_opt_in(text, text, text, text, text, text, bigint, text),'
                   ' smsgw_opt_out(text, text, text, text, text, bigint, text),'
                   ' smsgw_leave_list(text, text, text, text, text, text, bigint, text),'
                   ' smsgw_broadcast(text, text, text, text, timestamptz, smallint),'
                   ' smsgw_webhook_fan_out(bigint[]) TO %I', gateway);

    -- reporting: every table and view of the gateway, read only.
    FOREACH t IN ARRAY ARRAY['outbound_message', 'outbound_message_status', 'message_part', 'pending_receipt',
                             'inbound_message', 'mo_part', 'quarantine', 'gateway_instance', 'subscriber_list',
                             'subscription', 'opt_out', 'consent_event', 'webhook_endpoint', 'webhook_event',
                             'webhook_delivery', 'schema_migrations'] LOOP
        EXECUTE format('GRANT SELECT ON %I TO %I', t, reporting);
    END LOOP;
    EXECUTE format('GRANT EXECUTE ON FUNCTION smsgw_msisdn(text), smsgw_short_code(text) TO %I', reporting);
END $grants$;
