"""Writing a folder all at once: fill a private sibling, then rename it into place.

Checkpoints, adapters, merged models, imported models and the quantized-base cache are folders
other processes read (the scheduler packs adapters, the inference process loads them). A reader
must see a whole folder or none, and a crash must leave the previous one, never half of each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(target: Path, *, replace_existing: bool = True) -> Iterator[Path]:
    """Yields an empty folder beside `target`; on a clean exit it becomes `target` in one rename.

    The folder's name starts with a dot, so listings of models and checkpoints skip it. With
    replace_existing, a folder already at `target` is moved aside first and removed only once the
    new one is in place. Without, the rename raises OSError when another process got there first,
    for the caller to decide whether its copy is as good.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it private; these folders are read by other processes
        if replace_existing and target.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{target.name}-previous-", dir=target.parent))
            os.rename(target, previous / target.name)
            os.rename(staging, target)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
