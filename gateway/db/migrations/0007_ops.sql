-- 0007: what ops need to see from any process (the status page, `smsgw status`): each instance's binds, rates
-- and last bind error per SMSC, written by the maintenance heartbeat; indexes that keep the status queries off
-- full scans of the queue table.

ALTER TABLE gateway_instance
    ADD COLUMN binds_up      integer          NOT NULL DEFAULT 0,
    ADD COLUMN binds_total   integer          NOT NULL DEFAULT 0,
    ADD COLUMN tps           double precision NOT NULL DEFAULT 0,   -- configured account rate (0 = no limit)
    ADD COLUMN effective_tps double precision NOT NULL DEFAULT 0,   -- after adaptive back-off and the split
    ADD COLUMN last_error    text,                                  -- last bind failure / loss / session error
    ADD COLUMN last_error_at timestamptz;

-- Final rows by time: "delivered / undeliverable today" without a scan of the whole table. Partial: rows still
-- in flight (done_at NULL) never enter it, so only the final update of a row pays for one more index entry.
CREATE INDEX outbound_message_done_idx ON outbound_message (done_at, status) WHERE done_at IS NOT NULL;
-- The last errors: a small index (failures are rare), walked backwards from the newest.
CREATE INDEX outbound_message_failed_idx ON outbound_message (done_at)
    WHERE status IN ('failed', 'undeliverable', 'rejected', 'expired');
-- Opt-outs today (consent_event is append-only and low-volume: the index is cheap).
CREATE INDEX consent_event_created_idx ON consent_event (created_at);
