-- The bytes of log text stored for a task and the lines dropped past LOG_LIMIT, kept with the
-- task so that the limit holds across posts and restarts without summing its logs each time.
ALTER TABLE tasks ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN log_dropped INTEGER NOT NULL DEFAULT 0;
UPDATE tasks SET log_bytes = (
    SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM task_logs
    WHERE task_logs.task_seq = tasks.seq
);
