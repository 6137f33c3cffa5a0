"""Fine-tuning hyperparameters: their names, validation at the API edge, and resolution of "auto" values.

Pure Python on purpose: the gRPC server validates a CreateJob request with this module and must
never import torch. Every field is optional; None (or the string "auto") means "choose from the
dataset", and resolve() makes that choice the same way in the API process and in the worker.
Switches (export_merged) have nothing to choose from the dataset: "auto" is simply their default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


class HyperparameterError(ValueError):
    """One hyperparameter is unacceptable; `field` names it so the API can say which."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"hyperparameter {field!r}: {reason}")
        self.field = field
        self.reason = reason


LR_SCHEDULERS = ("cosine", "linear", "constant")
DP_ACCOUNTANTS = ("rdp", "prv")  # Opacus' Renyi-DP accountant (the default) or its tighter PRV one
TRUNCATION_POLICIES = ("truncate", "drop")  # a row longer than max_seq_len: cut on the right, or left out

# Defaults chosen for LoRA on small (100M-1B) chat models on a CPU or one GPU; each is what
# resolve() returns when a field is left on "auto".
AUTO_LEARNING_RATE = 2e-3  # LoRA on a 135M model tolerates and wants a high rate
AUTO_LORA_R = 16  # rank 16 on all linear layers: enough capacity for classification-like tasks
AUTO_LORA_ALPHA_PER_R = 2.0  # alpha = 2r, the common QLoRA choice
AUTO_LORA_DROPOUT = 0.05
AUTO_WARMUP_RATIO = 0.1
AUTO_WEIGHT_DECAY = 0.0
AUTO_MAX_GRAD_NORM = 1.0
AUTO_LR_SCHEDULER = "cosine"
AUTO_SEED = 42
AUTO_EVAL_ACCURACY_MAX_EXAMPLES = 50
AUTO_MAX_SEQ_LEN_CAP = 1024  # auto max_seq_len is the longest row, up to this
AUTO_BATCH_SIZE = 8  # rows per forward pass; larger batches amortise 4-bit dequantisation per pass
# An "auto" job trains on at most this many examples (rows, counting repeats over epochs): small
# datasets get several passes, larger ones a part of one. Measured on the triage example
# (SmolLM2-135M, 2 AVX2 cores, ~118 tokens a row): 256 examples = 32 steps of 8 train in about
# 4 minutes, and exact-match accuracy goes from 0% to 100% (90% already at 20 steps). A GPU
# deployment can pass a larger budget to resolve().
AUTO_EXAMPLE_BUDGET = 256
AUTO_MAX_EPOCHS = 10
# Validation split: about 50 rows for small sets (enough for an accuracy figure), 5-20% otherwise.
AUTO_VALIDATION_ROWS = 50
AUTO_VALIDATION_FRACTION_RANGE = (0.05, 0.2)
# Differential privacy (on when dp_epsilon or dp_noise_multiplier is set). Per-example clipping
# at 1.0 suits the per-sequence loss of LoRA fine-tuning; AdamW makes the step size insensitive to
# it, so it only sets where clipping starts to bite.
AUTO_DP_MAX_GRAD_NORM = 1.0
AUTO_DP_ACCOUNTANT = "rdp"
# delta must be well below 1/N (a mechanism that leaks one whole row at random meets delta = 1/N).
# 1e-5 is the customary value; past about 35,000 rows 1/N^1.1 is smaller and takes over.
AUTO_DP_DELTA_CAP = 1e-5
# A canary repeated more often than this says nothing a smaller count would not; more canaries
# than MAX_CANARIES make the audit cost more than the training on a CPU.
MAX_CANARIES = 8
MAX_CANARY_REPETITIONS = 1000
CANARY_SECRET_CHARS = (4, 200)
DP_FIELDS = ("dp_epsilon", "dp_noise_multiplier", "dp_delta", "dp_max_grad_norm", "dp_accountant")


