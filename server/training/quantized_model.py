"""The 4-bit base model: NF4 double-quant loading, the bitsandbytes CPU-layout fix, and LoRA adapters on top.

Training and inference load the base through load_quantized_base() so an adapter always meets
the same quantized weights it was trained against.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

COMPUTE_DTYPE_ENV = "TUNEVAULT_COMPUTE_DTYPE"  # float32 | bfloat16 | float16: overrides the automatic choice


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


def load_quantized_base(model_dir: Path, device: torch.device, compute_dtype: torch.dtype) -> Any:
    """Load a model-store directory as a 4-bit NF4 (double quantization) causal LM."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    # Unquantized parts (embeddings, norms) stay float32: they are small, and LoRA training
    # is more stable with them in full precision (what prepare_model_for_kbit_training would cast to).
    kwargs: dict[str, Any] = {"quantization_config": quantization, "dtype": torch.float32, "local_files_only": True}
    if device.type == "cuda":
        kwargs["device_map"] = {"": device.index or 0}
    return AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)


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


def prepare_for_training(model: Any, device: torch.device) -> Any:
    """Freeze the base and cast what needs it, as PEFT's prepare_model_for_kbit_training does."""
    from peft import prepare_model_for_kbit_training

    pin_cpu_weight_layout(model)
    with warnings.catch_warnings():
        # PEFT asks transformers a deprecated question here; the answer is right, the warning is noise.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # Gradient checkpointing trades a third more compute for activation memory. A CPU job on a
        # small model has memory to spare and no compute to spare, so only GPUs use it.
        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=device.type == "cuda",
            gradient_checkpointing_kwargs={"use_reentrant": False},
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
