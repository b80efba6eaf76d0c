-- GitOps deployments: one row per verified push that a rule matched, written in the same
-- transaction as its tasks. (source, delivery) is unique, so a forge's redelivery finds the
-- first deployment and submits nothing. `plan` holds each rule's outcome as JSON, with the
-- id of the task it submitted; the task's state is read from `tasks`.
CREATE TABLE deployments (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    delivery TEXT NOT NULL,
    repo TEXT NOT NULL,
    git_ref TEXT NOT NULL,
    branch TEXT,
    before_sha TEXT NOT NULL,
    sha TEXT NOT NULL,
    author TEXT NOT NULL,
    message TEXT NOT NULL,
    changed TEXT NOT NULL,
    complete INTEGER NOT NULL,
    plan TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (source, delivery)
);
CREATE INDEX deployments_by_repo ON deployments(repo, seq);
