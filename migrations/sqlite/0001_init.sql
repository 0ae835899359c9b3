-- jitbridge SQLite schema, version 1.
-- Conventions: instants are INTEGER unix milliseconds (UTC); durations are INTEGER seconds;
-- ids are TEXT (hyphenated lower-case UUID); JSON is TEXT. Enum columns are CHECKed so a
-- hand-edited row fails loudly instead of being misread.

-- The inbox: verified webhook deliveries, committed before the sender gets its 2xx.
CREATE TABLE deliveries (
    id            TEXT    PRIMARY KEY NOT NULL,
    connector     TEXT    NOT NULL,
    dedupe_key    TEXT    NOT NULL,
    received_at   INTEGER NOT NULL,
    headers       TEXT    NOT NULL,              -- JSON array of [name, value] pairs
    body          BLOB    NOT NULL,              -- byte for byte as signed
    state         TEXT    NOT NULL DEFAULT 'pending'
                          CHECK (state IN ('pending', 'processed', 'rejected')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       INTEGER NOT NULL,
    claimed_by    TEXT,
    claimed_until INTEGER,
    last_error    TEXT,
    finished_at   INTEGER,
    UNIQUE (connector, dedupe_key)
);
CREATE INDEX deliveries_claimable ON deliveries (state, next_at, received_at);

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
    duration_secs INTEGER NOT NULL,
    requester     TEXT,                          -- JSON Person or NULL
    approvers     TEXT    NOT NULL,              -- JSON array of Person
    requested_at  INTEGER NOT NULL,
    approved_at   INTEGER,
    starts_at     INTEGER,
    expires_at    INTEGER,
    ended_at      INTEGER,
    revoke_cause  TEXT    CHECK (revoke_cause IS NULL OR revoke_cause IN ('deadline', 'early')),
    reason        TEXT,
    last_event_at INTEGER NOT NULL,
    context       TEXT    NOT NULL,              -- JSON
    version       INTEGER NOT NULL,
    -- An active grant without a deadline would never be revoked.
    CHECK (state <> 'active' OR expires_at IS NOT NULL)
);
-- At most one live (non-terminal) grant per (connector, ticket, mapping), enforced by the
-- database itself so that two racing approvals can never both create one.
CREATE UNIQUE INDEX grants_one_live ON grants (connector, ticket_id, mapping)
    WHERE state NOT IN ('expired', 'revoked', 'denied', 'failed', 'cancelled');
CREATE INDEX grants_by_ticket ON grants (connector, ticket_id, mapping, requested_at);
CREATE INDEX grants_by_ticket_key ON grants (connector, ticket_key);
CREATE INDEX grants_newest ON grants (requested_at, id);
CREATE INDEX grants_deadlines ON grants (expires_at) WHERE state = 'active';

-- The outbox: provider calls and writebacks, run in `seq` order within (lane, queue_key).
CREATE TABLE jobs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    lane          TEXT    NOT NULL CHECK (lane IN ('provider', 'writeback')),
    queue_key     TEXT    NOT NULL,
    payload       TEXT    NOT NULL,              -- JSON
    state         TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       INTEGER NOT NULL,
    last_error    TEXT,
    claimed_by    TEXT,
    claimed_until INTEGER,
    created_at    INTEGER NOT NULL,
    finished_at   INTEGER
);
CREATE INDEX jobs_claimable ON jobs (lane, state, next_at, seq);
CREATE INDEX jobs_queue_order ON jobs (lane, queue_key, state, seq);
CREATE INDEX jobs_by_state ON jobs (state, seq);

-- The audit chain. `seq` is assigned by the store (1, 2, 3, ... without gaps).
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY NOT NULL,
    at         INTEGER NOT NULL,
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

-- Append-only: the chain detects edits, these triggers refuse the casual ones.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;
