-- 0008: how each job learns: sft (every job before this), dpo or orpo.

ALTER TABLE jobs ADD COLUMN method TEXT NOT NULL DEFAULT 'sft';