@dataclass(frozen=True)
class Hyperparameters:
    """Validated hyperparameters; None means "auto"."""

    epochs: int | None = None  # passes over the training split; ignored when max_steps is set
    max_steps: int | None = None  # optimizer steps in total; overrides epochs
    learning_rate: float | None = None  # peak learning rate after warmup
    batch_size: int | None = None  # rows per forward pass (micro-batch)
    gradient_accumulation_steps: int | None = None  # micro-batches per optimizer step
    lora_r: int | None = None  # LoRA rank; higher adds capacity and memory
    lora_alpha: float | None = None  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float | None = None  # dropout on the LoRA input
    lora_target_modules: tuple[str, ...] | None = None  # module names; None = all linear projections
    max_seq_len: int | None = None  # rows are truncated to this many tokens
    warmup_ratio: float | None = None  # fraction of steps spent warming up the learning rate
    weight_decay: float | None = None  # AdamW decoupled weight decay on LoRA weights
    max_grad_norm: float | None = None  # gradient clipping; 0 disables it
    lr_scheduler: str | None = None  # cosine | linear | constant (after warmup)
    eval_every: int | None = None  # steps between eval-loss passes; 0 = only at the end
    validation_fraction: float | None = None  # share of the training file held out when no validation file
    seed: int | None = None  # seeds the split, the data order, LoRA init and dropout
    eval_accuracy_max_examples: int | None = None  # validation rows for exact-match accuracy; 0 = skip
    checkpoint_every: int | None = None  # steps between checkpoints; 0 = only when stopped
    # Also write base + adapter merged in 16-bit (plain transformers, no PEFT or bitsandbytes
    # needed to serve it); off by default: it is a full copy of the model on disk.
    export_merged: bool = False
    # Recompute activations in the backward pass to save memory, for about a third more compute.
    # None (auto): the worker decides, off unless the job would not fit the device without it.
    gradient_checkpointing: bool | None = None
    # Stop after this many evals (eval_every) without a lower eval loss, and keep the adapter of
    # the best eval as the result; 0 = train every step and keep the final adapter.
    early_stopping_patience: int | None = None
    truncation: str | None = None  # "truncate" (default) or "drop" rows longer than max_seq_len
    # DP-SGD on the LoRA weights: set exactly one of dp_epsilon (the noise is computed to spend at
    # most this) or dp_noise_multiplier (epsilon follows from it). The others need one of the two.
    # With DP, a step's rows are Poisson-sampled (expected batch_size x gradient_accumulation_steps),
    # rows are not packed, and max_grad_norm gives way to per-example clipping at dp_max_grad_norm.
    dp_epsilon: float | None = None  # target epsilon for the whole job
    dp_noise_multiplier: float | None = None  # Gaussian noise std in units of dp_max_grad_norm
    dp_delta: float | None = None  # None: min(1e-5, 1/N^1.1), N = training rows
    dp_max_grad_norm: float | None = None  # per-example gradient clipping norm
    dp_accountant: str | None = None  # rdp (default) | prv
    # Memorization audit: one canary (a random secret in a question-answer row) planted per entry,
    # repeated that many times, and its exposure measured after training; with it, training answers'
    # identifiers are looked for in greedy answers. canary_secrets replace the random secrets, in order.
    canary_repetitions: tuple[int, ...] | None = None
    canary_secrets: tuple[str, ...] | None = None

    @property
    def dp(self) -> bool:
        return self.dp_epsilon is not None or self.dp_noise_multiplier is not None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("lora_target_modules", "canary_repetitions", "canary_secrets"):
            if getattr(self, name) is not None:
                out[name] = list(getattr(self, name))
        return out


@dataclass(frozen=True)
class _Rule:
    kind: type  # int, float, str, bool or tuple (list of str)
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low rather than >= low
    choices: tuple[str, ...] = ()  # the values a str rule accepts


