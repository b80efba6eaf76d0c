-- The outbox: what must reach a consumer (the audit log now; notifiers, NATS and commit
-- statuses later), written in the transaction of the change that causes it and delivered at
-- least once by the delivery loop. `id` (UUIDv7) is the consumer's de-duplication key.
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    topic           TEXT NOT NULL,
    payload         TEXT NOT NULL,   -- JSON
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox(next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX outbox_delivered ON outbox(delivered_at) WHERE delivered_at IS NOT NULL;

-- The audit log: append-only, each entry hashed with the one before it
-- (hash = SHA-256(prev_hash ‖ canonical entry), see audit.rs). `seq` is assigned by the
-- appender, one more than the last entry's (or the checkpoint's), and never reused.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    detail    TEXT NOT NULL,         -- canonical JSON
    outbox_id TEXT NOT NULL UNIQUE,  -- a redelivered outbox row appends nothing
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

-- An entry is never rewritten. This stops mistakes, not an attacker (who can drop the
-- trigger); the chain is what shows an attacker's change.
CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

-- What pruning left of the entries it deleted: the last one's seq and hash, how many went in
-- all, and an HMAC-SHA256 over those with the key in the file `<db>.audit-key`. One row.
CREATE TABLE audit_checkpoint (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,
    hash      TEXT NOT NULL,
    count     INTEGER NOT NULL,
    at        INTEGER NOT NULL,
    signature TEXT NOT NULL
);
