"""Model store imports: a local HF directory through the real CLI, names, idempotence, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_MODEL
from tests.tiny_model import make_tiny_model
from tunevault.server.training.model_import import (
    ModelImportError,
    import_model,
    is_complete,
    name_from_path,
    validate_model_name,
)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunevault.server.training.model_import", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("src"), models_dir / DEFAULT_MODEL, name="My_Tiny Model")


def test_importing_a_local_hf_directory_through_the_cli(source: Path, tmp_path: Path) -> None:
    store = tmp_path / "models"
    result = _cli("--models-dir", str(store), str(source), "--name", "tiny-copy")
    assert result.returncode == 0, result.stderr
    target = Path(result.stdout.strip())
    assert target == (store / "tiny-copy").resolve()
    assert is_complete(target)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in target.iterdir()}
    assert "quantization_config" not in json.loads((target / "config.json").read_text())
    # Only the finished model is in the store: no staging directory left behind.
    assert [p.name for p in store.iterdir()] == ["tiny-copy"]

    # The imported model loads in 4-bit, as the worker loads it.
    probe = ("import sys, torch; from tunevault.server.training.quantized_model import load_quantized_base;"
             "m = load_quantized_base(sys.argv[1], torch.device('cpu'), torch.float32); print(m.is_loaded_in_4bit)")
    loaded = subprocess.run([sys.executable, "-c", probe, str(target)], capture_output=True, text=True, timeout=300)
    assert loaded.stdout.strip().endswith("True"), loaded.stderr

    again = _cli("--models-dir", str(store), str(source), "--name", "tiny-copy")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_name_is_derived_from_the_path_and_exist_ok_keeps_the_model(source: Path, tmp_path: Path) -> None:
    first = import_model(source, tmp_path, exist_ok=True)
    assert first.created and first.model_dir.name == "my_tiny-model"
    mtime = (first.model_dir / "model.safetensors").stat().st_mtime_ns
    second = import_model(source, tmp_path, exist_ok=True)
    assert not second.created and (second.model_dir / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("name", ["", "Upper", "-dash", "a" * 65, "has space", "../escape"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ModelImportError):
        validate_model_name(name)


def test_name_from_a_gguf_file() -> None:
    assert name_from_path(Path("/x/SmolLM2-135M-Instruct.Q4_1.gguf")) == "smollm2-135m-instruct.q4_1"


def test_refusals(tmp_path: Path, source: Path) -> None:
    with pytest.raises(ModelImportError, match="does not exist"):
        import_model(tmp_path / "missing", tmp_path / "store")
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(ModelImportError, match="config.json"):
        import_model(not_a_model, tmp_path / "store")
    quantized = tmp_path / "quantized"
    quantized.mkdir()
    config = json.loads((source / "config.json").read_text())
    (quantized / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "bitsandbytes"}}))
    with pytest.raises(ModelImportError, match="already quantized"):
        import_model(quantized, tmp_path / "store")
    assert not any((tmp_path / "store").glob(".importing-*"))


def test_default_model_is_prepared_and_complete(models_dir: Path) -> None:
    """`make model` ran model_import --default; running it again is a no-op that prints the path."""
    result = _cli("--models-dir", str(models_dir), "--default")
    assert result.returncode == 0, result.stderr
    target = Path(result.stdout.strip())
    assert target.name == DEFAULT_MODEL and is_complete(target)
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["eos_token_id"] == 2
