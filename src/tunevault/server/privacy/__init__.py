"""Privacy: PII scrubbing of datasets before training (see pii.py)."""
