"""The 4-bit base model: NF4 double-quant loading, its on-disk cache, the bitsandbytes CPU-layout fix, and LoRA adapters on top.

Training and inference load the base through load_quantized_base() so an adapter always meets
the same quantized weights it was trained against. The first load of a base quantizes the
full-precision weights and saves the 4-bit result under `<models_dir>/.quantized/`; later loads
read that back without re-quantizing (the packed weights and quant states are bit-identical).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunevault.server.training.atomic_dir import atomic_dir

log = logging.getLogger("tunevault.quantized_model")

COMPUTE_DTYPE_ENV = "TUNEVAULT_COMPUTE_DTYPE"  # float32 | bfloat16 | float16: overrides the automatic choice
# "off" disables the quantized-base cache; a path puts it there instead of <models_dir>/.quantized
# (for a read-only model volume).
QUANTIZED_CACHE_ENV = "TUNEVAULT_QUANTIZED_CACHE"
QUANTIZED_CACHE_DIR = ".quantized"  # the leading dot keeps it out of the model store's listing
CACHE_MANIFEST = "tunevault-quantized.json"  # the entry's files and sizes: a truncated entry is rebuilt
CACHE_FORMAT = 1  # bump when what is saved, or how, changes


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 arithmetic natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype 4-bit weights are dequantized to for matmuls.

    bf16 where the hardware has it. On a CPU without native bf16 (AVX2 only), PyTorch emulates
    bf16 matmuls and they run about 30x slower than float32 (measured on two AVX2 EPYC cores:
    1.0 vs 31 GFLOP/s for a 944x576 @ 576x1536 matmul), so float32 is the fast choice there.
    """
    override = os.environ.get(COMPUTE_DTYPE_ENV)
    if override:
        return getattr(torch, override)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32




@dataclass(frozen=True)
class QuantizedBase:
    """A loaded 4-bit base and where it came from."""

    model: Any
    from_cache: bool  # True: read from the on-disk cache without quantizing
    cache_dir: Path | None  # the cache entry read or written; None when the cache is off


