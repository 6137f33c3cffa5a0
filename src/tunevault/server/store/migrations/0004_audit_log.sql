-- 0004: the append-only, hash-chained audit log.
-- content_hash = sha256(canonical JSON of the entry's fields); entry_hash = sha256(prev_hash + content_hash).
-- audit_head keeps the hash of the newest entry, so removing entries from the end is caught too.

CREATE TABLE audit (
    seq           INTEGER PRIMARY KEY,
    at            REAL NOT NULL,
    principal     TEXT NOT NULL,       -- token id, or "system" for the scheduler
    tenant        TEXT NOT NULL,
    action        TEXT NOT NULL,       -- the RPC or the job transition
    job_id        TEXT,
    dataset_id    TEXT,
    details       TEXT NOT NULL,       -- JSON: hashes, privacy settings, outcome
    prev_hash     TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    entry_hash    TEXT NOT NULL
);

CREATE TABLE audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER NOT NULL,
    entry_hash  TEXT NOT NULL
);

-- Append-only by construction: the appliance never updates or deletes audit rows.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
