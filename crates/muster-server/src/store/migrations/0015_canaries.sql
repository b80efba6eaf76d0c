-- Canaries. One row per run: the firing, the hook taking it (and the task it submitted, in
-- the same transaction), the agent's answer, the canary.passed notification, and the verdict.
-- The partial unique index lets one run per canary be in flight, so overlapping firings of a
-- slow canary never pile up. `nonce` is what the task's answer must echo.
CREATE TABLE canary_runs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    canary TEXT NOT NULL,
    trigger TEXT NOT NULL,
    nonce TEXT NOT NULL,
    outcome TEXT NOT NULL,
    fired_at INTEGER NOT NULL,
    deadline INTEGER NOT NULL,
    hooked_at INTEGER,
    task_id TEXT,
    answered_at INTEGER,
    agent_id TEXT,
    notification_id TEXT,
    delivered_at INTEGER,
    finished_at INTEGER,
    latency_ms INTEGER,
    leg TEXT,
    reason TEXT
);
CREATE UNIQUE INDEX canary_runs_in_flight ON canary_runs(canary) WHERE outcome = 'running';
CREATE INDEX canary_runs_by_canary ON canary_runs(canary, seq);
CREATE INDEX canary_runs_finished ON canary_runs(finished_at) WHERE finished_at IS NOT NULL;
