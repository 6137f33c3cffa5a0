"""The base model's eval loss and accuracy on a validation set, kept beside its quantized-base cache entry.

Every job scores the untouched base model first, so its report can say how far the adapter moved
it. A second job on the same base and validation set (a sweep, a retry with other
hyperparameters) gets the same two numbers: on these CPUs that pass was 36 of the 59 s from
submit to first step on the example set (bench/first_step_bench.py), more than loading the
model. Each quantized base has a folder of entries, each the two numbers under a digest of what
they depend on (the validation tokens, the accuracy prompts and references, the eval batch
shape, the thread count), never any text. An unreadable or unwritable entry only costs the pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# A sibling of the quantized entry, not inside it: the entry's manifest lists every file it holds.
SUFFIX = ".baseline-evals"
FORMAT = 1  # bump when the loss or the accuracy is computed differently


@dataclass(frozen=True)
class Baseline:
    loss: float
    accuracy: float | None


def cache_key(validation: list[Any], accuracy_examples: list[Any], eval_batch_rows: int, threads: int) -> str:
    """A digest of what the base model's scores depend on (rows as token ids; the base is the folder)."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT, "batch": eval_batch_rows, "threads": threads}).encode())
    for row in validation:
        digest.update(json.dumps([row.input_ids, row.labels]).encode())
    digest.update(b"\0accuracy\0")
    for example in accuracy_examples:
        digest.update(json.dumps([example.prompt_ids, example.reference, example.reference_tokens]).encode())
    return digest.hexdigest()


def _folder(base_entry: Path) -> Path:
    return base_entry.with_name(base_entry.name + SUFFIX)


def load(base_entry: Path | None, key: str) -> Baseline | None:
    if base_entry is None:
        return None
    try:
        raw = json.loads((_folder(base_entry) / f"{key}.json").read_text())
        accuracy = raw["accuracy"]
        return Baseline(float(raw["loss"]), None if accuracy is None else float(accuracy))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("baseline cache entry %s unreadable (%s); scoring the base model again", key, error)
        return None


def store(base_entry: Path | None, key: str, baseline: Baseline) -> None:
    if base_entry is None:
        return
    folder = _folder(base_entry)
    try:
        folder.mkdir(exist_ok=True)
        # Written beside and renamed into place: a reader sees a whole entry or none.
        handle, staging = tempfile.mkstemp(prefix=f".{key}-", dir=folder)
        with os.fdopen(handle, "w") as out:
            json.dump(asdict(baseline), out)
        os.chmod(staging, 0o644)
        os.replace(staging, folder / f"{key}.json")
    except OSError as error:  # a read-only model volume: the next job scores the base again
        log.warning("cannot cache the baseline eval in %s (%s)", folder, error)
