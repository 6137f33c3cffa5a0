"""The job spec (JOBS_DIR/JOB_ID/spec.json): what a job process is started with, written and read here only.

The scheduler writes it once per job (write), the validator and the worker read it (load); both
sides go through JobSpec, so the file has one shape. Hyperparameters travel resolved: the worker
fills only what needs the data or the model (max_seq_len, lora_target_modules).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunevault.server.contract.hyperparameters import HyperparameterError, ResolvedHyperparameters, resolve, validate

PII_MODES = ("off", "redact", "reject")
METHODS = ("sft", "dpo", "orpo")
FILE_NAME = "spec.json"


class SpecError(ValueError):
    """spec.json is missing, malformed, or points at something that is not there."""


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    base_model_dir: Path
    train_file: Path
    validation_file: Path | None
    output_dir: Path
    checkpoint_dir: Path
    hyperparameters: ResolvedHyperparameters
    pii: str = "off"  # off | redact | reject: what to do with personal identifiers first
    method: str = "sft"  # sft | dpo | orpo: how the job learns (dpo/orpo read preference rows)
    data_format: str | None = None  # chat | instruction | completion | text; None detects it
    validation_data_format: str | None = None
    memory_estimate: dict[str, Any] | None = None  # the API's preflight estimate, reported beside the measured peak
    # Set by the PII step when train_file became a redacted copy: the memorization audit asks the
    # model the original questions. Never in spec.json.
    unscrubbed_train_file: Path | None = None
    # The memorization audit's user secrets, unsealed into memory by the worker (where the
    # hyperparameters hold placeholders, see privacy/sealing/canary_secrets.py). Never in spec.json.
    canary_secrets: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "base_model_dir": str(self.base_model_dir),
            "train_file": str(self.train_file),
            "validation_file": str(self.validation_file) if self.validation_file else None,
            "output_dir": str(self.output_dir),
            "checkpoint_dir": str(self.checkpoint_dir),
            "hyperparameters": self.hyperparameters.to_dict(),
            "pii": self.pii,
            "method": self.method,
            "data_format": self.data_format,
            "validation_data_format": self.validation_data_format,
            "memory_estimate": self.memory_estimate,
        }

    def write(self, job_dir: Path) -> Path:
        """spec.json in job_dir, replaced atomically: a reader sees the old file or the new one, never half."""
        job_dir.mkdir(parents=True, exist_ok=True)
        temporary = job_dir / f"{FILE_NAME}.tmp"
        temporary.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(temporary, job_dir / FILE_NAME)
        return job_dir / FILE_NAME

    @classmethod
    def from_dict(cls, raw: Any) -> JobSpec:
        if not isinstance(raw, dict):
            raise SpecError("spec.json must hold a JSON object")

        def path(key: str, *, optional: bool = False) -> Path | None:
            value = raw.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, str) or not value:
                raise SpecError(f"spec.json: {key!r} must be a path string")
            return Path(value)

        pii = raw.get("pii") or "off"
        if pii not in PII_MODES:
            raise SpecError(f"spec.json: 'pii' must be one of {', '.join(PII_MODES)}, got {pii!r}")
        method = raw.get("method") or "sft"
        if method not in METHODS:
            raise SpecError(f"spec.json: 'method' must be one of {', '.join(METHODS)}, got {method!r}")
        spec = cls(
            job_id=str(raw.get("job_id") or ""),
            base_model_dir=path("base_model_dir"),  # type: ignore[arg-type]
            train_file=path("train_file"),  # type: ignore[arg-type]
            validation_file=path("validation_file", optional=True),
            output_dir=path("output_dir"),  # type: ignore[arg-type]
            checkpoint_dir=path("checkpoint_dir"),  # type: ignore[arg-type]
            hyperparameters=ResolvedHyperparameters.from_dict(raw.get("hyperparameters")),
            pii=pii,
            method=method,
            data_format=raw.get("data_format") or None,
            validation_data_format=raw.get("validation_data_format") or None,
            memory_estimate=raw.get("memory_estimate") if isinstance(raw.get("memory_estimate"), dict) else None,
        )
        if not (spec.base_model_dir / "config.json").is_file():
            raise SpecError(f"base model directory {spec.base_model_dir} has no config.json")
        for data_file in (spec.train_file, spec.validation_file):
            if data_file is not None and not data_file.is_file():
                raise SpecError(f"dataset file {data_file} does not exist")
        return spec

    @classmethod
    def load(cls, path: Path) -> JobSpec:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"{path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path} is not valid JSON: {exc.msg}") from None
        return cls.from_dict(raw)


def resolve_for_files(requested: dict[str, Any] | None, train_file: Path, validation_file: Path | None = None,
                      data_format: str | None = None) -> ResolvedHyperparameters:
    """A job's settings resolved from its files, for a spec written without the server (tests, benches).

    The server resolves from the row count it stored at upload; this counts the file's rows the
    same way (the format reader), so both give the same answer.
    """
    from tunevault.server.contract.formats import read_dataset

    try:
        rows = len(read_dataset(train_file, data_format).rows)
    except OSError as error:
        raise SpecError(f"cannot read {train_file}: {error}") from None
    return resolve(validate(requested), train_rows=rows, has_validation_file=validation_file is not None)


def check_fits_model(base_model_dir: Path, max_seq_len: int) -> None:
    """HyperparameterError when max_seq_len exceeds the base model's positions (its config.json)."""
    positions = json.loads((base_model_dir / "config.json").read_text()).get("max_position_embeddings")
    if positions and max_seq_len > positions:
        raise HyperparameterError("max_seq_len", f"the base model handles at most {positions} tokens")
