"""Packing a finished job's adapter into the downloadable archive, and reading it back."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

ARCHIVE_NAME = "adapter.tar.gz"
CHUNK_BYTES = 256 * 1024


def pack_adapter(artifacts_dir: Path, archive_path: Path, top_folder: str) -> int:
    """Writes a reproducible .tar.gz of `artifacts_dir` (sorted, zeroed times); returns its size.

    Written to a temporary name and renamed, so a download never sees half an archive.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in artifacts_dir.rglob("*") if p.is_file() and not p.is_symlink()):
            info = tarfile.TarInfo(f"{top_folder}/{path.relative_to(artifacts_dir)}")
            info.size = path.stat().st_size
            info.mode = 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    temporary = archive_path.with_suffix(".tmp")
    with temporary.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
        packed.write(buffer.getvalue())
    temporary.replace(archive_path)
    return archive_path.stat().st_size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from iter(lambda: handle.read(CHUNK_BYTES), b"")
