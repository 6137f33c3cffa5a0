"""The long-lived inference process on the tiny model: base and adapter answers, stop strings, bad requests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tiny_model import train_sharp_adapter


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Path:
    """A real adapter trained on the tiny model, with a learning rate high enough to change its answers."""
    return train_sharp_adapter(tmp_path_factory.mktemp("jobs"), tmp_path_factory.mktemp("data"), tiny_models_dir,
                               "job-inf")


class InferenceProcess:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tunevault.server.inference.process"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def ask_raw(self, line: str) -> dict:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def ask(self, **request) -> dict:
        return self.ask_raw(json.dumps(request))


@pytest.fixture(scope="module")
def inference() -> Iterator[InferenceProcess]:
    proc = InferenceProcess()
    yield proc
    assert proc.process.stdin
    proc.process.stdin.close()  # EOF is the shutdown signal
    assert proc.process.wait(60) == 0


def _request(base: Path, adapter: Path | None, **overrides) -> dict:
    request = {"id": "r", "base_model_dir": str(base), "adapter_dir": str(adapter) if adapter else None,
               "prompt": "Route: itchy rash on both elbows", "max_tokens": 6, "temperature": 0.0, "top_p": 1.0, "stop": []}
    return {**request, **overrides}


def test_round_trip_base_and_adapter(inference: InferenceProcess, tiny_models_dir: Path, adapter_dir: Path) -> None:
    base = tiny_models_dir / "tiny-llama"
    first = inference.ask(**_request(base, None, id="1"))
    assert first["id"] == "1" and isinstance(first["text"], str) and 1 <= first["tokens"] <= 6

    tuned = inference.ask(**_request(base, adapter_dir, id="2"))
    assert tuned["id"] == "2" and "error" not in tuned
    again = inference.ask(**_request(base, adapter_dir, id="3"))  # cached adapter, greedy: same answer
    assert again["text"] == tuned["text"]
    # The adapter changed the model (lr 0.05 on a random tiny model), and null still means the base.
    assert tuned["text"] != first["text"]
    assert inference.ask(**_request(base, None, id="4"))["text"] == first["text"]


def test_stop_strings_end_the_completion_before_them(inference: InferenceProcess, tiny_models_dir: Path) -> None:
    base = tiny_models_dir / "tiny-llama"
    # Seeded sampling: varied text from the random model (greedy only repeats newlines), yet reproducible.
    sampled = {"temperature": 1.0, "seed": 3, "max_tokens": 12}
    full = inference.ask(**_request(base, None, **sampled))["text"]
    assert len(full) > 8, full
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = inference.ask(**_request(base, None, stop=[stop], **sampled))
    assert cut["text"] == full[: full.index(stop)]
    assert cut["tokens"] <= 12


def test_sampling_with_a_seed_is_reproducible(inference: InferenceProcess, tiny_models_dir: Path) -> None:
    base = tiny_models_dir / "tiny-llama"
    one = inference.ask(**_request(base, None, temperature=1.0, top_p=0.9, seed=7, max_tokens=8))
    two = inference.ask(**_request(base, None, temperature=1.0, top_p=0.9, seed=7, max_tokens=8))
    assert one["text"] == two["text"]


def test_bad_requests_get_errors_and_the_process_carries_on(inference: InferenceProcess, tiny_models_dir: Path,
                                                            tmp_path: Path) -> None:
    assert "error" in inference.ask_raw("{not json")
    missing = inference.ask(**_request(tmp_path / "nope", None, id="m"))
    assert missing["id"] == "m" and "base_model_dir" in missing["error"]
    assert "max_tokens" in inference.ask(**_request(tiny_models_dir / "tiny-llama", None, max_tokens=0))["error"]
    assert "adapter_dir" in inference.ask(**_request(tiny_models_dir / "tiny-llama", tmp_path))["error"]
    assert "text" in inference.ask(**_request(tiny_models_dir / "tiny-llama", None))


def test_adapters_trained_on_plain_text_are_prompted_without_the_chat_template(tmp_path: Path) -> None:
    import json as _json

    from tunevault.server.inference.process import trained_on_plain_text

    for data_format, plain in (("completion", True), ("text", True), ("chat", False), ("instruction", False)):
        adapter = tmp_path / data_format
        adapter.mkdir()
        (adapter / "metrics.json").write_text(_json.dumps({"data": {"format": data_format}}))
        assert trained_on_plain_text(adapter) is plain
    assert trained_on_plain_text(None) is False
    assert trained_on_plain_text(tmp_path / "missing") is False  # adapters from before formats: chats
