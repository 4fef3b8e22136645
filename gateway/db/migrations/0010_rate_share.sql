-- 0010: each instance's grant of its SMSC account's rate (gateway/rate_share.py). The heartbeat decides it under
-- an advisory lock from the other live instances' grants, so the grants of the live rows never add up to more
-- than the account rate; an instance never sends faster than the grant its committed row shows.

ALTER TABLE gateway_instance
    -- msg/s this instance may send at until it writes its row again or the row goes stale; 0 = nothing (or no
    -- account rate configured there). NULL: written by a gateway from before 0010, counted as its whole tps.
    ADD COLUMN grant_tps double precision;
