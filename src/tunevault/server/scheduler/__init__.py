"""Scheduler: claims queued jobs, runs one worker process per job, records outcomes."""
