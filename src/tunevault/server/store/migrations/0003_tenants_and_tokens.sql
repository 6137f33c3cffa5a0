-- 0003: tenants own datasets and jobs; API tokens are stored only as SHA-256 hashes.

ALTER TABLE datasets ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE jobs ADD COLUMN created_by TEXT;          -- the token id that asked for it

CREATE INDEX jobs_tenant ON jobs (tenant, id);
-- A retried CreateJob finds its job by (tenant, key): one tenant's key never reaches another's job.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key);
CREATE INDEX datasets_tenant ON datasets (tenant, id);

CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,                   -- public handle, e.g. tok_01...
    token_sha256  TEXT NOT NULL UNIQUE,               -- the secret itself is never stored
    tenant        TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'submitter', 'viewer')),
    name          TEXT NOT NULL DEFAULT '',
    created_at    REAL NOT NULL,
    revoked_at    REAL
);
