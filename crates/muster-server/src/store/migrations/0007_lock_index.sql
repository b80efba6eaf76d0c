-- Finds the task that holds a lock key (for "why does this task wait"); partial, so tasks
-- without a lock key cost nothing to write.
CREATE INDEX tasks_by_lock ON tasks(lock_key, seq) WHERE lock_key IS NOT NULL;
