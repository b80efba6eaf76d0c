-- Schedules. `schedules` holds every schedule the server has looked at: those of the config
-- file (spec NULL, the file is the truth) and those created through the API (spec the JSON
-- they were created with); whether one is paused and by whom; and `looked_at`, the last
-- instant its firings were considered up to, so a restart knows what it missed.
-- `schedule_firings` is one row per firing. A cron firing's row is keyed (schedule, 0,
-- fire_at) and its task is submitted in the transaction that inserts the row, so a restart
-- (or a second replica) can never fire one instant twice; an operator's "run now" is keyed
-- (schedule, 1, the moment asked).
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    spec TEXT,
    paused_at INTEGER,
    paused_by TEXT,
    looked_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE schedule_firings (
    schedule TEXT NOT NULL,
    manual INTEGER NOT NULL,
    fire_at INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    task_id TEXT NOT NULL,
    fired_at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    PRIMARY KEY (schedule, manual, fire_at)
) WITHOUT ROWID;

CREATE INDEX schedule_firings_fired ON schedule_firings (fired_at);
