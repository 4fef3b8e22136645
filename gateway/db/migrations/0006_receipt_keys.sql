-- 0006: receipts that need no id settings. A receipt parked before its submit_sm_resp was recorded keeps every
-- key its id may have been stored under (gateway/smpp/receipt.py receipt_keys): msgid_key is the id as written,
-- alt_key1 the hex spelling of a decimal id, alt_key2 the decimal value of a hex id. The mark looks each up
-- with an equality join, so each gets a btree index of its own (pending_receipt stays small).
ALTER TABLE pending_receipt ADD COLUMN alt_key1 text, ADD COLUMN alt_key2 text;
CREATE INDEX pending_receipt_alt_key1_idx ON pending_receipt (smsc, alt_key1);
CREATE INDEX pending_receipt_alt_key2_idx ON pending_receipt (smsc, alt_key2);
-- Parked receipts match a mark only while recent, and are dropped by age: both filter on received_at.
CREATE INDEX pending_receipt_received_idx ON pending_receipt (received_at);
