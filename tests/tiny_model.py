"""A tiny random Llama with the real SmolLM2 tokenizer, and helpers that run real worker jobs on it in seconds on a CPU."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "generation_config.json")


def make_tiny_model(models_dir: Path, tokenizer_dir: Path, name: str = "tiny-llama") -> Path:
    """Save a seeded random LlamaForCausalLM (hidden 64, 2 layers) plus tokenizer_dir's tokenizer as models_dir/name.

    Sizes are multiples of 64 so bitsandbytes can quantize every projection in 4-bit blocks.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    target = models_dir / name
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    # Copy the tokenizer files as they are rather than re-saving: the test sees the real thing.
    for file_name in TOKENIZER_FILES:
        source = Path(tokenizer_dir) / file_name
        if source.is_file() and file_name != "generation_config.json":
            shutil.copy2(source, target / file_name)
    return target


def triage_subset(target: Path, rows: int, start: int = 0) -> Path:
    """The first `rows` rows (from `start`) of the example triage dataset, as a new JSONL file."""
    lines = (EXAMPLES / "triage.jsonl").read_text().splitlines()[start : start + rows]
    target.write_text("\n".join(lines) + "\n")
    return target


def write_job(jobs_dir: Path, job_id: str, base_model_dir: Path, train_file: Path,
              hyperparameters: dict[str, Any], validation_file: Path | None = None, *, resolve: bool = True) -> Path:
    """JOBS_DIR/JOB_ID/spec.json as the scheduler writes it (hyperparameters resolved); returns the job directory.

    resolve=False writes the hyperparameters as given, for tests of a worker refusing a bad spec.
    """
    from tunevault.server.contract import hyperparameters as hp
    from tunevault.server.contract.job_spec import FILE_NAME

    job_dir = jobs_dir / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    if resolve:
        hyperparameters = hp.resolve(hp.validate(hyperparameters), train_rows=_rows(train_file),
                                     has_validation_file=validation_file is not None).to_dict()
    spec = {
        "job_id": job_id, "base_model_dir": str(base_model_dir), "train_file": str(train_file),
        "validation_file": str(validation_file) if validation_file else None,
        "output_dir": str(job_dir / "artifacts"), "checkpoint_dir": str(job_dir / "checkpoints"),
        "hyperparameters": hyperparameters,
    }
    (job_dir / FILE_NAME).write_text(json.dumps(spec))
    return job_dir


def _rows(train_file: Path) -> int:
    """Rows as the server counts them at upload; for a file the worker is meant to refuse, its non-blank lines."""
    from tunevault.server.contract.chat_data import DatasetError
    from tunevault.server.contract.formats import read_dataset

    try:
        return len(read_dataset(train_file).rows)
    except DatasetError:
        return max(1, sum(1 for line in train_file.read_bytes().splitlines() if line.strip()))


def start_worker(jobs_dir: Path, job_id: str) -> subprocess.Popen:
    """The worker as the scheduler starts it: events on a stdout pipe, logs into a file."""
    log = (jobs_dir / job_id / "worker.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "tunevault.server.worker.train", "--jobs-dir", str(jobs_dir), job_id],
                            stdout=subprocess.PIPE, stderr=log, text=True)


@dataclass
class WorkerRun:
    returncode: int
    events: list[dict[str, Any]]
    log: str

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]


def run_worker(jobs_dir: Path, job_id: str, timeout: float = 600) -> WorkerRun:
    """Run a job to its end; every stdout line must be a JSON event."""
    process = start_worker(jobs_dir, job_id)
    out, _ = process.communicate(timeout=timeout)
    events = [json.loads(line) for line in out.splitlines()]
    return WorkerRun(process.returncode, events, (jobs_dir / job_id / "worker.log").read_text(errors="replace"))


def train_sharp_adapter(jobs: Path, data_dir: Path, tiny_models_dir: Path, job_id: str) -> Path:
    """A real adapter from the worker, trained hard enough (lr 0.05) to move the logits far from the base's."""
    data = triage_subset(data_dir / "train.jsonl", rows=24)
    write_job(jobs, job_id, tiny_models_dir / "tiny-llama", data,
              {"max_steps": 8, "batch_size": 4, "learning_rate": 0.05, "eval_accuracy_max_examples": 0})
    run = run_worker(jobs, job_id)
    assert run.returncode == 0, run.log
    return jobs / job_id / "artifacts"


def stop_after(jobs: Path, job_id: str, event_type: str, sig: signal.Signals, min_step: int = 1) -> WorkerRun:
    """Start a job, send `sig` once it reports `event_type` at step >= min_step, and follow it to its end."""
    process = start_worker(jobs, job_id)
    events = []
    assert process.stdout is not None
    for line in process.stdout:
        events.append(json.loads(line))
        if events[-1]["type"] == event_type and events[-1]["metrics"].get("step", 0) >= min_step:
            process.send_signal(sig)
            break
    events.extend(json.loads(line) for line in process.stdout)
    process.wait(120)
    return WorkerRun(process.returncode, events, (jobs / job_id / "worker.log").read_text(errors="replace"))
