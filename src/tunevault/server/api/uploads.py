"""Receiving a client-streamed dataset: size-capped, hashed while written sealed, checked, then stored.

The bytes are sealed with a new data key for the dataset as they arrive (privacy/encryption.py),
so the upload is never plaintext on disk; the check reads it back decrypting in memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from tunevault.server.config import ServerConfig
from tunevault.server.datasets import check_dataset
from tunevault.server.errors import InvalidArgument, ResourceExhausted
from tunevault.server.ids import new_id
from tunevault.server.privacy.sealing.encryption import SealedWriter
from tunevault.server.privacy.sealing.keys import DataKey, default_store
from tunevault.server.store import DatasetRecord, Store
from tunevault.v1 import tunevault_pb2 as pb

MAX_NAME_CHARS = 200
CHUNK_BYTES = 1024 * 1024  # what a client sends per message (at most 1 MiB)

# What an upload's metadata.format asks for: None detects the row format from the rows.
FORMAT_OVERRIDES: dict[int, str | None] = {
    pb.DATASET_FORMAT_UNSPECIFIED: None,
    pb.DATASET_FORMAT_CHAT_JSONL: None,
    pb.DATASET_FORMAT_CHAT: "chat",
    pb.DATASET_FORMAT_INSTRUCTION: "instruction",
    pb.DATASET_FORMAT_COMPLETION: "completion",
    pb.DATASET_FORMAT_TEXT: "text",
}


def receive_dataset(requests: Iterator[pb.UploadDatasetRequest], store: Store, config: ServerConfig, *,
                    tenant: str, max_bytes: int, limit_name: str) -> DatasetRecord:
    """Stores an upload whose first message is metadata and the rest chunks.

    The bytes land in a temporary file first; only a dataset that passes the check is
    renamed into place and recorded, so a refused upload leaves nothing behind.
    """
    first = next(requests, None)
    if first is None or first.WhichOneof("payload") != "metadata":
        raise InvalidArgument("metadata", "the first message of an upload must carry the metadata")
    metadata = first.metadata
    if len(metadata.name) > MAX_NAME_CHARS:
        raise InvalidArgument("metadata.name", f"longer than {MAX_NAME_CHARS} characters")
    if metadata.format not in FORMAT_OVERRIDES:
        raise InvalidArgument("metadata.format", f"unsupported dataset format {metadata.format}")
    override = FORMAT_OVERRIDES[metadata.format]

    dataset_id = new_id("ds")
    relative = Path("datasets") / f"{dataset_id}.jsonl"
    final_path = config.data_dir / relative
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = final_path.with_suffix(".incoming")
    keys = default_store()
    key = keys.create("dataset", dataset_id)
    stored = False
    try:
        sha256, size = _write_chunks(requests, temporary, max_bytes, limit_name, key)
        check = check_dataset(temporary, override)
        if not check.ok:
            raise InvalidArgument("dataset", check.summary())
        if check.row_count > config.max_dataset_rows:
            raise ResourceExhausted(f"dataset has {check.row_count} rows: max_dataset_rows={config.max_dataset_rows}")
        os.replace(temporary, final_path)
        record = store.insert_dataset(
            dataset_id=dataset_id, name=metadata.name or dataset_id, sha256=sha256, row_count=check.row_count,
            size_bytes=size, format=check.data_format or "chat", path=str(relative), tenant=tenant,
            encryption_key_id=key.id,
        )
        stored = True
    finally:
        temporary.unlink(missing_ok=True)
        if not stored:
            final_path.unlink(missing_ok=True)
            keys.shred("dataset", dataset_id)  # a refused upload's key sealed nothing that is kept
    return record


def _write_chunks(requests: Iterator[pb.UploadDatasetRequest], path: Path, max_bytes: int,
                  limit_name: str, key: DataKey) -> tuple[str, int]:
    """Seals the chunks into `path` as they arrive; returns the plaintext's SHA-256 and size."""
    digest, size = hashlib.sha256(), 0
    with path.open("wb") as handle:
        writer = SealedWriter(handle, key.id, key.key)
        for index, request in enumerate(requests, start=1):
            if request.WhichOneof("payload") != "chunk":
                raise InvalidArgument(f"message {index}", "only the first message may carry metadata")
            size += len(request.chunk)
            if size > max_bytes:
                raise ResourceExhausted(f"upload larger than the limit {limit_name}={max_bytes}")
            digest.update(request.chunk)
            writer.write(request.chunk)
        writer.close()
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest(), size
