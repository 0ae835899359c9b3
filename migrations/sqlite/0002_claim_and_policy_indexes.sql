-- Indexes that keep the hot queries proportional to the work they return, not to the size of
-- the backlog (found by the P4 benchmark: a provider-job claim sorted every pending job, inside
-- the write lock, so 100,000 queued revokes made each claim take ~250 ms).

-- Claims walk pending rows in queue order and stop at LIMIT: no sort, no scan of done rows.
DROP INDEX jobs_claimable;
CREATE INDEX jobs_claimable ON jobs (lane, seq) WHERE state = 'pending';
DROP INDEX jobs_queue_order;
CREATE INDEX jobs_queue_order ON jobs (lane, queue_key, seq) WHERE state = 'pending';
DROP INDEX deliveries_claimable;
CREATE INDEX deliveries_claimable ON deliveries (received_at, id) WHERE state = 'pending';

-- The policy caps count live grants by subject and by target, case-insensitively (the same
-- expressions and state list as the query, so SQLite can use them).
CREATE INDEX grants_live_subject ON grants (lower(trim(subject)))
    WHERE state IN ('approved', 'active', 'expiring', 'revoking', 'revoke_failed');
CREATE INDEX grants_live_target ON grants (lower(trim(target)))
    WHERE state IN ('approved', 'active', 'expiring', 'revoking', 'revoke_failed');

-- The always-on `unresolved_revoke` rule looks up revoke_failed grants on every decision.
CREATE INDEX grants_revoke_failed ON grants (requested_at, id) WHERE state = 'revoke_failed';
