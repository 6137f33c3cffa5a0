"""The job spec a worker is started with (JOBS_DIR/JOB_ID/spec.json): reading and checking it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PII_MODES = ("off", "redact", "reject")


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
    hyperparameters: dict[str, Any]
    pii: str = "off"  # off | redact | reject: what to do with personal identifiers first
    data_format: str | None = None  # chat | instruction | completion | text; None detects it
    validation_data_format: str | None = None
    memory_estimate: dict[str, Any] | None = None  # the API's preflight estimate, reported beside the measured peak
    # Set by the PII step when train_file became a redacted copy: the memorization audit asks the
    # model the original questions. Never in spec.json.
    unscrubbed_train_file: Path | None = None
    # The memorization audit's user secrets, unsealed into memory by the worker (where the
    # hyperparameters hold placeholders, see privacy/canary_secrets.py). Never in spec.json.
    canary_secrets: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, raw: Any) -> "JobSpec":
        if not isinstance(raw, dict):
            raise SpecError("spec.json must hold a JSON object")

        def path(key: str, *, optional: bool = False) -> Path | None:
            value = raw.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, str) or not value:
                raise SpecError(f"spec.json: {key!r} must be a path string")
            return Path(value)

        hyperparameters = raw.get("hyperparameters") or {}
        if not isinstance(hyperparameters, dict):
            raise SpecError("spec.json: 'hyperparameters' must be an object")
        pii = raw.get("pii") or "off"
        if pii not in PII_MODES:
            raise SpecError(f"spec.json: 'pii' must be one of {', '.join(PII_MODES)}, got {pii!r}")
        spec = cls(
            job_id=str(raw.get("job_id") or ""),
            base_model_dir=path("base_model_dir"),  # type: ignore[arg-type]
            train_file=path("train_file"),  # type: ignore[arg-type]
            validation_file=path("validation_file", optional=True),
            output_dir=path("output_dir"),  # type: ignore[arg-type]
            checkpoint_dir=path("checkpoint_dir"),  # type: ignore[arg-type]
            hyperparameters=hyperparameters,
            pii=pii,
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
    def load(cls, path: Path) -> "JobSpec":
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"{path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path} is not valid JSON: {exc.msg}") from None
        return cls.from_dict(raw)
