-- The task kinds an agent handles, as a sorted JSON array; empty: any kind.
ALTER TABLE agents ADD COLUMN kinds TEXT NOT NULL DEFAULT '[]';
