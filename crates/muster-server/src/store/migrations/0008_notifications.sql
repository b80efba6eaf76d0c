-- Notifications: one row per message on its way to one channel. The outbox's notice consumer
-- writes them (one per channel a rule sends the notice to); the messenger sends them, one in
-- flight per channel, retrying with backoff until delivered or given up.
CREATE TABLE notifications (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,   -- UUIDv7, sent as the delivery id
    notice_id       TEXT NOT NULL,          -- the outbox row of the (first) notice
    channel         TEXT NOT NULL,
    event           TEXT NOT NULL,          -- of the last notice it reports
    subject         TEXT NOT NULL,
    grp             TEXT NOT NULL,          -- the quiet-period group
    title           TEXT NOT NULL,
    message         TEXT NOT NULL,
    link            TEXT,
    count           INTEGER NOT NULL DEFAULT 1,  -- notices it reports (more for a digest)
    digest          INTEGER NOT NULL DEFAULT 0,  -- sent at the end of a quiet period
    event_at        INTEGER NOT NULL,       -- when the last notice it reports happened
    state           TEXT NOT NULL,          -- pending | delivered | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    due_at          INTEGER NOT NULL,       -- first due: the give-up clock starts here
    next_attempt_at INTEGER NOT NULL,
    finished_at     INTEGER,                -- delivered or given up
    last_error      TEXT
);
CREATE INDEX notifications_due ON notifications(next_attempt_at) WHERE state = 'pending';
CREATE INDEX notifications_finished ON notifications(finished_at) WHERE finished_at IS NOT NULL;

-- Each attempt to send, as the service answered it.
CREATE TABLE notification_attempts (
    notification_seq INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    started_at       INTEGER NOT NULL,
    ended_at         INTEGER,
    status           INTEGER,               -- the HTTP status, if one came
    outcome          TEXT,                  -- delivered | retry | refused; NULL while in flight
    detail           TEXT,                  -- the start of the answer, or the error
    PRIMARY KEY (notification_seq, attempt)
) WITHOUT ROWID;

-- Quiet periods: per channel and group, until when a notice folds into a digest instead of
-- making a message of its own, and the digest still open to folding.
CREATE TABLE notify_windows (
    channel    TEXT NOT NULL,
    grp        TEXT NOT NULL,
    free_at    INTEGER NOT NULL,
    digest_seq INTEGER,
    PRIMARY KEY (channel, grp)
) WITHOUT ROWID;
