"""Peak-memory preflight: a job's expected peak memory from the base model's config.json and the resolved hyperparameters.

Pure Python on purpose: the gRPC server checks an estimate against the device before it queues
a job, and the server never imports torch. The measured peak it is compared with comes from the
worker (training/runtime.py).

The model, per part (CPU figures calibrated on SmolLM2-135M, bitsandbytes 0.50.2, transformers 5.23):
- 4-bit weights: 0.5 byte per quantized parameter plus the double-quantized block constants.
- full-precision parts: embeddings, an untied lm_head and the norms, in float32 (load_quantized_base).
- LoRA: parameters, gradients and AdamW's two moments, all float32: 16 bytes per LoRA parameter.
- activations: every layer's saved tensors for every token of a micro-batch. The hidden states
  are float32 (the embeddings are), whatever the 4-bit compute dtype. Without gradient
  checkpointing (CPU) a layer keeps about 69 KB per token on SmolLM2 (measured 69.5 KB with
  saved-tensor hooks, this formula gives 68.4 KB); with checkpointing (CUDA) a layer keeps only its
  input, and one layer is recomputed in full during backward.
- logits: float32 logits, their log-softmax and gradient for the labelled positions only; past
  CHUNKED_LOGITS_BYTES the objective computes them CE_CHUNK_POSITIONS at a time (training/objective.py).
- runtime: Python, torch and the libraries on CPU; the CUDA context and cuBLAS workspaces on GPU.
- allocator: what the measured peak holds beyond the tensors themselves (backward-pass
  temporaries, freed blocks the allocator keeps), as a share of the activations. On CPU the worker
  fixes glibc's mmap threshold (runtime.return_freed_memory_to_os); with glibc's default, freed
  activations stayed in the heap and this share was 0.7x to 1x.

Calibration (CPU, SmolLM2-135M, r=16 on all linear layers, the licence-size job of
bench/memory_bench.py: batch 8 x 372 tokens, measured ru_maxrss over 3 steps and an eval):
- without checkpointing, glibc default: measured 9.87-10.26 GiB (the code before issue 25);
- without checkpointing, fixed mmap threshold: measured 6.97 GiB, estimated 7.18 GiB;
- with checkpointing (the CPU worker's choice for this job), fixed mmap threshold: see
  CALIBRATION below and bench/results/memory_bench.json.
The CUDA constants are not yet calibrated.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tunevault.server.contract.hyperparameters import ResolvedHyperparameters
from tunevault.server.privacy.sealing.encryption import open_plain

log = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2
FLOAT32 = 4
# Bytes per activation and full-precision weight: float32 on a CPU (load_quantized_base keeps the
# residual stream there), bf16 on a GPU (calibrated on an H100 below).
ACTIVATION_BYTES = {"cpu": FLOAT32, "cuda": 2}

QUANT_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # NF4 nibbles, uint8 absmax per 64, fp32 per 256 blocks
ADAMW_BYTES_PER_LORA_PARAM = 4 * FLOAT32  # weight, gradient, exp_avg, exp_avg_sq
LOGIT_COPIES = 3  # logits, log-softmax saved for backward, their gradient
# The objective's chunking of long answers (training/objective.py reads these): past this many
# bytes of float32 labelled logits it projects and scores CE_CHUNK_POSITIONS positions at a time.
CHUNKED_LOGITS_BYTES = 64 * MIB
CE_CHUNK_POSITIONS = 256
RUNTIME_BYTES = {"cpu": 600 * MIB, "cuda": 1 * GIB}
ALLOCATOR_SHARE = {"cpu": 0.2, "cuda": 0.2}  # cpu measured (module docstring); cuda a guess for torch's caching allocator
# Token ids held by the worker as Python lists (ids and labels): a pointer and an int object each.
TOKENIZED_BYTES_PER_TOKEN = 2 * (8 + 28)
DATASET_BYTES_PER_TOKEN = 3  # chat text in UTF-8: about 3-4 bytes a token (SmolLM2 on the triage set: 3.0-4.2)
TEMPLATE_TOKENS_PER_MESSAGE = 5  # <|im_start|>role\n ... <|im_end|>\n
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Margin kept free for the server, the inference process and the page cache when the limit is automatic.
AUTO_MARGIN_SHARE, AUTO_MARGIN_MIN = 0.10, 1 * GIB


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a decoder-only model's config.json."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tie_embeddings: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return cls(
            hidden=hidden,
            layers=int(config["num_hidden_layers"]),
            intermediate=int(config.get("intermediate_size") or 4 * hidden),
            vocab=int(config["vocab_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection of one layer."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def activation_floats_per_token(self) -> int:
        """Floats one layer saves for backward per token, LoRA aside.

        Norm inputs and outputs (4h), q before and after rope and the attention output (3q), k
        before and after rope and v (3kv), and the MLP's gate, up, activation and product (4i).
        """
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return 4 * self.hidden + 3 * q + 3 * kv + 4 * self.intermediate


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's estimated peak memory in bytes, by part, and what it was computed for."""

    device: str  # cpu | cuda
    batch_size: int
    max_seq_len: int
    micro_batch_tokens: int
    quantized_weights: int
    full_precision_weights: int
    lora_training_state: int
    activations: int
    logits: int
    runtime: int
    allocator: int
    dataset: int
    total: int

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    def exceeds(self, limit_bytes: int) -> bool:
        return self.total > limit_bytes


