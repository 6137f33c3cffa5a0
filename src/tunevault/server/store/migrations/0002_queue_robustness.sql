-- 0002: what a durable queue needs: scheduled start, retry history, pause, deletion, worker pid.

ALTER TABLE jobs ADD COLUMN not_before REAL;                           -- not claimed before this time
ALTER TABLE jobs ADD COLUMN error_history TEXT NOT NULL DEFAULT '[]';  -- JSON list of {attempt, code, message, at}
ALTER TABLE jobs ADD COLUMN pause_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN artifacts_deleted_at REAL;
ALTER TABLE jobs ADD COLUMN worker_pid INTEGER;                        -- to make sure an old worker is gone before a new one starts
