-- Attempts lost through no fault of the task (agent offline or restarted, lease lapsed) since
-- the last operator retry: they spend no retry, and a separate cap ends a task that loses
-- every agent it touches.
ALTER TABLE tasks ADD COLUMN lost_count INTEGER NOT NULL DEFAULT 0;
