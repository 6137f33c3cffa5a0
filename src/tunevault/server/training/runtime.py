"""Process set-up for training and inference: offline mode, thread count, seeding, and the measured memory peak."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import random
import resource
from pathlib import Path
from typing import Any

THREADS_ENV = "TUNEVAULT_NUM_THREADS"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    # No usage reports, even ones that would only be blocked by the egress guard.
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


def force_offline() -> None:
    """Never reach for the Hugging Face hub or send telemetry; must run before transformers is imported."""
    os.environ.update(OFFLINE_ENV)
    # The tokenizers library forks its own thread pool; in a child process it would only warn.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, further bounded by a cgroup v2 CPU quota."""
    override = os.environ.get(THREADS_ENV)
    if override and override.isdigit() and int(override) > 0:
        return int(override)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        # In a container with a CPU limit the affinity mask still shows every host core.
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def set_threads(processes: int = 1) -> int:
    """Threads for this process: the CPUs shared among the job's `processes` (its ranks under torchrun)."""
    import torch

    threads = max(1, available_cpus() // processes)
    torch.set_num_threads(threads)
    return threads


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks from this size up are mmapped and go back to the OS when freed. glibc's default starts
# at 128 KiB but raises itself (up to 32 MiB) to the size of each mmapped block freed, after which
# activations of a CPU training step (a few MiB each) come from the heap, where the freed ones stay
# mapped and fragment: measured on SmolLM2-135M (batch 8 x 372 tokens) the heap then held about as
# much again as the live tensors. A fixed threshold stops that adjustment.
MMAP_THRESHOLD_BYTES = 1 << 20
TRIM_THRESHOLD_BYTES = 64 << 20


def return_freed_memory_to_os() -> bool:
    """Fix glibc's mmap and trim thresholds so freed activations leave the process; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and macOS have no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def seed_everything(seed: int) -> None:
    """Seed every RNG a job touches; with a fixed thread count, CPU training is then bit-reproducible."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


def quiet_progress_bars() -> None:
    """No tqdm bars in a worker's log: they are carriage-return noise in a file."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def measured_peak_bytes(device: Any) -> int:
    """The process's peak so far: torch.cuda.max_memory_allocated on CUDA, the max RSS on CPU.

    On CUDA this counts tensors only, not the CUDA context or the allocator's cache, so it sits
    below the preflight estimate's total by about the runtime part. `device` is a torch.device or
    its type name.
    """
    if getattr(device, "type", device) == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
