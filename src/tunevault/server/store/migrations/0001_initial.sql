-- 0001: datasets, jobs and their events.
-- Times are Unix seconds (REAL). JSON columns hold objects written by the store only.

CREATE TABLE datasets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    row_count   INTEGER NOT NULL,
    size_bytes  INTEGER NOT NULL,
    format      TEXT NOT NULL,
    path        TEXT NOT NULL,          -- relative to the data directory
    created_at  REAL NOT NULL
);

CREATE TABLE jobs (
    id                      TEXT PRIMARY KEY,   -- time-sortable, so ORDER BY id is creation order
    state                   TEXT NOT NULL,
    dataset_id              TEXT NOT NULL REFERENCES datasets(id),
    validation_dataset_id   TEXT REFERENCES datasets(id),
    base_model              TEXT NOT NULL,
    hyperparameters         TEXT NOT NULL,      -- JSON: as requested (null = auto)
    resolved_hyperparameters TEXT,              -- JSON: what the worker was told
    idempotency_key         TEXT,
    display_name            TEXT NOT NULL DEFAULT '',
    priority                INTEGER NOT NULL DEFAULT 0,
    attempt                 INTEGER NOT NULL DEFAULT 0,
    max_attempts            INTEGER NOT NULL DEFAULT 3,
    cancel_requested        INTEGER NOT NULL DEFAULT 0,
    step                    INTEGER NOT NULL DEFAULT 0,
    total_steps             INTEGER NOT NULL DEFAULT 0,
    trained_tokens          INTEGER NOT NULL DEFAULT 0,
    error_code              TEXT,
    error_message           TEXT,
    result                  TEXT,               -- JSON: adapter path, metrics, archive size
    lease_expires_at        REAL,
    created_at              REAL NOT NULL,
    queued_at               REAL,
    started_at              REAL,
    finished_at             REAL
);

CREATE INDEX jobs_claim_order ON jobs (state, priority DESC, id);

CREATE TABLE events (
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    sequence    INTEGER NOT NULL,
    type        TEXT NOT NULL,
    message     TEXT NOT NULL DEFAULT '',
    metrics     TEXT NOT NULL DEFAULT '{}',     -- JSON: name -> number
    state       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
