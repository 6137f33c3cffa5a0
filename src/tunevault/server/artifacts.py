"""Packing a finished job's adapter into the downloadable archive, and reading it back.

With encryption at rest the worker leaves the adapter's files sealed (privacy/encryption.py):
the archive is then built in memory from their plaintext and written sealed with the same job
key, and every reader here (size, digest, chunks) sees the plaintext a client downloads.
Plaintext artifacts (a job from before encryption existed) are packed and read as they are.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

from tunevault.server.privacy.sealing.encryption import (
    open_plain,
    plain_size,
    sealed_key_id,
    sealed_output,
)

ARCHIVE_NAME = "adapter.tar.gz"
CHUNK_BYTES = 256 * 1024


def _files(artifacts_dir: Path) -> list[Path]:
    return sorted(p for p in artifacts_dir.rglob("*") if p.is_file() and not p.is_symlink())


def pack_adapter(artifacts_dir: Path, archive_path: Path, top_folder: str) -> int:
    """Writes a reproducible .tar.gz of `artifacts_dir` (sorted, zeroed times); returns its plaintext size.

    Written to a temporary name and renamed, so a download never sees half an archive.
    """
    files = _files(artifacts_dir)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            with open_plain(path) as handle:
                info = tarfile.TarInfo(f"{top_folder}/{path.relative_to(artifacts_dir)}")
                info.size = handle.seek(0, io.SEEK_END)
                info.mode = 0o644
                handle.seek(0)
                tar.addfile(info, handle)
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0) as gz:
        gz.write(buffer.getvalue())
    key_id = next((k for k in map(sealed_key_id, files) if k), None)
    if key_id is None:
        temporary = archive_path.with_suffix(".tmp")
        temporary.write_bytes(packed.getvalue())
        temporary.replace(archive_path)
    else:
        from tunevault.server.privacy.sealing.keys import default_store

        with sealed_output(archive_path, key_id, default_store().unwrap(key_id)) as writer:
            writer.write(packed.getvalue())
    return len(packed.getvalue())


def archive_size(path: Path) -> int:
    """The archive's size as downloaded (its plaintext)."""
    return plain_size(path)


def sha256_of(path: Path) -> str:
    """SHA-256 of the file's plaintext: what a client computes over its download."""
    digest = hashlib.sha256()
    for block in read_chunks(path):
        digest.update(block)
    return digest.hexdigest()


def read_chunks(path: Path) -> Iterator[bytes]:
    """The file's plaintext in CHUNK_BYTES pieces, decrypted in memory as they are sent."""
    with open_plain(path) as handle:
        yield from iter(lambda: handle.read(CHUNK_BYTES), b"")
