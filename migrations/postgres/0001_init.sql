-- jitbridge PostgreSQL schema, version 1. The same tables, columns and conventions as
-- migrations/sqlite/0001_init.sql, so both backends share one row codec (src/store/rows.rs):
-- instants are BIGINT unix milliseconds (UTC); durations are BIGINT seconds; ids are TEXT
-- (hyphenated lower-case UUID); JSON is TEXT (kept byte for byte: audit details are hashed).
-- Enum columns are CHECKed so a hand-edited row fails loudly instead of being misread.

-- The inbox: verified webhook deliveries, committed before the sender gets its 2xx.
CREATE TABLE deliveries (
    id            TEXT    PRIMARY KEY NOT NULL,
    connector     TEXT    NOT NULL,
    dedupe_key    TEXT    NOT NULL,
    received_at   BIGINT  NOT NULL,
    headers       TEXT    NOT NULL,              -- JSON array of [name, value] pairs
    body          BYTEA   NOT NULL,              -- byte for byte as signed
    state         TEXT    NOT NULL DEFAULT 'pending'
                          CHECK (state IN ('pending', 'processed', 'rejected')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       BIGINT  NOT NULL,
    claimed_by    TEXT,
    claimed_until BIGINT,
    last_error    TEXT,
    finished_at   BIGINT,
    CONSTRAINT deliveries_dedupe UNIQUE (connector, dedupe_key)
);
CREATE INDEX deliveries_claimable ON deliveries (received_at, id) WHERE state = 'pending';

-- The grant ledger.
CREATE TABLE grants (
    id            TEXT    PRIMARY KEY NOT NULL,
    connector     TEXT    NOT NULL,
    ticket_id     TEXT    NOT NULL,
    ticket_key    TEXT    NOT NULL,
    ticket_url    TEXT,
    mapping       TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('requested', 'approved', 'active', 'expiring',
                          'revoking', 'revoke_failed', 'expired', 'revoked', 'denied', 'failed',
                          'cancelled')),
    subject       TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    scope         TEXT    NOT NULL,
    provider      TEXT    NOT NULL,
    duration_secs BIGINT  NOT NULL,
    requester     TEXT,                          -- JSON Person or NULL
    approvers     TEXT    NOT NULL,              -- JSON array of Person
    requested_at  BIGINT  NOT NULL,
    approved_at   BIGINT,
    starts_at     BIGINT,
    expires_at    BIGINT,
    ended_at      BIGINT,
    revoke_cause  TEXT    CHECK (revoke_cause IS NULL OR revoke_cause IN ('deadline', 'early')),
    reason        TEXT,
    last_event_at BIGINT  NOT NULL,
    context       TEXT    NOT NULL,              -- JSON
    version       BIGINT  NOT NULL,
    -- An active grant without a deadline would never be revoked.
    CHECK (state <> 'active' OR expires_at IS NOT NULL)
);
-- At most one live (non-terminal) grant per (connector, ticket, mapping), enforced by the
-- database itself so that two instances racing on one approval can never both create one.
CREATE UNIQUE INDEX grants_one_live ON grants (connector, ticket_id, mapping)
    WHERE state NOT IN ('expired', 'revoked', 'denied', 'failed', 'cancelled');
CREATE INDEX grants_by_ticket ON grants (connector, ticket_id, mapping, requested_at);
CREATE INDEX grants_by_ticket_key ON grants (connector, ticket_key);
CREATE INDEX grants_newest ON grants (requested_at, id);
CREATE INDEX grants_deadlines ON grants (expires_at) WHERE state = 'active';
-- The policy caps count live grants by subject and by target, case-insensitively.
CREATE INDEX grants_live_subject ON grants (lower(trim(subject)))
    WHERE state IN ('approved', 'active', 'expiring', 'revoking', 'revoke_failed');
CREATE INDEX grants_live_target ON grants (lower(trim(target)))
    WHERE state IN ('approved', 'active', 'expiring', 'revoking', 'revoke_failed');

-- The outbox: provider calls and writebacks, run in `seq` order within (lane, queue_key).
CREATE TABLE jobs (
    seq           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            TEXT    NOT NULL UNIQUE,
    lane          TEXT    NOT NULL CHECK (lane IN ('provider', 'writeback')),
    queue_key     TEXT    NOT NULL,
    payload       TEXT    NOT NULL,              -- JSON
    state         TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       BIGINT  NOT NULL,
    last_error    TEXT,
    claimed_by    TEXT,
    claimed_until BIGINT,
    created_at    BIGINT  NOT NULL,
    finished_at   BIGINT
);
CREATE INDEX jobs_claimable ON jobs (lane, seq) WHERE state = 'pending';
CREATE INDEX jobs_queue_order ON jobs (lane, queue_key, seq) WHERE state = 'pending';
CREATE INDEX jobs_by_state ON jobs (state, seq);

-- The audit chain. `seq` is assigned by the store (1, 2, 3, ... without gaps); appends are
-- serialized by a transaction-scoped advisory lock, so several instances extend one chain.
CREATE TABLE audit (
    seq        BIGINT  PRIMARY KEY NOT NULL,
    at         BIGINT  NOT NULL,
    kind       TEXT    NOT NULL,
    grant_id   TEXT,
    connector  TEXT,
    ticket_key TEXT,
    actor      TEXT,
    detail     TEXT    NOT NULL,                 -- JSON
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL
);
CREATE INDEX audit_by_grant ON audit (grant_id, seq);

-- Append-only: the chain detects edits, this trigger refuses the casual ones.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only';
END;
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
