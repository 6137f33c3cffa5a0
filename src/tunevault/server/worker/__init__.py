"""The per-job child processes (training worker, validator): the only processes that load training/."""
