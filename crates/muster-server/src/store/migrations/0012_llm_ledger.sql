-- The LLM ledger: one row per call to a model (kept for RETENTION), and daily sums per
-- workflow, provider and model, which retention folds old calls into and keeps. Money is in
-- millionths of the price table's currency, so sums are exact.
CREATE TABLE llm_calls (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    at INTEGER NOT NULL,
    workflow TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,      -- of the prompt template, to bisect a change to a prompt
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    outcome TEXT NOT NULL,          -- ok | error | refused
    error TEXT
);
CREATE INDEX llm_calls_by_at ON llm_calls(at);
CREATE INDEX llm_calls_by_workflow ON llm_calls(workflow, at);

CREATE TABLE llm_daily (
    day TEXT NOT NULL,              -- YYYY-MM-DD, UTC
    workflow TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    calls INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    PRIMARY KEY (day, workflow, provider, model)
);
