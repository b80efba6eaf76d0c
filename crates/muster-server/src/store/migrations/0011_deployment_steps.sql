-- GitOps deployments beyond one task per rule. Each task a deployment submitted is named
-- here, so the task's end (in the store's transaction that ends it) can submit its rule's
-- real run after a check, and queue the forge's commit status. `held` counts the rules whose
-- tasks wait for a paused source or rule; a resume takes those deployments in push order.
CREATE TABLE deployment_tasks (
    task_id TEXT PRIMARY KEY,
    deployment_seq INTEGER NOT NULL,
    rule_index INTEGER NOT NULL,
    step TEXT NOT NULL              -- check | run
);
CREATE INDEX deployment_tasks_by_deployment ON deployment_tasks(deployment_seq);

ALTER TABLE deployments ADD COLUMN clone_url TEXT;
ALTER TABLE deployments ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN redeploy_of TEXT;
ALTER TABLE deployments ADD COLUMN forge_status TEXT;
ALTER TABLE deployments ADD COLUMN forge_status_error TEXT;
-- Whether its commit statuses go to the forge (the source had a status API when it came).
ALTER TABLE deployments ADD COLUMN statuses INTEGER NOT NULL DEFAULT 0;
CREATE INDEX deployments_held ON deployments(seq) WHERE held > 0;

-- Paused sources and rules. A pause outlives a restart; pausing and resuming are audited.
CREATE TABLE gitops_pauses (
    scope TEXT NOT NULL,            -- source | rule
    name TEXT NOT NULL,
    paused_at INTEGER NOT NULL,
    paused_by TEXT NOT NULL,
    PRIMARY KEY (scope, name)
);

-- Deployments recorded before this migration ran one task per rule, named in their plan.
INSERT INTO deployment_tasks (task_id, deployment_seq, rule_index, step)
SELECT json_extract(r.value, '$.task_id'), d.seq, r.key, 'run'
FROM deployments d, json_each(d.plan) r
WHERE json_extract(r.value, '$.task_id') IS NOT NULL;
