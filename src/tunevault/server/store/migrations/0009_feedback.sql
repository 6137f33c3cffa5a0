-- 0009: feedback on a job's answers (RecordFeedback), the raw material of a preference dataset.
-- The texts (prompt, system, history, answer, rewrite) are private data: they are kept only in
-- `sealed`, sealed with the job's data key (privacy/sealing), never in plain columns, so DeleteJob's
-- crypto-shredding reaches them too. The rows are deleted with the job's files.

CREATE TABLE feedback (
    id           TEXT PRIMARY KEY,                 -- time-sortable, e.g. fb_01...
    job_id       TEXT NOT NULL REFERENCES jobs(id),
    tenant       TEXT NOT NULL,
    rating       INTEGER NOT NULL CHECK (rating IN (-1, 0, 1)),
    has_rewrite  INTEGER NOT NULL,
    sealed       BLOB NOT NULL,                    -- a sealed JSON object of the texts
    created_by   TEXT,                             -- the token id that recorded it
    created_at   REAL NOT NULL
);

CREATE INDEX feedback_job ON feedback (job_id, id);