_RULES: dict[str, _Rule] = {
    "epochs": _Rule(int, 1, 1000),
    "max_steps": _Rule(int, 1, 10_000_000),
    "learning_rate": _Rule(float, 0.0, 1.0, low_open=True),
    "batch_size": _Rule(int, 1, 1024),
    "gradient_accumulation_steps": _Rule(int, 1, 1024),
    "lora_r": _Rule(int, 1, 256),
    "lora_alpha": _Rule(float, 0.0, 4096.0, low_open=True),
    "lora_dropout": _Rule(float, 0.0, 0.9),
    "lora_target_modules": _Rule(tuple),
    "max_seq_len": _Rule(int, 16, 32768),
    "warmup_ratio": _Rule(float, 0.0, 0.9),
    "weight_decay": _Rule(float, 0.0, 1.0),
    "max_grad_norm": _Rule(float, 0.0, 1e6),
    "lr_scheduler": _Rule(str, choices=LR_SCHEDULERS),
    "truncation": _Rule(str, choices=TRUNCATION_POLICIES),
    "eval_every": _Rule(int, 0, 10_000_000),
    "validation_fraction": _Rule(float, 0.0, 0.5, low_open=True),
    "seed": _Rule(int, 0, 2**32 - 1),
    "eval_accuracy_max_examples": _Rule(int, 0, 100_000),
    "checkpoint_every": _Rule(int, 0, 10_000_000),
    "export_merged": _Rule(bool),
    "gradient_checkpointing": _Rule(bool),
    "early_stopping_patience": _Rule(int, 0, 1000),
    "dp_epsilon": _Rule(float, 0.0, 100.0, low_open=True),
    "dp_noise_multiplier": _Rule(float, 0.0, 100.0, low_open=True),  # 0 would be no privacy at all
    "dp_delta": _Rule(float, 0.0, 0.1, low_open=True),
    "dp_max_grad_norm": _Rule(float, 0.0, 1e6, low_open=True),
    "dp_accountant": _Rule(str, choices=DP_ACCOUNTANTS),
    "canary_repetitions": _Rule(list, 1, MAX_CANARY_REPETITIONS),
    "canary_secrets": _Rule(list),
}
assert set(_RULES) == {f.name for f in fields(Hyperparameters)}


def _check_number(name: str, value: Any, rule: _Rule) -> int | float:
    # bool is an int subclass in Python; True as a batch size is a caller bug, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HyperparameterError(name, f"must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise HyperparameterError(name, f"must be finite, got {value}")
    if rule.kind is int:
        # JSON and protobuf Struct carry every number as a double; 8.0 is an honest 8.
        if isinstance(value, float):
            if not value.is_integer():
                raise HyperparameterError(name, f"must be a whole number, got {value}")
            value = int(value)
    else:
        value = float(value)
    assert rule.low is not None and rule.high is not None
    too_low = value <= rule.low if rule.low_open else value < rule.low
    if too_low or value > rule.high:
        bracket = "(" if rule.low_open else "["
        raise HyperparameterError(name, f"must be in {bracket}{rule.low:g}, {rule.high:g}], got {value}")
    return value


