"""Fused GPU kernels for the model's hot elementwise ops (RMSNorm, SwiGLU, RoPE), from liger-kernel.

Unfused, each of those is several memory-bound kernels per layer, and at QLoRA's sizes they cost
a tenth or more of a training step on an H100. liger-kernel (Triton) fuses them and keeps fewer
activations. It is an optional dependency (the `gpu` extra): CPU hosts never need it, and a model
family it does not know trains unfused. The cross-entropy kernels are left alone: the objective
already computes logits only at the labelled positions.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch

log = logging.getLogger("tunevault.worker")

# model_type in config.json -> liger's patch function for that family
PATCHES = {
    "llama": "apply_liger_kernel_to_llama",
    "mistral": "apply_liger_kernel_to_mistral",
    "qwen2": "apply_liger_kernel_to_qwen2",
    "qwen3": "apply_liger_kernel_to_qwen3",
    "gemma2": "apply_liger_kernel_to_gemma2",
    "phi3": "apply_liger_kernel_to_phi3",
}


def apply_fused_kernels(model_type: str, device: torch.device) -> list[str]:
    """Patch the model family's modules before it is loaded; returns what was fused (empty: nothing)."""
    if device.type != "cuda" or model_type not in PATCHES:
        return []
    try:
        liger = importlib.import_module("liger_kernel.transformers")
        patch = getattr(liger, PATCHES[model_type])
        patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    except Exception as error:  # noqa: BLE001 - absent or incompatible: train unfused rather than fail the job
        log.warning("fused kernels not used (%s: %s)", type(error).__name__, error)
        return []
    return ["rope", "rms_norm", "swiglu"]


def model_type(model_dir: Path) -> str:
    import json

    return str(json.loads((model_dir / "config.json").read_text()).get("model_type", ""))
