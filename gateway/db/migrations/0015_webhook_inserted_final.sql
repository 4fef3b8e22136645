-- 0015: a row inserted already final (a template the insert trigger could not render, an event whose message was
-- refused: 0012, 0014) gets its message.final webhook event like any other final row. The 0008 triggers fire on
-- UPDATE only, so such rows were final in the table and silent to the CRM.
-- Row level with a WHEN: ordinary inserts (status 'queued') never queue the trigger, so COPY and broadcasts pay
-- nothing. SECURITY DEFINER: the producer role that inserted the row may not write the outbox itself.

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
                jsonb_build_object(
                    'message_id', NEW.id, 'status', NEW.status, 'reason', NEW.reason, 'detail', NEW.detail,
                    'error_code', NEW.error_code, 'receipt_stat', NEW.receipt_stat, 'source', NEW.source,
                    'destination', NEW.destination, 'smsc', NEW.smsc, 'smsc_message_id', NEW.smsc_message_id,
                    'parts', NEW.parts, 'attempts', NEW.attempts, 'idempotency_key', NEW.idempotency_key,
                    'message_class', NEW.message_class, 'metadata', NEW.metadata, 'inbound_message_id',
                    NEW.inbound_message_id, 'created_at', NEW.created_at, 'submitted_at', NEW.submitted_at,
                    'done_at', NEW.done_at))
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
