"""The command line that starts a job process: one process, or one rank per device under torchrun.

Both executors build their commands here (the local one runs it, a Kubernetes Job puts it in its pod), so a
distributed job starts the same way wherever it runs.
"""

from __future__ import annotations

from pathlib import Path


def worker_argv(python: str, module: str, jobs_dir: Path, job_id: str, ranks: int = 1) -> list[str]:
    """argv of `module` for one job; with ranks > 1, torchrun on this machine starts that many processes.

    torchrun's --standalone rendezvous picks a free local port, so jobs on one box never collide; its
    agent forwards SIGTERM to every rank and tears the group down when one of them dies.
    """
    if ranks < 1:
        raise ValueError(f"a job needs at least one process, got {ranks}")
    job = ["--jobs-dir", str(jobs_dir), job_id]
    if ranks == 1:
        return [python, "-m", module, *job]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m", module, *job]
