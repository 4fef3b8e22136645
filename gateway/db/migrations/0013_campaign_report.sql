-- 0013: the campaign report (issue 10, part 5). A campaign is the set of outbound_message rows sharing a
-- campaign_key (what smsgw_broadcast / `smsgw broadcast --campaign KEY` write). Three read-only views:
--   campaign_report    one row per campaign_key: counts by outcome, delivery rates, receipt latency, opt-outs
--   campaign_failures  one row per (campaign_key, status, reason) of the final rows that were not delivered
--   campaign_opt_outs  one row per (campaign_key, msisdn): the opt-outs attributed to a campaign, with evidence
-- Ask them for one campaign (WHERE campaign_key = $1, or = ANY($1)): the key is pushed into every part, which
-- then reads the campaign's rows through outbound_message_campaign_idx (0002) and its recipients' opt-outs
-- through consent_event_opt_out_idx below. No index is added to outbound_message (each one costs every message
-- several writes: every status change is a non-HOT update).
--
-- Opt-out attribution (README "Campaign report"): an opt-out event (consent_event.action = 'opt_out': a STOP,
-- an API opt-out, or leaving the campaign message's own list) of short code S and number N at time T is
-- attributed to the campaign message to N from S submitted at most 24 h before T (submitted_at <= T <
-- submitted_at + 24 h) that was submitted LAST before T (ties: the higher id). Each number counts once per
-- campaign (two STOPs, or a STOP then a re-delivered STOP, are one opt-out). Only marketing rows of a list take
-- part (what a broadcast writes; they are also what the frequency-cap index covers, through which later
-- messages are found); numbers compare as E.164 digits (smsgw_cap_number(destination) = consent_event.msisdn),
-- short codes in their one form (smsgw_short_code(source) = consent_event.short_code).

-- Opt-outs are few next to opt-ins (an import writes one opt_in event per number): a partial index keeps the
-- per-recipient probe (or the scan of every opt-out, for a big campaign) away from the opt-in rows.
CREATE INDEX consent_event_opt_out_idx ON consent_event (short_code, msisdn, created_at) WHERE action = 'opt_out';

CREATE VIEW campaign_opt_outs AS
SELECT DISTINCT ON (m.campaign_key, e.msisdn)
       m.campaign_key, e.short_code, e.msisdn, m.id AS message_id, m.list_name, m.submitted_at,
       e.id AS consent_event_id, e.created_at AS opted_out_at, e.channel, e.keyword, e.list_name AS left_list
FROM outbound_message m
JOIN consent_event e
  ON e.action = 'opt_out'
 AND e.short_code = smsgw_short_code(m.source)
 AND e.msisdn = smsgw_cap_number(m.destination)
 AND e.created_at >= m.submitted_at
 AND e.created_at < m.submitted_at + interval '24 hours'
 AND (e.list_name IS NULL OR e.list_name = m.list_name)
WHERE m.campaign_key IS NOT NULL
  AND m.submitted_at IS NOT NULL
  AND m.message_class = 'marketing' AND m.list_name IS NOT NULL
  -- not when a later campaign message to the number (from that short code, of a list the event concerns)
  -- was submitted before the opt-out: that one takes it. Found through outbound_message_cap_idx (0011).
  AND NOT EXISTS (
      SELECT 1 FROM outbound_message l
      WHERE smsgw_cap_number(l.destination) = e.msisdn
        AND l.message_class = 'marketing' AND l.list_name IS NOT NULL
        AND l.campaign_key IS NOT NULL
        AND l.submitted_at >= m.submitted_at AND l.submitted_at <= e.created_at
        AND (l.submitted_at > m.submitted_at OR l.id > m.id)
        AND smsgw_short_code(l.source) = e.short_code
        AND (e.list_name IS NULL OR e.list_name = l.list_name))
ORDER BY m.campaign_key, e.msisdn, e.created_at, e.id;

-- Final rows that were not delivered, by status and reason (reason as the gateway wrote it: 'receipt UNDELIV
-- err:001', 'ESME_RINVDSTADR', 'opted_out', 'no_receipt_within_timeout', ...).
CREATE VIEW campaign_failures AS
SELECT campaign_key, status, reason, count(*) AS messages
FROM outbound_message
WHERE campaign_key IS NOT NULL AND status IN ('undeliverable', 'failed', 'rejected', 'expired')
GROUP BY campaign_key, status, reason;

CREATE VIEW campaign_report AS
SELECT c.campaign_key, c.short_code, c.list_name,
       c.enqueued,
       c.submitted,                -- ever submitted: submitted_at set (a manual retry clears it)
       c.delivered,
       c.undeliverable, c.expired, c.failed, c.rejected,
       c.undeliverable + c.expired + c.failed + c.rejected AS not_delivered,
       c.queued, c.claimed, c.awaiting_receipt,
       c.queued + c.claimed + c.awaiting_receipt AS pending,
       c.final_submitted,          -- final rows that were submitted: the denominator of delivery_rate
       c.delivered::float8 / nullif(c.final_submitted, 0) AS delivery_rate,
       c.delivered::float8 / nullif(c.enqueued, 0) AS delivery_rate_enqueued,
       c.receipts,                 -- rows with a receipt (receipt_stat set): the latency sample
       c.latency[1] AS receipt_latency_p50_s,
       c.latency[2] AS receipt_latency_p90_s,
       c.latency[3] AS receipt_latency_p99_s,
       c.first_submitted_at, c.last_submitted_at,
       c.first_enqueued_at, c.last_enqueued_at,
       coalesce(o.opt_outs, 0) AS opt_outs,
       coalesce(o.opt_outs, 0)::float8 / nullif(c.submitted, 0) AS opt_out_rate
FROM (
    SELECT campaign_key,
           min(smsgw_short_code(source)) AS short_code,
           min(list_name) AS list_name,
           count(*) AS enqueued,
           count(submitted_at) AS submitted,
           count(*) FILTER (WHERE status = 'delivered') AS delivered,
           count(*) FILTER (WHERE status = 'undeliverable') AS undeliverable,
           count(*) FILTER (WHERE status = 'expired') AS expired,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'rejected') AS rejected,
           count(*) FILTER (WHERE status = 'queued') AS queued,
           count(*) FILTER (WHERE status = 'claimed') AS claimed,
           count(*) FILTER (WHERE status = 'submitted') AS awaiting_receipt,
           count(*) FILTER (WHERE submitted_at IS NOT NULL
                              AND status NOT IN ('queued', 'claimed', 'submitted')) AS final_submitted,
           count(*) FILTER (WHERE receipt_stat IS NOT NULL AND submitted_at IS NOT NULL
                              AND done_at IS NOT NULL) AS receipts,
           percentile_cont(ARRAY[0.5, 0.9, 0.99]::float8[])
               WITHIN GROUP (ORDER BY extract(epoch FROM done_at - submitted_at)::float8)
               FILTER (WHERE receipt_stat IS NOT NULL AND submitted_at IS NOT NULL AND done_at IS NOT NULL)
               AS latency,
           min(submitted_at) AS first_submitted_at,
           max(submitted_at) AS last_submitted_at,
           min(created_at) AS first_enqueued_at,
           max(created_at) AS last_enqueued_at
    FROM outbound_message
    WHERE campaign_key IS NOT NULL
    GROUP BY campaign_key
) c
LEFT JOIN (
    SELECT campaign_key, count(*) AS opt_outs FROM campaign_opt_outs GROUP BY campaign_key
) o ON o.campaign_key = c.campaign_key;

-- Grants (0009's header): views read like tables; reporting and the gateway (admin read commands) may SELECT.
-- The views read consent_event with their owner's rights: the producer role gets none of them.
DO $grants$
DECLARE
    gateway   text := coalesce(nullif(current_setting('smsgw.gateway_role', true), ''), 'smsgw_gateway');
    reporting text := coalesce(nullif(current_setting('smsgw.reporting_role', true), ''), 'smsgw_reporting');
BEGIN
    EXECUTE format('GRANT SELECT ON campaign_report, campaign_failures, campaign_opt_outs TO %I, %I',
                   gateway, reporting);
END $grants$;