def _targets(target_modules: list[str] | tuple[str, ...] | None, shape: ModelShape) -> list[tuple[int, int]]:
    """(in, out) of every LoRA-wrapped projection of one layer; an unknown name counts as hidden x hidden."""
    linears = shape.linear_shapes()
    names = list(target_modules) if target_modules else ["all-linear"]
    if names == ["all-linear"]:
        names = list(ALL_LINEAR)
    return [linears.get(name.rsplit(".", 1)[-1], (shape.hidden, shape.hidden)) for name in names]


def _lora_floats_per_token(targets: list[tuple[int, int]], r: int, dropout: float) -> tuple[int, int]:
    """(floats, bytes of bool masks) LoRA saves per token per layer: the dropped-out input, its mask, A's output."""
    if dropout > 0:
        inputs = sum(i for i, _ in targets)
        return inputs + r * len(targets), inputs
    return r * len(targets), 0  # nn.Identity: A reads the input the base layer saved anyway


def _logit_positions(labelled: int, vocab: int) -> int:
    """Labelled positions whose logits are in memory at once: all, or one chunk once they are chunked."""
    return labelled if labelled * vocab * FLOAT32 <= CHUNKED_LOGITS_BYTES else min(labelled, CE_CHUNK_POSITIONS)


def estimate_peak_memory(
    config: dict[str, Any],
    hyperparameters: ResolvedHyperparameters,
    *,
    device: str = "cpu",
    label_tokens_per_row: int | None = None,
    dataset_tokens: int = 0,
) -> MemoryEstimate:
    """Peak memory of a job training `config`'s model with resolved `hyperparameters` on `device`.

    A micro-batch is taken at its worst: batch_size rows (or packs) of max_seq_len tokens. Without
    `label_tokens_per_row`, every position is assumed labelled (logits for all of them).
    """
    if hyperparameters.max_seq_len is None:
        raise ValueError("the estimate needs max_seq_len (ResolvedHyperparameters.with_data)")
    shape = ModelShape.from_config(config)
    batch, seq = hyperparameters.batch_size, hyperparameters.max_seq_len
    r, dropout = hyperparameters.lora_r, hyperparameters.lora_dropout
    # None ("auto") is estimated without: the worker turns checkpointing on only when that does not fit.
    checkpointing = bool(hyperparameters.gradient_checkpointing)
    width = ACTIVATION_BYTES[device]
    tokens = batch * seq
    labelled = batch * min(seq, label_tokens_per_row) if label_tokens_per_row is not None else tokens

    linears = shape.linear_shapes().values()
    quantized = shape.layers * sum(i * o for i, o in linears)
    full = shape.vocab * shape.hidden * (1 if shape.tie_embeddings else 2) + (2 * shape.layers + 1) * shape.hidden
    targets = _targets(hyperparameters.lora_target_modules, shape)
    lora_params = shape.layers * r * sum(i + o for i, o in targets)

    lora_floats, mask_bytes = _lora_floats_per_token(targets, r, dropout)
    layer_bytes = width * (shape.activation_floats_per_token() + lora_floats) + mask_bytes
    if checkpointing:
        # Each layer keeps its input; backward recomputes one layer at a time in full.
        per_token = shape.layers * width * shape.hidden + layer_bytes
    else:
        per_token = shape.layers * layer_bytes
    # One layer's attention probabilities at a time, if the kernel materialises them.
    attention = batch * shape.heads * seq * seq * width
    activations = tokens * per_token + attention

    parts = {
        "quantized_weights": math.ceil(quantized * QUANT_BYTES_PER_PARAM),
        "full_precision_weights": full * width,
        "lora_training_state": lora_params * ADAMW_BYTES_PER_LORA_PARAM,
        "activations": activations,
        "logits": _logit_positions(labelled, shape.vocab) * shape.vocab * FLOAT32 * LOGIT_COPIES,
        "runtime": RUNTIME_BYTES[device],
        "allocator": math.ceil(activations * ALLOCATOR_SHARE[device]),
        "dataset": dataset_tokens * TOKENIZED_BYTES_PER_TOKEN if device == "cpu" else 0,
    }
    return MemoryEstimate(device=device, batch_size=batch, max_seq_len=seq, micro_batch_tokens=tokens,
                          total=sum(parts.values()), **parts)


