-- 0005: the per-job PII mode (off, redact, reject).

ALTER TABLE jobs ADD COLUMN pii_mode TEXT NOT NULL DEFAULT 'off';
