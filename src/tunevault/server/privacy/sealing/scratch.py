"""Private scratch folders on a tmpfs: the only place a decrypted dataset, checkpoint or adapter may be a file.

/dev/shm by default (RAM-backed on Linux, and a memory emptyDir in the Helm chart);
TUNEVAULT_SCRATCH_DIR names another tmpfs. A scratch root that is not a RAM file system is
refused unless TUNEVAULT_SCRATCH_ALLOW_DISK=1 says the operator accepts plaintext on that disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tunevault.server.errors import FailedPrecondition

SCRATCH_ENV = "TUNEVAULT_SCRATCH_DIR"
ALLOW_DISK_ENV = "TUNEVAULT_SCRATCH_ALLOW_DISK"
DEFAULT_SCRATCH = Path("/dev/shm")
RAM_FILE_SYSTEMS = {"tmpfs", "ramfs"}


def file_system_type(path: Path) -> str | None:
    """The type of the mount holding `path`, from /proc/self/mounts (longest matching mount point)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    resolved, best = str(path.resolve()), ("", None)
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, parts[2])
    return best[1]


def scratch_root() -> Path:
    root = Path(os.environ.get(SCRATCH_ENV) or DEFAULT_SCRATCH)
    if not root.is_dir() or not os.access(root, os.W_OK):
        raise FailedPrecondition(f"scratch directory {root} is missing or not writable: decrypted data needs a "
                                 f"tmpfs (set {SCRATCH_ENV})")
    if file_system_type(root) not in RAM_FILE_SYSTEMS and os.environ.get(ALLOW_DISK_ENV, "") in ("", "0"):
        raise FailedPrecondition(f"scratch directory {root} is not a tmpfs: decrypted data would reach a disk "
                                 f"(mount a tmpfs there, or set {ALLOW_DISK_ENV}=1 to accept that)")
    return root


def make_private_dir(prefix: str) -> Path:
    """A new 0700 folder under the scratch root (removed by the caller with remove())."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))


def remove_stale(prefix: str) -> None:
    """Removes folders left by a killed process that used the same prefix (e.g. an earlier attempt of a job)."""
    try:
        root = scratch_root()
    except FailedPrecondition:
        return
    for leftover in root.glob(f"{prefix}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