def _check_modules(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise HyperparameterError(name, "must be a list of module names")
    if not 1 <= len(value) <= 64:
        raise HyperparameterError(name, "must name between 1 and 64 modules")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > 128:
            raise HyperparameterError(name, f"module names must be non-empty strings, got {item!r}")
        if not all(c.isalnum() or c in "._-" for c in item):
            raise HyperparameterError(name, f"module name {item!r} has characters other than letters, digits, '.', '_', '-'")
    return tuple(value)


def _check_switch(name: str, value: Any) -> bool:
    # Strict like the numbers: "false" or 0 from a hand-written spec is a caller bug, and a
    # truthy "false" would silently turn the switch on.
    if not isinstance(value, bool):
        raise HyperparameterError(name, f"must be true or false, got {value!r} ({type(value).__name__})")
    return value


def validate(raw: dict[str, Any] | None) -> Hyperparameters:
    """Check a user's hyperparameters; raise HyperparameterError naming the first bad field."""
    if raw is None:
        return Hyperparameters()
    if not isinstance(raw, dict):
        raise HyperparameterError("hyperparameters", "must be an object of name -> value")
    values: dict[str, Any] = {}
    for name in sorted(raw):
        value = raw[name]
        rule = _RULES.get(name)
        if rule is None:
            raise HyperparameterError(str(name), f"unknown hyperparameter; known: {', '.join(sorted(_RULES))}")
        if value is None or value == "auto":
            continue
        if rule.kind is tuple:
            values[name] = _check_modules(name, value)
        elif rule.kind is list:
            values[name] = _check_canary_list(name, value, rule) or None  # [] is "no audit", as unset
        elif rule.kind is bool:
            values[name] = _check_switch(name, value)
        elif rule.kind is str:
            if value not in rule.choices:
                raise HyperparameterError(name, f"must be one of {', '.join(rule.choices)}, got {value!r}")
            values[name] = value
        else:
            values[name] = _check_number(name, value, rule)
    _check_dp(values)
    if len(values.get("canary_secrets") or ()) > len(values.get("canary_repetitions") or ()):
        raise HyperparameterError("canary_secrets", "needs one canary_repetitions entry per secret (how often to plant it)")
    return Hyperparameters(**values)


def _check_canary_list(name: str, value: Any, rule: _Rule) -> tuple:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise HyperparameterError(name, "must be a list")
    if len(value) > MAX_CANARIES:
        raise HyperparameterError(name, f"must have at most {MAX_CANARIES} entries")
    if name == "canary_secrets":
        low, high = CANARY_SECRET_CHARS
        for item in value:
            if not isinstance(item, str) or not low <= len(item.strip()) <= high or "\n" in item:
                raise HyperparameterError(name, f"each secret must be one line of {low}-{high} characters, got {item!r}")
        return tuple(item.strip() for item in value)
    return tuple(int(_check_number(name, item, _Rule(int, rule.low, rule.high))) for item in value)


def _check_dp(values: dict[str, Any]) -> None:
    if "dp_epsilon" in values and "dp_noise_multiplier" in values:
        raise HyperparameterError(
            "dp_noise_multiplier", "set either dp_epsilon (the noise is computed for it) or dp_noise_multiplier, not both"
        )
    if "dp_epsilon" in values or "dp_noise_multiplier" in values:
        return
    for name in DP_FIELDS:
        if name in values:
            raise HyperparameterError(name, "has an effect only with differential privacy on: set dp_epsilon or dp_noise_multiplier too")


def auto_dp_delta(rows: int) -> float:
    """The default delta: 1e-5, or 1/N^1.1 when that is smaller, so always below 1/N."""
    return min(AUTO_DP_DELTA_CAP, 1.0 / max(rows, 2) ** 1.1)


def auto_validation_fraction(rows: int) -> float:
    """About 50 held-out rows for small sets, 5-20% of the file otherwise."""
    low, high = AUTO_VALIDATION_FRACTION_RANGE
    return min(high, max(low, AUTO_VALIDATION_ROWS / max(rows, 1)))


def validation_split_size(rows: int, fraction: float) -> int:
    """Rows held out for validation: at least one, and at least one left to train on."""
    if rows < 2:
        return 0
    return min(rows - 1, max(1, round(rows * fraction)))


def resolve(
    hp: Hyperparameters,
    train_rows: int,
    *,
    has_validation_file: bool = False,
    longest_row_tokens: int | None = None,
    example_budget: int = AUTO_EXAMPLE_BUDGET,
) -> dict[str, Any]:
    """Fill every "auto" field from the dataset size and return the complete set as a plain dict.

    train_rows counts the rows of the training file; without a validation file the held-out
    split comes out of them first. longest_row_tokens is known only after tokenizing (in the
    worker); without it max_seq_len stays None ("auto"), everything else is filled. The API and
    the worker get the same answer from the same counts.
    """
    if train_rows < 1:
        raise HyperparameterError("train_rows", "the training set has no rows")
    out = hp.to_dict()

    fraction = hp.validation_fraction if hp.validation_fraction is not None else auto_validation_fraction(train_rows)
    out["validation_fraction"] = fraction
    rows = train_rows if has_validation_file else train_rows - validation_split_size(train_rows, fraction)
    rows = max(rows, 1)

    out["batch_size"] = hp.batch_size if hp.batch_size is not None else min(AUTO_BATCH_SIZE, rows)
    out["gradient_accumulation_steps"] = hp.gradient_accumulation_steps if hp.gradient_accumulation_steps is not None else 1
    rows_per_step = out["batch_size"] * out["gradient_accumulation_steps"]
    steps_per_epoch = math.ceil(math.ceil(rows / out["batch_size"]) / out["gradient_accumulation_steps"])

    epochs = hp.epochs
    if epochs is None:
        epochs = min(AUTO_MAX_EPOCHS, max(1, math.ceil(example_budget / rows)))
    out["epochs"] = epochs
    if hp.max_steps is None:
        if hp.epochs is None:
            # Auto: the example budget, which may end part-way through an epoch.
            out["max_steps"] = max(1, math.ceil(min(epochs * rows, example_budget) / rows_per_step))
        else:
            out["max_steps"] = epochs * steps_per_epoch  # explicit epochs are honoured in full

    if hp.max_seq_len is None and longest_row_tokens is not None:
        out["max_seq_len"] = min(AUTO_MAX_SEQ_LEN_CAP, max(16, longest_row_tokens))

    lora_r = hp.lora_r if hp.lora_r is not None else AUTO_LORA_R
    out["lora_r"] = lora_r
    out["lora_alpha"] = hp.lora_alpha if hp.lora_alpha is not None else AUTO_LORA_ALPHA_PER_R * lora_r
    out["learning_rate"] = hp.learning_rate if hp.learning_rate is not None else AUTO_LEARNING_RATE
    out["lora_dropout"] = hp.lora_dropout if hp.lora_dropout is not None else AUTO_LORA_DROPOUT
    out["warmup_ratio"] = hp.warmup_ratio if hp.warmup_ratio is not None else AUTO_WARMUP_RATIO
    out["weight_decay"] = hp.weight_decay if hp.weight_decay is not None else AUTO_WEIGHT_DECAY
    out["max_grad_norm"] = hp.max_grad_norm if hp.max_grad_norm is not None else AUTO_MAX_GRAD_NORM
    out["lr_scheduler"] = hp.lr_scheduler if hp.lr_scheduler is not None else AUTO_LR_SCHEDULER
    out["seed"] = hp.seed if hp.seed is not None else AUTO_SEED
    out["eval_accuracy_max_examples"] = (
        hp.eval_accuracy_max_examples if hp.eval_accuracy_max_examples is not None else AUTO_EVAL_ACCURACY_MAX_EXAMPLES
    )
    total = out["max_steps"]
    # One eval-loss point half-way (besides the baseline and the final eval): on a CPU each pass
    # over the validation set costs about as much as three training steps.
    out["eval_every"] = hp.eval_every if hp.eval_every is not None else max(1, math.ceil(total / 2))
    out["checkpoint_every"] = hp.checkpoint_every if hp.checkpoint_every is not None else max(1, math.ceil(total / 4))
    # lora_target_modules stays None: "all linear projections" is resolved against the model itself.
    out["early_stopping_patience"] = hp.early_stopping_patience or 0
    out["truncation"] = hp.truncation or "truncate"
    out["canary_repetitions"] = list(hp.canary_repetitions or [])  # empty: no memorization audit
    out["canary_secrets"] = list(hp.canary_secrets or [])
    if hp.dp:
        out["dp_delta"] = hp.dp_delta if hp.dp_delta is not None else auto_dp_delta(rows)
        out["dp_max_grad_norm"] = hp.dp_max_grad_norm if hp.dp_max_grad_norm is not None else AUTO_DP_MAX_GRAD_NORM
        out["dp_accountant"] = hp.dp_accountant or AUTO_DP_ACCOUNTANT
    else:
        for name in DP_FIELDS:  # a job without DP says nothing about it
            del out[name]
    # export_merged and gradient_checkpointing pass through as given (to_dict above): the dataset has
    # no say in them, and "auto" checkpointing needs the device, which only the worker knows.
    return out