def preflight(model_dir: Path, resolved: ResolvedHyperparameters, train_file: Path, device: str) -> MemoryEstimate | None:
    """A job's estimate before its rows are tokenized, as the API and the scheduler both need it.

    An "auto" max_seq_len is taken from the training file's longest row as the worker will (after
    tokenizing) resolve it. None, with a warning, when the model's config.json or the file cannot
    be read for it: that is no reason to refuse a job; the worker will tell.
    """
    try:
        tokens = dataset_tokens(train_file)
        config = json.loads((model_dir / "config.json").read_text())
        return estimate_peak_memory(config, resolved.with_data(tokens.longest_row), device=device,
                                    label_tokens_per_row=tokens.longest_answer, dataset_tokens=tokens.total)
    except (KeyError, TypeError, ValueError, OSError) as error:
        log.warning("no memory estimate for %s: %r", model_dir.name, error)
        return None


# What the server knows of a dataset before it is tokenized -------------------------------------

@dataclass(frozen=True)
class DatasetTokens:
    """Token counts guessed from a chat JSONL file's text, for a model not yet loaded."""

    longest_row: int  # tokens of the longest conversation, chat template included
    longest_answer: int  # labelled (assistant) tokens of the conversation with most of them
    total: int


def _tokens(text_bytes: int, messages: int) -> int:
    return math.ceil(text_bytes / DATASET_BYTES_PER_TOKEN) + TEMPLATE_TOKENS_PER_MESSAGE * messages


def dataset_tokens(path: Path) -> DatasetTokens:
    """Token counts of a checked chat JSONL file; remembered, as CreateJob and the scheduler both ask."""
    stat = path.stat()
    return _dataset_tokens(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _dataset_tokens(path: str, size: int, mtime_ns: int) -> DatasetTokens:
    # One pass (about a second for the largest upload allowed); uploads are checked, so every line parses.
    longest_row = longest_answer = total = 0
    with open_plain(Path(path)) as handle:  # a sealed upload is decrypted in memory
        for line in handle:
            if not line.strip():
                continue
            messages = json.loads(line)["messages"]
            sizes = [len(m["content"].encode()) for m in messages]
            row = _tokens(sum(sizes), len(messages))
            answers = [s for m, s in zip(messages, sizes) if m["role"] == "assistant"]
            longest_row, total = max(longest_row, row), total + row
            longest_answer = max(longest_answer, _tokens(sum(answers), len(answers)))
    return DatasetTokens(longest_row, longest_answer, total)


# The device's limit -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceLimit:
    """How much memory a job may use, and where that figure came from."""

    device: str  # cpu | cuda: the device workers will train on
    bytes: int | None  # None: unknown (a GPU host with no configured value), so nothing is checked
    source: str  # "configured", "cgroup", "ram" or "unknown"


def training_device() -> str:
    """cuda when an NVIDIA driver is loaded and GPUs are not hidden; found without importing torch."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return "cpu"
    if Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir()):
        return "cuda"
    return "cuda" if shutil.which("nvidia-smi") and _nvidia_smi_lists_gpus() else "cpu"


def _nvidia_smi_lists_gpus() -> bool:
    try:
        return bool(subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return False


def cgroup_memory_limit() -> int | None:
    """The container's memory limit (cgroup v2 or v1), or None when there is none."""
    for path in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 2**60:  # v1 writes "no limit" as a huge number
            return int(value)
    return None


def device_limit(configured: int | None, device: str | None = None, concurrent_jobs: int = 1) -> DeviceLimit:
    """The configured figure, else on CPU the cgroup limit or total RAM less a margin, shared by
    the jobs that may run at once (CPU workers share one RAM; GPU workers get a GPU each); unknown on GPU."""
    import psutil

    device = device or training_device()
    if configured is not None:
        return DeviceLimit(device, configured, "configured")
    if device != "cpu":
        return DeviceLimit(device, None, "unknown")
    ram = psutil.virtual_memory().total
    cgroup = cgroup_memory_limit()
    available, source = (cgroup, "cgroup") if cgroup is not None and cgroup < ram else (ram, "ram")
    margin = max(AUTO_MARGIN_MIN, int(available * AUTO_MARGIN_SHARE))
    return DeviceLimit(device, max(0, available - margin) // max(1, concurrent_jobs), source)


def gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"
