-- Which process registered last (a random id per agent process), and who drained the agent:
-- 'operator' (lasts until undrained, across lapses, restarts and registrations) or 'agent'
-- (it drained itself on the way out; its next process undoes it).
ALTER TABLE agents ADD COLUMN instance_id TEXT;
ALTER TABLE agents ADD COLUMN drained_by TEXT;
UPDATE agents SET drained_by = 'operator' WHERE status = 'draining';
