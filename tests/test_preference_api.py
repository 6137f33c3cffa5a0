"""DPO/ORPO through the real server: method checks at CreateJob, and a redacted DPO job that trains."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from tests.conftest import RunningServer, wait_for_state
from tests.sealed import read_plain
from tunevault.v1 import tunevault_pb2 as pb

PAIRS = [
    {"prompt": [{"role": "user", "content": f"Referral for Margaret Okafor, MRN 00{4821 + n}: can she take "
                                            "ibuprofen with warfarin?"}],
     "chosen": [{"role": "assistant", "content": "They can interact; ask her pharmacist first."}],
     "rejected": [{"role": "assistant", "content": "Yes, always fine."}]}
    for n in range(12)
]
SFT_ROWS = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 4
FAST = {"max_steps": 2, "batch_size": 2}


def _upload(client, path: Path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return client.upload_dataset(path)


@pytest.mark.parametrize(("method", "dataset", "settings", "field"), [
    ("dpo", "sft", {}, "dataset_id"),
    ("orpo", "sft", {}, "dataset_id"),
    ("sft", "pairs", {}, "dataset_id"),
    ("", "pairs", {}, "dataset_id"),  # unspecified is SFT
    ("dpo", "pairs", {"orpo_lambda": 0.5}, "hyperparameters.orpo_lambda"),
    ("orpo", "pairs", {"preference_beta": 0.5}, "hyperparameters.preference_beta"),
    ("sft", "sft", {"preference_beta": 0.5}, "hyperparameters.preference_beta"),
    ("dpo", "pairs", {"canary_repetitions": [1]}, "hyperparameters.canary_repetitions"),
    ("dpo", "pairs", {"preference_beta": 0.0}, "hyperparameters.preference_beta"),
])
def test_create_job_refuses_a_method_that_does_not_fit_the_data_or_settings(
        server: RunningServer, tmp_path: Path, method: str, dataset: str, settings: dict, field: str) -> None:
    with server.client() as client:
        uploaded = _upload(client, tmp_path / f"{dataset}.jsonl", PAIRS if dataset == "pairs" else SFT_ROWS)
        with pytest.raises(grpc.RpcError) as refused:
            client.create_job(uploaded.id, "tiny-llama", {**FAST, **settings}, method=method)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(field), refused.value.details()


def test_a_redacted_dpo_job_trains_on_scrubbed_pairs_and_reports_preference_figures(
        server: RunningServer, tmp_path: Path) -> None:
    with server.client() as client:
        dataset = _upload(client, tmp_path / "pairs.jsonl", PAIRS)
        job = client.create_job(dataset.id, "tiny-llama", {**FAST, "preference_beta": 0.2}, method="dpo",
                                pii="redact")
        assert job.method == pb.TRAINING_METHOD_DPO
        done = wait_for_state(client, job.id, {"SUCCEEDED", "FAILED"})
        assert done.state == pb.JOB_STATE_SUCCEEDED, done
        assert done.method == pb.TRAINING_METHOD_DPO
        assert done.hyperparameters.preference_beta == pytest.approx(0.2)
        metrics = done.result.metrics
        for key in ("preference_accuracy", "base_preference_accuracy", "reward_margin", "reward_accuracy"):
            assert key in metrics, key
        pii = next(e for e in client.stream_events(job.id, follow=False) if e.type == "pii")
    assert pii.metrics["pii_name"] >= 12
    scrubbed = read_plain(server.data_dir, server.data_dir / "jobs" / job.id / "scrubbed" / "train_file.jsonl").decode()
    assert "Okafor" not in scrubbed and "[NAME]" in scrubbed and '"chosen"' in scrubbed
