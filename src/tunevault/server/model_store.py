"""The model store directory as the API sees it: names and sizes, read without loading anything."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tunevault.server.errors import InvalidArgument

MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    architecture: str
    size_bytes: int


def list_models(models_dir: Path) -> list[ModelEntry]:
    """Every complete model directory (config.json and weights), sorted by name."""
    if not models_dir.is_dir():
        return []
    entries = []
    for path in sorted(models_dir.iterdir()):
        entry = _read_entry(path)
        if entry is not None:
            entries.append(entry)
    return entries


def find_model(models_dir: Path, name: str) -> ModelEntry:
    """The entry called `name`; InvalidArgument for a malformed name, NotFound for an absent one."""
    if not MODEL_NAME.fullmatch(name or ""):
        raise InvalidArgument("base_model", f"{name!r} is not a model name (lower-case letters, digits, . _ -)")
    entry = _read_entry(models_dir / name)
    if entry is None:
        known = ", ".join(e.name for e in list_models(models_dir)) or "none"
        # The folder and the exact command: an empty store is the first thing a newcomer meets.
        raise InvalidArgument(
            "base_model",
            f"unknown model {name!r} (the model store {models_dir} has: {known}); import it on the server with "
            f"`tunevault models import PATH --name {name} --models-dir {models_dir}` (PATH: a local Hugging Face "
            f"folder or .gguf file; without PATH and --name it imports the default model)")
    return entry


def _read_entry(path: Path) -> ModelEntry | None:
    # A symlinked entry could point anywhere on the box; the store holds real directories only.
    if path.is_symlink() or not path.is_dir() or not MODEL_NAME.fullmatch(path.name):
        return None
    config = path / "config.json"
    weights = list(path.glob("*.safetensors"))
    if not config.is_file() or not weights:
        return None
    try:
        architectures = json.loads(config.read_text()).get("architectures") or [""]
    except (OSError, ValueError):
        return None
    return ModelEntry(
        name=path.name, path=path, architecture=str(architectures[0]),
        size_bytes=sum(w.stat().st_size for w in weights),
    )

