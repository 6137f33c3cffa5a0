"""The sealed file format: files encrypted at rest with AES-256-GCM, in fixed-size chunks, streamed.

Layout (all integers big-endian):

    header   MAGIC (8) | chunk_size (4) | key_id length (1) | key_id (ASCII) | nonce prefix (8)
    chunk i  AES-GCM(data key, nonce = prefix | i (4), plaintext[i*chunk_size : (i+1)*chunk_size],
                     associated data = header | i (8) | final (1))  -> ciphertext + 16-byte tag

Every chunk is full except the last, which carries final=1 (an empty file is one empty final
chunk). Binding the index and the final flag into each chunk's nonce and associated data makes
reordering, dropping, truncating or appending chunks fail authentication; binding the header
means the key id cannot be swapped. Fixed-size chunks also give random access, so a Parquet
reader (or a tar reader) can seek in a sealed file without it ever being decrypted to disk.

Readers go through open_plain(), which passes a plaintext file through unchanged: files written
before encryption existed stay readable, and code that reads dataset or artifact files needs one
call whether or not the file is sealed.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"TVSEAL1\n"
CHUNK_SIZE = 64 * 1024
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 8
MAX_CHUNKS = 2**32  # the chunk index fills the last 4 bytes of the 12-byte nonce


class DecryptionError(ValueError):
    """A sealed file that fails authentication: tampered with, truncated, reordered, or the wrong key."""


# Resolves a key id from a file header to its 32-byte data key (keys.KeyStore.unwrap).
KeyLookup = Callable[[str], bytes]


def _header(key_id: str, nonce_prefix: bytes, chunk_size: int) -> bytes:
    raw_id = key_id.encode("ascii")
    if not 0 < len(raw_id) < 256:
        raise ValueError(f"key id must be 1-255 ASCII characters, got {key_id!r}")
    return MAGIC + struct.pack(">IB", chunk_size, len(raw_id)) + raw_id + nonce_prefix


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= MAX_CHUNKS:
        raise ValueError("file too large for one nonce prefix")
    return prefix + struct.pack(">I", index)


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">QB", index, int(final))


class SealedWriter(io.RawIOBase):
    """A write-only stream that seals what it is given; close() writes the final chunk.

    A writer that is never closed leaves a file without a final chunk, which every reader
    refuses: a crash cannot produce a file that reads as complete.
    """

    def __init__(self, out: BinaryIO, key_id: str, key: bytes, chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__()
        self._out = out
        self._cipher = AESGCM(key)
        self._prefix = secrets.token_bytes(NONCE_PREFIX_BYTES)
        self._header = _header(key_id, self._prefix, chunk_size)
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._index = 0
        out.write(self._header)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self._buffer += view
        # Keep at least one byte back: only close() knows which chunk is the final one.
        while len(self._buffer) > self._chunk_size:
            self._seal(bytes(self._buffer[: self._chunk_size]), final=False)
            del self._buffer[: self._chunk_size]
        return len(view)

    def _seal(self, plaintext: bytes, final: bool) -> None:
        sealed = self._cipher.encrypt(_nonce(self._prefix, self._index), plaintext, _aad(self._header, self._index, final))
        self._out.write(sealed)
        self._index += 1

    def close(self) -> None:
        if not self.closed:
            self._seal(bytes(self._buffer), final=True)
            self._buffer.clear()
            self._out.flush()
        super().close()

    def __del__(self) -> None:
        # IOBase would close() an unreferenced writer, sealing a final chunk onto a file that was
        # abandoned halfway (an upload that failed): it must stay incomplete, so do nothing.
        pass


class SealedReader(io.RawIOBase):
    """A read-only, seekable view of a sealed file's plaintext; one chunk is held decrypted at a time."""

    def __init__(self, raw: BinaryIO, keys: KeyLookup, name: str = "") -> None:
        super().__init__()
        self._raw = raw
        self._name = name
        fixed = raw.read(len(MAGIC) + 5)
        if len(fixed) < len(MAGIC) + 5 or not fixed.startswith(MAGIC):
            raise DecryptionError(f"{name or 'file'}: not a sealed file")
        self._chunk_size, id_length = struct.unpack(">IB", fixed[len(MAGIC):])
        raw_id = raw.read(id_length)
        prefix = raw.read(NONCE_PREFIX_BYTES)
        if len(raw_id) != id_length or len(prefix) != NONCE_PREFIX_BYTES or self._chunk_size <= 0:
            raise DecryptionError(f"{name or 'file'}: truncated header")
        self.key_id = raw_id.decode("ascii", errors="replace")
        self._header = fixed + raw_id + prefix
        self._prefix = prefix
        self._cipher = AESGCM(keys(self.key_id))
        body = raw.seek(0, io.SEEK_END) - len(self._header)
        record = self._chunk_size + TAG_BYTES
        self._chunks = max(1, -(-body // record))
        last = body - (self._chunks - 1) * record
        if body < TAG_BYTES or last < TAG_BYTES:
            raise DecryptionError(f"{self._where()}: truncated (no final chunk)")
        self.size = body - self._chunks * TAG_BYTES  # plaintext bytes
        self._position = 0
        self._cached: tuple[int, bytes] | None = None

    def _where(self) -> str:
        return self._name or "sealed file"

    def _chunk(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        record = self._chunk_size + TAG_BYTES
        self._raw.seek(len(self._header) + index * record)
        sealed = self._raw.read(record)
        final = index == self._chunks - 1
        try:
            plain = self._cipher.decrypt(_nonce(self._prefix, index), sealed, _aad(self._header, index, final))
        except InvalidTag:
            raise DecryptionError(
                f"{self._where()}: chunk {index} fails authentication (tampered, truncated, reordered, "
                f"or not sealed with key {self.key_id})"
            ) from None
        self._cached = (index, plain)
        return plain

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._position >= self.size:
            # Authenticate the final chunk even when the caller knew the size: truncation shows here.
            self._chunk(self._chunks - 1)
            return 0
        index, offset = divmod(self._position, self._chunk_size)
        plain = self._chunk(index)
        count = min(len(buffer), len(plain) - offset)
        buffer[:count] = plain[offset: offset + count]
        self._position += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
            self._cached = None
        super().close()


def is_sealed(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except (IsADirectoryError, FileNotFoundError):
        return False


def is_decrypting(handle: BinaryIO) -> bool:
    """Whether a stream from open_plain() decrypts a sealed file (so it has no plaintext path to hand on)."""
    return isinstance(getattr(handle, "raw", None), SealedReader)


def sealed_key_id(path: Path) -> str | None:
    """The key id in a sealed file's header, without decrypting anything; None for a plaintext file."""
    with path.open("rb") as handle:
        fixed = handle.read(len(MAGIC) + 5)
        if not fixed.startswith(MAGIC) or len(fixed) < len(MAGIC) + 5:
            return None
        return handle.read(fixed[-1]).decode("ascii", errors="replace")


def open_plain(path: Path, keys: KeyLookup | None = None) -> BinaryIO:
    """The file's plaintext as a buffered binary stream: decrypted in memory if sealed, else as is.

    keys defaults to the process's key store (keys.default_store), opened only for sealed files.
    """
    raw = path.open("rb")
    try:
        if raw.read(len(MAGIC)) != MAGIC:
            raw.seek(0)
            return raw
        raw.seek(0)
        if keys is None:
            from tunevault.server.privacy.sealing.keys import default_store

            keys = default_store().unwrap
        return io.BufferedReader(SealedReader(raw, keys, name=path.name), buffer_size=CHUNK_SIZE)  # type: ignore[return-value]
    except BaseException:
        raw.close()
        raise


def plain_size(path: Path, keys: KeyLookup | None = None) -> int:
    """Plaintext bytes of a file, sealed or not (a sealed file's size follows from its length)."""
    with open_plain(path, keys) as handle:
        return handle.seek(0, io.SEEK_END)


def plain_chunks(path: Path, chunk_bytes: int = CHUNK_SIZE, keys: KeyLookup | None = None) -> Iterator[bytes]:
    with open_plain(path, keys) as handle:
        yield from iter(lambda: handle.read(chunk_bytes), b"")


@contextmanager
def sealed_output(path: Path, key_id: str, key: bytes) -> Iterator[SealedWriter]:
    """Writes a sealed file atomically: a temporary sibling, fsync, rename. Nothing is left on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.sealing")
    try:
        with temporary.open("wb") as out:
            writer = SealedWriter(out, key_id, key)
            yield writer
            writer.close()
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def seal_file(source: Path, target: Path, key_id: str, key: bytes) -> None:
    """Seals a plaintext file (e.g. one in tmpfs) into `target`."""
    with source.open("rb") as plain, sealed_output(target, key_id, key) as writer:
        shutil.copyfileobj(plain, writer, CHUNK_SIZE)


def unseal_file(source: Path, target: Path, keys: KeyLookup | None = None) -> None:
    """Decrypts `source` into `target` (which must be on a tmpfs: see privacy/scratch.py)."""
    with open_plain(source, keys) as plain, target.open("wb") as out:
        os.chmod(target, 0o600)
        shutil.copyfileobj(plain, out, CHUNK_SIZE)


def seal_tree(source: Path, target: Path, key_id: str, key: bytes) -> None:
    """Seals every file under `source` into the same relative paths under `target` (a new folder)."""
    for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()):
        seal_file(path, target / path.relative_to(source), key_id, key)


def unseal_tree(source: Path, target: Path, keys: KeyLookup | None = None) -> None:
    """Decrypts every file under `source` into the same relative paths under `target`."""
    for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        unseal_file(path, destination, keys)
