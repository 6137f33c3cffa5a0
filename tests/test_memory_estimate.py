"""The peak-memory preflight: the estimate's arithmetic, the device limit, and CreateJob refusing a job that would not fit."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from tests.conftest import start_server, wait_for_state
from tests.tiny_model import triage_subset
from tunevault.server.config import DEVICE_MEMORY_ENV, parse_bytes
from tunevault.server.contract import hyperparameters as hp
from tunevault.server.contract import memory_estimate as me
from tunevault.server.training.runtime import measured_peak_bytes

TINY = {  # tests/tiny_model.py's config, as its config.json has it
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 49152, "tie_word_embeddings": True,
}

def resolved(**values: object) -> hp.ResolvedHyperparameters:
    return hp.resolve(hp.validate(values), train_rows=100)


HP = resolved(batch_size=2, max_seq_len=32, lora_r=8, lora_dropout=0.05)


def test_the_estimate_matches_a_hand_computation_for_the_tiny_model() -> None:
    estimate = me.estimate_peak_memory(TINY, HP, device="cpu")
    # Per layer (in, out): q 64x64, k 64x32, v 64x32, o 64x64, gate 64x128, up 64x128, down 128x64.
    quantized = 2 * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128)
    assert estimate.quantized_weights == pytest.approx(quantized * (0.5 + 1 / 64 + 4 / (64 * 256)), abs=1)
    assert estimate.full_precision_weights == 4 * (49152 * 64 + 5 * 64)  # tied embedding, 2 norms a layer + final
    lora_params = 2 * 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 128))
    assert estimate.lora_training_state == 16 * lora_params
    # Saved per token per layer: base 4h + 3q + 3kv + 4i floats; LoRA dropout copies of the
    # inputs (5 x 64 + 64 + 128), their bool masks, and r floats for each of the 7 modules.
    base = 4 * 64 + 3 * 64 + 3 * 32 + 4 * 128
    lora_inputs = 5 * 64 + 64 + 128
    layer = 4 * (base + lora_inputs + 7 * 8) + lora_inputs
    tokens = 2 * 32
    attention = 2 * 4 * 32 * 32 * 4
    assert estimate.activations == tokens * 2 * layer + attention
    assert estimate.logits == tokens * 49152 * 4 * 3  # every position labelled unless told otherwise
    assert estimate.runtime == me.RUNTIME_BYTES["cpu"]
    parts = [estimate.quantized_weights, estimate.full_precision_weights, estimate.lora_training_state,
             estimate.activations, estimate.logits, estimate.runtime, estimate.allocator, estimate.dataset]
    assert estimate.total == sum(parts)


def test_the_estimate_grows_with_batch_size_and_sequence_length() -> None:
    def total(batch: int, seq: int) -> int:
        return me.estimate_peak_memory(TINY, replace(HP, batch_size=batch, max_seq_len=seq)).total

    assert total(2, 32) < total(4, 32) < total(8, 32)
    assert total(2, 32) < total(2, 64) < total(2, 128)


def test_labels_checkpointing_and_dropout_change_what_is_kept() -> None:
    everything = me.estimate_peak_memory(TINY, HP)
    assert me.estimate_peak_memory(TINY, HP, label_tokens_per_row=4).logits == 2 * 4 * 49152 * 12 < everything.logits
    assert me.estimate_peak_memory(TINY, replace(HP, lora_dropout=0.0)).activations < everything.activations
    cuda = me.estimate_peak_memory(TINY, HP, device="cuda")
    assert cuda.activations < everything.activations and cuda.dataset == 0
    fewer = me.estimate_peak_memory(TINY, replace(HP, lora_target_modules=("q_proj", "v_proj")))
    assert fewer.lora_training_state < everything.lora_training_state


def test_dataset_tokens_reads_the_longest_row_and_answer(tmp_path: Path) -> None:
    rows = [[("user", "x" * 30), ("assistant", "y" * 9)], [("system", "s" * 3), ("user", "u" * 60), ("assistant", "a" * 3)]]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": r, "content": c} for r, c in row]}) + "\n" for row in rows))
    tokens = me.dataset_tokens(path)
    assert tokens.longest_row == 66 // 3 + 3 * 5  # 66 bytes of text at 3 bytes a token, 3 messages
    assert tokens.longest_answer == 9 // 3 + 5
    assert tokens.total == (39 // 3 + 10) + tokens.longest_row


def test_the_device_limit() -> None:
    assert me.device_limit(10 * me.GIB, "cpu") == me.DeviceLimit("cpu", 10 * me.GIB, "configured")
    assert me.device_limit(None, "cuda").bytes is None  # a GPU's size is the operator's to give
    automatic = me.device_limit(None, "cpu")
    assert automatic.source in ("ram", "cgroup") and 0 < automatic.bytes
    assert parse_bytes("24GiB") == 24 * me.GIB and parse_bytes("512M") == 512 * 1024**2 and parse_bytes("auto") is None
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_measured_peak_on_cpu_is_the_process_max_rss() -> None:
    import resource

    assert measured_peak_bytes("cpu") >= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 > 0


def test_create_job_refuses_a_job_that_would_not_fit(tmp_path: Path, tiny_models_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_MEMORY_ENV, "2GiB")
    server = start_server(tmp_path / "data", tiny_models_dir)
    try:
        with server.client() as client:
            dataset = client.upload_dataset(triage_subset(tmp_path / "train.jsonl", 24))
            later = time.time() + 86400  # queued, not run: this test is about CreateJob
            accepted = client.create_job(dataset.id, "tiny-llama", {"batch_size": 2}, not_before=later)
            before = [j.id for j in client.list_jobs().jobs]

            with pytest.raises(grpc.RpcError) as refused:
                client.create_job(dataset.id, "tiny-llama", {"batch_size": 64, "max_seq_len": 4096}, not_before=later)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            message = refused.value.details()
            assert message.startswith("estimated peak memory ") and "exceeds the device's 2.0 GiB" in message
            assert "(batch_size 64 x max_seq_len 4096); lower batch_size or max_seq_len" in message
            assert [j.id for j in client.list_jobs().jobs] == before == [accepted.id]

            # A job that runs carries the estimate in its spec.json, for the worker to report.
            running = client.create_job(dataset.id, "tiny-llama", {"batch_size": 2, "max_steps": 1})
            # RUNNING is set by the claim, just before the spec is written: wait for the end instead.
            wait_for_state(client, running.id, {"SUCCEEDED", "FAILED"}, timeout=300)
            spec = json.loads((server.data_dir / "jobs" / running.id / "spec.json").read_text())
            assert spec["memory_estimate"]["device_memory_bytes"] == 2 * me.GIB
            assert 0 < spec["memory_estimate"]["total"] < 2 * me.GIB
            assert spec["memory_estimate"]["batch_size"] == 2
    finally:
        server.stop()


SMOLLM2_135M = {  # the model store's smollm2-135m-instruct config.json, as far as the estimate reads it
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True,
}


def test_long_answers_count_one_chunk_of_logits() -> None:
    short = me.estimate_peak_memory(TINY, HP, label_tokens_per_row=4)
    long = me.estimate_peak_memory(TINY, resolved(batch_size=8, max_seq_len=1024, lora_r=8), label_tokens_per_row=1000)
    assert short.logits == 2 * 4 * 49152 * 4 * me.LOGIT_COPIES  # under the chunking threshold: all of them
    assert long.logits == me.CE_CHUNK_POSITIONS * 49152 * 4 * me.LOGIT_COPIES


@pytest.mark.parametrize(("checkpointing", "measured_gib"), [(False, 6.97), (True, 1.23)])
def test_the_cpu_estimate_is_calibrated_on_the_licence_size_job(checkpointing: bool, measured_gib: float) -> None:
    """bench/memory_bench.py's job (SmolLM2-135M, batch 8 x 372, a few answer tokens a row), as measured on CPU."""
    job = resolved(batch_size=8, max_seq_len=372, lora_r=16, lora_alpha=32, lora_dropout=0.05)
    estimate = me.estimate_peak_memory(SMOLLM2_135M, job.with_gradient_checkpointing(checkpointing), label_tokens_per_row=4)
    assert estimate.total / me.GIB == pytest.approx(measured_gib, rel=0.15)
