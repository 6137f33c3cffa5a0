"""The validation process of a job in VALIDATING: does its data train, before it takes a queue slot?

    python -m tunevault.server.worker.validate --jobs-dir JOBS_DIR JOB_ID

Reads JOB_ID/spec.json as the worker will, tokenizes every row with the base model's tokenizer
and chat template, and speaks JSON-line events on stdout (the worker's format): "data.warning"
for each problem that does not stop training, then one "validated" event with the job's data
statistics, or one "error" event (INVALID_ARGUMENT, naming the field or the line) for data or
settings that cannot train. Upload already checked each line's syntax; what only the tokenizer
knows (answers cut off by max_seq_len, the stop token never learnt, the model's position limit)
and pii=reject are checked here, so a bad job fails in seconds instead of after a queue wait.
A DP job also gets its noise plan ("dp.plan") and, when the data is too small for DP to learn
much, "dp.warning" events with the numbers and the smallest change that helps.

It loads no model weights: a tokenizer and config.json are enough, so it is quick and light.
Exit status 0 after "validated", 1 after "error".
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from tunevault.server.contract.events import EventWriter
from tunevault.server.privacy import egress_guard
from tunevault.server.training.runtime import force_offline
from tunevault.server.worker.process import classify, egress_first, job_process_main

log = logging.getLogger("tunevault.validator")


def validate(jobs_dir: Path, job_id: str, events: EventWriter) -> None:
    """Emits the warnings and the "validated" event; raises for a job that cannot train."""
    from transformers import AutoTokenizer

    from tunevault.server.contract.job_spec import JobSpec, check_fits_model
    from tunevault.server.training.job_data import prepare_job_data
    from tunevault.server.training.pii_step import apply_pii
    from tunevault.server.training.runtime import quiet_progress_bars

    quiet_progress_bars()
    spec = JobSpec.load(jobs_dir / job_id / "spec.json")
    if spec.pii == "reject":
        # Refuses the data naming where identifiers are; redact runs in the worker, which trains on its output.
        apply_pii(spec, events)
    tokenizer = AutoTokenizer.from_pretrained(str(spec.base_model_dir), local_files_only=True)
    prepare = prepare_job_data if spec.method == "sft" else _preference_job_data
    data = prepare(tokenizer, spec.train_file, spec.validation_file, spec.hyperparameters,
                   data_format=spec.data_format, validation_data_format=spec.validation_data_format)
    check_fits_model(spec.base_model_dir, data.max_seq_len)
    for warning in data.warnings(tokenizer.eos_token):
        events.emit("data.warning", warning)
    if data.hyperparameters.dp:
        from tunevault.server.training.dp_sgd import plan_and_announce

        # Before queueing, in numbers: how much noise the epsilon costs and whether this data can bear it.
        plan_and_announce(data.hyperparameters, len(data.train), events)
    stats = data.stats()
    events.emit("validated",
                f"{stats['train_rows']:.0f} training rows ({stats['train_tokens']:.0f} tokens), "
                f"{stats['validation_rows']:.0f} validation rows, {data.data_format} format, "
                f"max_seq_len {data.max_seq_len}",
                stats, data_format=data.data_format)


def _preference_job_data(*args: Any, **kwargs: Any) -> Any:
    """A DPO/ORPO job's pairs, checked as the worker will read them; their JobData view for the figures."""
    from tunevault.server.training.preference_data import prepare_preference_data

    return prepare_preference_data(*args, **kwargs).job


def run(jobs_dir: Path, job_id: str) -> int:
    force_offline()
    egress_guard.install()
    from tunevault.server.training.parent_watch import die_with_parent

    die_with_parent()  # a validation nobody will read is not worth finishing
    events = EventWriter(sys.stdout)
    try:
        validate(jobs_dir, job_id, events)
        egress_guard.raise_if_blocked()
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes one error event
        traceback.print_exc(file=sys.stderr)
        code, message = classify(egress_first(exc))
        events.emit("error", message, {}, code=code)
        return 1


def main(argv: list[str] | None = None) -> int:
    return job_process_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