def _quantization_config(compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _load_kwargs(device: torch.device, compute_dtype: torch.dtype) -> dict[str, Any]:
    # Unquantized parts (embeddings, norms) stay float32 on a CPU: they are small, and LoRA
    # training is more stable with them in full precision (what prepare_model_for_kbit_training
    # would cast to). On a GPU they take the compute dtype: a float32 residual stream would double
    # activation memory and keep attention off its bf16 kernels (measured on an H100 with a
    # Llama-3-8B shape: 6.3k vs HF's 0.7k tokens/s with bf16, see bench/train_compare.py).
    dtype = compute_dtype if device.type == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if device.type == "cuda":
        kwargs["device_map"] = {"": device.index or 0}
    return kwargs


def _quantize(model_dir: Path, device: torch.device, compute_dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(model_dir), quantization_config=_quantization_config(compute_dtype), **_load_kwargs(device, compute_dtype)
    )


def _weight_files(model_dir: Path) -> list[Path]:
    return sorted([*model_dir.glob("*.safetensors"), *model_dir.glob("*.safetensors.index.json")])


def cache_key(model_dir: Path, device: torch.device, compute_dtype: torch.dtype) -> str:
    """What a cached 4-bit base must agree on: the source weights, the quantization and the libraries.

    The weights are identified by name, size and mtime rather than a content hash: hashing
    gigabytes would cost about as much as the quantization the cache saves, and the model
    store only ever replaces a model by writing new files.
    """
    import bitsandbytes
    import transformers

    identity = {
        "format": CACHE_FORMAT,
        "weights": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in _weight_files(model_dir)],
        "config": hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest(),
        "quantization": _quantization_config(compute_dtype).to_dict(),
        "device": device.type,  # CPU and CUDA quantize with different kernels
        "versions": [torch.__version__, transformers.__version__, bitsandbytes.__version__],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_root(model_dir: Path) -> Path | None:
    """Where cached quantized bases live; None when caching is switched off."""
    setting = os.environ.get(QUANTIZED_CACHE_ENV, "")
    if setting.lower() == "off":
        return None
    return Path(setting) if setting else model_dir.parent / QUANTIZED_CACHE_DIR


def _manifest(entry: Path) -> dict[str, int]:
    """File name -> size of every file the cache entry holds besides its manifest."""
    return {f.name: f.stat().st_size for f in sorted(entry.iterdir()) if f.name != CACHE_MANIFEST}


def _read_cache(entry: Path, device: torch.device, compute_dtype: torch.dtype) -> Any | None:
    """The cached model, or None when the entry is absent, incomplete or unreadable."""
    from transformers import AutoModelForCausalLM

    if not entry.exists():
        return None
    try:
        manifest = json.loads((entry / CACHE_MANIFEST).read_text())
        if manifest.get("files") != _manifest(entry):
            raise ValueError("files differ from the manifest (truncated or changed)")
        # The saved config carries the quantization config, so this loads the packed weights as they are.
        model = AutoModelForCausalLM.from_pretrained(str(entry), **_load_kwargs(device, compute_dtype))
        if count_4bit_layers(model) != manifest.get("linear4bit_layers"):
            raise ValueError("the loaded model is not the 4-bit model that was saved")
        return model
    except Exception as error:  # noqa: BLE001 - any unreadable cache is rebuilt from the source weights
        log.warning("quantized cache %s is unreadable (%s); quantizing again", entry, error)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _write_cache(model: Any, entry: Path) -> bool:
    """Save `model` as the cache entry atomically; False (and a log line) when it cannot be written."""
    try:
        # Readers (other workers, the inference process) see a whole entry or none.
        with atomic_dir(entry, replace_existing=False) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            manifest = {"files": _manifest(staging), "linear4bit_layers": count_4bit_layers(model)}
            (staging / CACHE_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        return True
    except Exception as error:  # noqa: BLE001 - the cache is an optimisation; no job fails for it
        # Most often another worker renamed its identical entry into place first.
        if not (entry / CACHE_MANIFEST).is_file():
            log.warning("cannot cache the quantized base in %s (%s); continuing without", entry, error)
        return False


def load_with_cache(model_dir: Path | str, device: torch.device, compute_dtype: torch.dtype) -> QuantizedBase:
    """Load a model-store directory in 4-bit NF4, from the quantized cache when it has this base."""
    model_dir = Path(model_dir)
    root = cache_root(model_dir)
    if root is None:
        return QuantizedBase(_quantize(model_dir, device, compute_dtype), from_cache=False, cache_dir=None)
    entry = root / f"{model_dir.name}-{cache_key(model_dir, device, compute_dtype)}"
    model = _read_cache(entry, device, compute_dtype)
    if model is not None:
        # PEFT writes name_or_path into an adapter's config: keep it naming the model, not the cache.
        model.name_or_path = model.config._name_or_path = str(model_dir)
        log.info("quantized base %s read from cache %s", model_dir.name, entry)
        return QuantizedBase(model, from_cache=True, cache_dir=entry)
    model = _quantize(model_dir, device, compute_dtype)
    if _write_cache(model, entry):
        log.info("quantized base %s cached in %s", model_dir.name, entry)
    return QuantizedBase(model, from_cache=False, cache_dir=entry)


def load_quantized_base(model_dir: Path | str, device: torch.device, compute_dtype: torch.dtype) -> Any:
    """Load a model-store directory as a 4-bit NF4 (double quantization) causal LM."""
    return load_with_cache(model_dir, device, compute_dtype).model


def count_4bit_layers(model: Any) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def pin_cpu_weight_layout(model: Any) -> int:
    """Stop bitsandbytes from repacking NF4 weights for its CPU inference kernel; returns layers touched.

    bitsandbytes 0.50.2 on AVX512-BF16 CPUs repacks a Linear4bit's weights the first time it runs
    in eval mode without grad, and gradients through the repacked layer are wrong afterwards
    (measured 97% off) without any error. Any model that is evaluated and then trained again
    needs this; tests/test_training_bnb_eval.py guards it.
    """
    import bitsandbytes as bnb

    touched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched


def prepare_for_training(model: Any, device: torch.device, checkpointing: bool = False) -> Any:
    """Freeze the base, cast what needs it, and turn on gradient checkpointing if asked.

    Checkpointing trades about a third more compute for activation memory: the trainer asks for
    it only when the job would not fit the device without it (memory_estimate).
    """
    from peft import prepare_model_for_kbit_training

    pin_cpu_weight_layout(model)
    if device.type == "cuda":
        # Not prepare_model_for_kbit_training: it would upcast every unquantized weight to float32.
        for param in model.parameters():
            param.requires_grad_(False)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()  # so checkpointed blocks see an input that needs grad
        return model
    with warnings.catch_warnings():
        # PEFT asks transformers a deprecated question here; the answer is right, the warning is noise.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False}
        )


def attach_lora(model: Any, r: int, alpha: float, dropout: float, target_modules: list[str] | None) -> Any:
    """Wrap the model with fresh LoRA adapters (B = 0, so the wrapped model starts equal to the base)."""
    from peft import LoraConfig, get_peft_model

    # "all-linear": every linear projection except the output head, whatever the architecture calls them.
    targets: list[str] | str = list(target_modules) if target_modules else "all-linear"
    if targets == ["all-linear"]:
        targets = "all-linear"  # PEFT takes the shortcut only as a plain string
    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(model, config)


def lora_target_names(model: Any) -> list[str]:
    """The module names LoRA was attached to (e.g. q_proj, down_proj), for the job's record."""
    config = model.peft_config[model.active_adapter]
    names = [config.target_modules] if isinstance(config.target_modules, str) else config.target_modules
    # "all-linear" expands to full paths (model.layers.0.mlp.up_proj); the last part is the name people know.
    return sorted({name.rsplit(".", 1)[-1] for name in names})


def trainable_parameters(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
