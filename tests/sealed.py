"""Reading a test server's files as the appliance does: sealed at rest, decrypted with its key store."""

from __future__ import annotations

from pathlib import Path

from tunevault.server.privacy.sealing import keys
from tunevault.server.privacy.sealing.encryption import open_plain


def read_plain(data_dir: Path, path: Path) -> bytes:
    """The plaintext of a file under a test server's data_dir (its master key is the generated default)."""
    master = keys.load_master_key(key_file=keys.default_master_key_path(data_dir))
    store = keys.KeyStore(data_dir / "tunevault.db", master)
    try:
        with open_plain(path, store.unwrap) as handle:
            return handle.read()
    finally:
        store.close()
