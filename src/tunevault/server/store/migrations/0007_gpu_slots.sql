-- 0007: GPU slots. A job asks for a number of GPUs; the claim gives it that many device indexes,
-- recorded while its worker may be alive and cleared when it leaves the worker states.

ALTER TABLE jobs ADD COLUMN gpus INTEGER;      -- GPUs it needs at once; NULL: the box's default (1 with GPUs, else 0)
ALTER TABLE jobs ADD COLUMN devices TEXT;      -- JSON list of device indexes its worker holds; NULL when none
