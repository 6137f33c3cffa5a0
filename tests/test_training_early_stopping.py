"""Early stopping on eval loss: the job stops once the loss stops improving and its adapter is the best one.

The training rows teach one answer and the validation rows expect another, so eval loss gets
worse as training goes on: the best adapter is an early one, and the test checks the exported
adapter really is that one by evaluating it afresh.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tiny_model import run_worker, write_job

TINY = "tiny-llama"


def _rows(path: Path, answer: str, count: int, offset: int = 0) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"note {offset + i}: chest pain on exertion"},
                          {"role": "assistant", "content": answer}]} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_early_stopping_stops_and_keeps_the_best_adapter(tmp_path: Path, tiny_models_dir: Path) -> None:
    train = _rows(tmp_path / "train.jsonl", "cardiology", 64)
    validation = _rows(tmp_path / "validation.jsonl", "dermatology", 8, offset=100)
    hp = {"max_steps": 30, "batch_size": 4, "learning_rate": 0.02, "eval_every": 1, "early_stopping_patience": 2,
          "eval_accuracy_max_examples": 0, "checkpoint_every": 0, "lora_dropout": 0.0}
    job_dir = write_job(tmp_path / "jobs", "es", tiny_models_dir / TINY, train, hp, validation_file=validation)
    run = run_worker(tmp_path / "jobs", "es")
    assert run.returncode == 0, run.log

    evals = {e["metrics"]["step"]: e["metrics"]["eval_loss"] for e in run.of_type("eval")[:-1]}  # in-training evals
    best_step = min(evals, key=evals.get)
    result = run.of_type("result")[0]["metrics"]
    assert result["stopped_early"] == 1.0 and result["steps"] < 30
    assert result["best_step"] == best_step
    assert result["eval_loss"] == pytest.approx(evals[best_step], rel=1e-6)
    assert result["eval_perplexity"] == pytest.approx(torch.tensor(evals[best_step]).exp().item(), rel=1e-5)
    # Stopped exactly `patience` evals after the best one.
    assert result["steps"] == best_step + 2

    # The exported adapter is the best step's: evaluated afresh it gives the best eval loss.
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tunevault.server.contract.formats import read_chat_jsonl
    from tunevault.server.training import quantized_model
    from tunevault.server.training.batching import eval_batches
    from tunevault.server.training.evaluation import eval_loss
    from tunevault.server.training.tokenization import tokenize_row

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_models_dir / TINY), local_files_only=True)
    base = quantized_model.load_quantized_base(tiny_models_dir / TINY, torch.device("cpu"), torch.float32)
    model = PeftModel.from_pretrained(base, str(job_dir / "artifacts"))
    rows = [tokenize_row(tokenizer, r) for r in read_chat_jsonl(validation)]
    assert eval_loss(model, eval_batches(rows, 16, tokenizer.pad_token_id)) == pytest.approx(evals[best_step], rel=1e-4)


def test_without_patience_the_final_adapter_is_kept(tmp_path: Path, tiny_models_dir: Path) -> None:
    train = _rows(tmp_path / "train.jsonl", "cardiology", 32)
    validation = _rows(tmp_path / "validation.jsonl", "dermatology", 8, offset=100)
    hp = {"max_steps": 4, "batch_size": 4, "learning_rate": 0.02, "eval_every": 1, "eval_accuracy_max_examples": 0,
          "checkpoint_every": 0}
    write_job(tmp_path / "jobs", "plain", tiny_models_dir / TINY, train, hp, validation_file=validation)
    run = run_worker(tmp_path / "jobs", "plain")
    assert run.returncode == 0, run.log
    result = run.of_type("result")[0]["metrics"]
    assert result["steps"] == 4 and result["stopped_early"] == 0.0 and "best_step" not in result
    assert not run.of_type("early_stopping.restored")
