-- Agents as they registered; liveness (last heartbeat, load) lives in memory.
CREATE TABLE agents (
    agent_id        TEXT PRIMARY KEY,
    host            TEXT NOT NULL,
    port            INTEGER,
    capabilities    TEXT NOT NULL,   -- JSON array of strings
    mcp_servers     TEXT NOT NULL,   -- JSON array as sent
    max_concurrency INTEGER NOT NULL,
    labels          TEXT NOT NULL,   -- JSON object
    version         TEXT,
    status          TEXT NOT NULL,
    registered_at   INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- Times are milliseconds since the Unix epoch. `seq` is the internal handle and age order;
-- `id` is the UUIDv7 clients see.
CREATE TABLE tasks (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    state            TEXT NOT NULL,
    payload          TEXT NOT NULL,
    capabilities     TEXT NOT NULL,   -- JSON array, sorted
    priority         INTEGER NOT NULL,
    max_retries      INTEGER NOT NULL,
    timeout_s        INTEGER,
    lock_key         TEXT,
    idempotency_key  TEXT UNIQUE,
    run_after        INTEGER,
    labels           TEXT NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    retry_floor      INTEGER NOT NULL DEFAULT 0,  -- attempt number at the last operator retry
    agent_id         TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    assigned_at      INTEGER,
    started_at       INTEGER,
    lease_until      INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    result           TEXT,
    usage            TEXT,
    error            TEXT,
    assignment       TEXT             -- JSON: the latest assignment and its scored candidates
);
CREATE INDEX tasks_by_state ON tasks(state);
CREATE INDEX tasks_by_agent ON tasks(agent_id, state) WHERE agent_id IS NOT NULL;
CREATE INDEX tasks_by_kind ON tasks(kind);
CREATE INDEX tasks_by_finished ON tasks(finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE attempts (
    task_seq   INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    agent_id   TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    outcome    TEXT NOT NULL,
    error      TEXT,
    assignment TEXT,
    PRIMARY KEY (task_seq, attempt)
) WITHOUT ROWID;

CREATE TABLE task_logs (
    id       INTEGER PRIMARY KEY,
    task_seq INTEGER NOT NULL,
    attempt  INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    stream   TEXT NOT NULL,
    text     TEXT NOT NULL
);
CREATE INDEX task_logs_by_task ON task_logs(task_seq, id);
