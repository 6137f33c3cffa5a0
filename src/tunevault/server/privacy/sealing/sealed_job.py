"""The worker's side of encryption at rest: one job trains in a private tmpfs folder, and leaves only sealed files.

prepare() decrypts the job's datasets and its latest sealed checkpoint into the tmpfs folder
and returns a spec pointing the trainer there, so the trainer, the PII step and the merged
export write plaintext only to RAM. Each checkpoint is sealed into the job folder as soon as
the trainer reports it (seal_checkpoint), the scrubbed copies after the PII step, and the
adapter (and merged model) once training is done (seal_outputs). A crash loses the tmpfs
folder, never a sealed file; the next attempt removes the dead attempt's folder and resumes
from the last sealed checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from pathlib import Path

from tunevault.server.contract.job_spec import JobSpec
from tunevault.server.privacy.sealing import canary_secrets, scratch
from tunevault.server.privacy.sealing.encryption import seal_tree, unseal_file, unseal_tree
from tunevault.server.privacy.sealing.keys import (
    KEYSTORE_DB_ENV,
    DataKey,
    KeyStore,
    default_store,
)

log = logging.getLogger(__name__)

STEP_DIR_RE = re.compile(r"step-(\d+)")
KEEP_CHECKPOINTS = 3  # as training/checkpoints.py: resume only needs the latest
BEST_DIR = "best"  # early stopping's best adapter, beside the step-N checkpoints


def _sealed_steps(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := STEP_DIR_RE.fullmatch(p.name)) and (p / "state.json").is_file()]
    return sorted(found)


def _replace_dir(staging: Path, target: Path) -> None:
    """Renames `staging` to `target`, replacing an older `target` (never leaving neither)."""
    previous = target.with_name(f".{target.name}-previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        os.rename(target, previous)
    os.rename(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


class SealedJob:
    """A job's tmpfs workspace and the sealed folders it mirrors into the job directory."""

    def __init__(self, spec: JobSpec, keys: KeyStore) -> None:
        self.original = spec
        self.keys = keys
        self.key: DataKey = keys.get_or_create("job", spec.job_id)
        self.job_dir = spec.output_dir.parent
        self.prefix = f"tunevault-{spec.job_id}-"
        scratch.remove_stale(self.prefix)  # a killed earlier attempt's plaintext
        self.workspace = scratch.make_private_dir(self.prefix)

    @classmethod
    def open(cls, spec: JobSpec) -> SealedJob | None:
        """None when no key store is configured: a worker run by hand on plain files, outside the server."""
        if not os.environ.get(KEYSTORE_DB_ENV):
            log.warning("no key store configured (%s unset): job %s writes plaintext files", KEYSTORE_DB_ENV, spec.job_id)
            return None
        return cls(spec, default_store())

    def prepare(self) -> JobSpec:
        """Decrypts inputs and the last checkpoint into the workspace; returns the spec to train with."""
        data = self.workspace / "data"
        data.mkdir()
        inputs: dict[str, Path | None] = {}
        for field in ("train_file", "validation_file"):
            source: Path | None = getattr(self.original, field)
            if source is not None:
                inputs[field] = data / f"{field}{''.join(source.suffixes)}"
                unseal_file(source, inputs[field], self.keys.unwrap)
        checkpoints = self.workspace / "checkpoints"
        sealed = _sealed_steps(self.original.checkpoint_dir)
        if sealed:
            _, latest = sealed[-1]
            unseal_tree(latest, checkpoints / latest.name, self.keys.unwrap)
            best = self.original.checkpoint_dir / BEST_DIR
            if best.is_dir():
                unseal_tree(best, checkpoints / BEST_DIR, self.keys.unwrap)
        secrets = canary_secrets.restore(self.original.hyperparameters.canary_secrets, self.job_dir, self.keys.unwrap)
        return dataclasses.replace(self.original, **inputs, output_dir=self.workspace / "artifacts",
                                   checkpoint_dir=checkpoints, canary_secrets=secrets)

    def seal_checkpoint(self, plain: Path) -> Path:
        """Seals a checkpoint the trainer just wrote (and the best adapter so far); prunes old sealed ones."""
        target = self.original.checkpoint_dir / plain.name
        if not (target / "state.json").is_file():
            self._seal_dir(plain, target)
        best = plain.parent / BEST_DIR
        if best.is_dir():
            self._seal_dir(best, self.original.checkpoint_dir / BEST_DIR)
        for _, old in _sealed_steps(self.original.checkpoint_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def seal_scrubbed(self) -> None:
        """The PII step's scrubbed copies (written into the workspace), kept sealed for an audit."""
        scrubbed = self.workspace / "scrubbed"
        if scrubbed.is_dir():
            self._seal_dir(scrubbed, self.job_dir / "scrubbed")

    def seal_outputs(self) -> None:
        """The adapter (and a merged export), sealed into the job folder: the last step before success."""
        for name in ("artifacts", "merged"):
            if (self.workspace / name).is_dir():
                self._seal_dir(self.workspace / name, self.job_dir / name)

    def _seal_dir(self, plain: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}-sealing")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            seal_tree(plain, staging, self.key.id, self.key.key)
            staging.mkdir(exist_ok=True)  # an empty folder still marks "sealed, nothing in it"
            _replace_dir(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def close(self) -> None:
        scratch.remove(self.workspace)
