-- 0006: envelope encryption at rest. One data key per dataset and per job, stored only wrapped
-- (AES-256-GCM under the master key, which never enters the database). Crypto-shredding sets
-- `wrapped` to NULL (the connection that does it runs with secure_delete on) and keeps the row as
-- a tombstone, so a read of a shredded file says "destroyed" rather than "unknown key".

CREATE TABLE data_keys (
    id             TEXT PRIMARY KEY,                  -- e.g. dk_01...; written in each sealed file's header
    owner_kind     TEXT NOT NULL CHECK (owner_kind IN ('dataset', 'job')),
    owner_id       TEXT NOT NULL,
    wrapped        BLOB,                              -- nonce (12) | AES-GCM(master, data key); NULL once destroyed
    master_key_id  TEXT NOT NULL,                     -- fingerprint of the master key that wrapped it
    created_at     REAL NOT NULL,
    rewrapped_at   REAL,                              -- last key rotation
    destroyed_at   REAL
);

CREATE UNIQUE INDEX data_keys_owner ON data_keys (owner_kind, owner_id);

ALTER TABLE datasets ADD COLUMN encryption_key_id TEXT;   -- NULL: stored before encryption existed
ALTER TABLE datasets ADD COLUMN deleted_at REAL;          -- DeleteDataset: file removed, key destroyed
