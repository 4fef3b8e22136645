-- 0015: a row inserted already final (a template the insert trigger could not render, an event whose message was
-- refused: 0012, 0014) gets its message.final webhook event like any other final row. The 0008 triggers fire on
-- UPDATE only, so such rows were final in the table and silent to the CRM.
-- Row level with a WHEN: ordinary inserts (status 'queued') never queue the trigger, so COPY and broadcasts pay
-- nothing. SECURITY DEFINER: the producer role that inserted the row may not write the outbox itself.

-- The data of a message event, in one place: the UPDATE trigger of 0008 (replaced below to use it) and the INSERT
-- trigger here send the same fields.
CREATE FUNCTION smsgw_webhook_message_data(m outbound_message) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'message_id', m.id, 'status', m.status, 'reason', m.reason, 'detail', m.detail,
        'error_code', m.error_code, 'receipt_stat', m.receipt_stat, 'source', m.source,
        'destination', m.destination, 'smsc', m.smsc, 'smsc_message_id', m.smsc_message_id,
        'parts', m.parts, 'attempts', m.attempts, 'idempotency_key', m.idempotency_key,
        'message_class', m.message_class, 'metadata', m.metadata, 'inbound_message_id',
        m.inbound_message_id, 'created_at', m.created_at, 'submitted_at', m.submitted_at,
        'done_at', m.done_at)
$$;

CREATE OR REPLACE FUNCTION smsgw_webhook_message_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoint WHERE enabled) THEN
        RETURN NULL;
    END IF;
    WITH ins AS (
        INSERT INTO webhook_event (type, ordering_key, short_code, data)
        SELECT CASE WHEN n.status = 'submitted' THEN 'message.submitted' ELSE 'message.final' END,
               'msg:' || n.id, smsgw_short_code(n.source), smsgw_webhook_message_data(n)
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

CREATE FUNCTION smsgw_webhook_inserted_final() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoint WHERE enabled) THEN
        RETURN NULL;
    END IF;
    WITH ins AS (
        INSERT INTO webhook_event (type, ordering_key, short_code, data)
        VALUES ('message.final', 'msg:' || NEW.id, smsgw_short_code(NEW.source),
                smsgw_webhook_message_data(NEW))
        RETURNING id
    )
    SELECT array_agg(id) INTO ids FROM ins;
    PERFORM smsgw_webhook_fan_out(ids);
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_inserted_final AFTER INSERT ON outbound_message
    FOR EACH ROW WHEN (NEW.status IN ('delivered', 'undeliverable', 'expired', 'rejected', 'failed'))
    EXECUTE FUNCTION smsgw_webhook_inserted_final();

DO $definer$
BEGIN
    EXECUTE format('ALTER FUNCTION smsgw_webhook_inserted_final() SECURITY DEFINER SET search_path = %I, pg_temp',
                   current_schema());
    REVOKE EXECUTE ON FUNCTION smsgw_webhook_inserted_final() FROM PUBLIC;
END $definer$;
