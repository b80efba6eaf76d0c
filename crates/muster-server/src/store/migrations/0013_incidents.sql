-- Self-repair. An incident per outage a monitor reported: alerts of one (source, key) fold
-- into its one unresolved incident (the partial unique index makes a second impossible), an
-- escalated one included, so a storm after an escalation opens nothing new; the monitor's
-- recovery resolves it. `incident_events` is its story, each also in the audit log.
-- `repairs` names every task a repair submitted, so the task's end (in the store's
-- transaction that ends it) moves its incident on, and a target's cap and cooldown are counted
-- from it. `repair_pauses` holds self-repair's pauses: '*' for all of it, else a target.
CREATE TABLE incidents (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    alert_key TEXT NOT NULL,
    monitor TEXT NOT NULL,
    target TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    message TEXT NOT NULL,
    labels TEXT NOT NULL,
    url TEXT,
    alerts INTEGER NOT NULL,
    steps INTEGER NOT NULL DEFAULT 0,
    max_steps INTEGER NOT NULL,
    choice TEXT,
    task_id TEXT,
    approval_expires_at INTEGER,
    due_at INTEGER,
    opened_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    closed_at INTEGER
);
CREATE UNIQUE INDEX incidents_unresolved_key ON incidents(source, alert_key)
    WHERE state <> 'resolved';
CREATE INDEX incidents_active ON incidents(seq) WHERE closed_at IS NULL;

CREATE TABLE incident_events (
    seq INTEGER PRIMARY KEY,
    incident_seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX incident_events_by_incident ON incident_events(incident_seq, seq);

CREATE TABLE repairs (
    task_id TEXT PRIMARY KEY,
    incident_seq INTEGER NOT NULL,
    target TEXT NOT NULL,
    action TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    verify_within_ms INTEGER NOT NULL
);
CREATE INDEX repairs_by_target ON repairs(target, started_at);

CREATE TABLE repair_pauses (
    target TEXT PRIMARY KEY,
    paused_at INTEGER NOT NULL,
    paused_by TEXT NOT NULL
);
