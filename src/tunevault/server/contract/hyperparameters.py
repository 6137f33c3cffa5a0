"""Fine-tuning hyperparameters: one declaration of each setting, its check, and the resolution of "auto".

Pure Python on purpose: the gRPC server validates a CreateJob request with this module and must
never import torch. Two frozen dataclasses share one list of field names:

- `Hyperparameters` is what a job asked for; None (or the string "auto") means "choose from the
  dataset". Each field carries its rule (type, range, choices) in its metadata, so the declaration
  and the check cannot drift apart; tests/test_hyperparameters.py checks both against the proto.
- `ResolvedHyperparameters` is what a job runs with: `resolve()` fills every "auto" field from the
  dataset's size, once, where the job is created. Two choices need what only the worker has, and
  stay None until it fills them: max_seq_len (the longest tokenized row) and lora_target_modules
  (the model's own projections); gradient_checkpointing stays None ("auto") for the worker to
  decide from the device.

Switches (export_merged) have nothing to choose from the dataset: "auto" is simply their default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
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
PREFERENCE_FIELDS = ("preference_beta", "orpo_lambda")
PREFERENCE_DEFAULT = 0.1  # beta (DPO) and lambda (ORPO): the values of the DPO and ORPO papers and TRL
DP_FIELDS = ("dp_epsilon", "dp_noise_multiplier", "dp_delta", "dp_max_grad_norm", "dp_accountant")
LIST_FIELDS = ("lora_target_modules", "canary_repetitions", "canary_secrets")


@dataclass(frozen=True)
class Rule:
    """What one setting accepts: its kind, and a range (numbers) or choices (strings)."""

    kind: type  # int, float, str, bool, tuple (module names) or list (canary entries)
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low rather than >= low
    choices: tuple[str, ...] = ()


def _setting(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
             choices: tuple[str, ...] = (), default: Any = None) -> Any:
    return field(default=default, metadata={"rule": Rule(kind, low, high, low_open, choices)})


@dataclass(frozen=True)
class Hyperparameters:
    """A job's settings as asked for; None means "auto"."""

    epochs: int | None = _setting(int, 1, 1000)  # passes over the training split; ignored when max_steps is set
    max_steps: int | None = _setting(int, 1, 10_000_000)  # optimizer steps in total; overrides epochs
    learning_rate: float | None = _setting(float, 0.0, 1.0, low_open=True)  # peak learning rate after warmup
    batch_size: int | None = _setting(int, 1, 1024)  # rows per forward pass (micro-batch)
    gradient_accumulation_steps: int | None = _setting(int, 1, 1024)  # micro-batches per optimizer step
    lora_r: int | None = _setting(int, 1, 256)  # LoRA rank; higher adds capacity and memory
    lora_alpha: float | None = _setting(float, 0.0, 4096.0, low_open=True)  # LoRA scaling numerator (alpha / r)
    lora_dropout: float | None = _setting(float, 0.0, 0.9)  # dropout on the LoRA input
    max_seq_len: int | None = _setting(int, 16, 32768)  # rows are truncated to this many tokens
    warmup_ratio: float | None = _setting(float, 0.0, 0.9)  # fraction of steps spent warming up the learning rate
    weight_decay: float | None = _setting(float, 0.0, 1.0)  # AdamW decoupled weight decay on LoRA weights
    max_grad_norm: float | None = _setting(float, 0.0, 1e6)  # gradient clipping; 0 disables it
    lr_scheduler: str | None = _setting(str, choices=LR_SCHEDULERS)  # after warmup
    eval_every: int | None = _setting(int, 0, 10_000_000)  # steps between eval-loss passes; 0 = only at the end
    validation_fraction: float | None = _setting(float, 0.0, 0.5, low_open=True)  # held out when no validation file
    seed: int | None = _setting(int, 0, 2**32 - 1)  # seeds the split, the data order, LoRA init and dropout
    eval_accuracy_max_examples: int | None = _setting(int, 0, 100_000)  # rows scored by exact match; 0 = skip
    checkpoint_every: int | None = _setting(int, 0, 10_000_000)  # steps between checkpoints; 0 = only when stopped
    lora_target_modules: tuple[str, ...] | None = _setting(tuple)  # module names; None = all linear projections
    # Also write base + adapter merged in 16-bit (plain transformers, no PEFT or bitsandbytes
    # needed to serve it); off by default: it is a full copy of the model on disk.
    export_merged: bool = _setting(bool, default=False)
    # Recompute activations in the backward pass to save memory, for about a third more compute.
    # None (auto): the worker decides, off unless the job would not fit the device without it.
    gradient_checkpointing: bool | None = _setting(bool)
    # Stop after this many evals (eval_every) without a lower eval loss, and keep the adapter of
    # the best eval as the result; 0 = train every step and keep the final adapter.
    early_stopping_patience: int | None = _setting(int, 0, 1000)
    truncation: str | None = _setting(str, choices=TRUNCATION_POLICIES)  # "truncate" (default) or "drop"
    # DP-SGD on the LoRA weights: set exactly one of dp_epsilon (the noise is computed to spend at
    # most this) or dp_noise_multiplier (epsilon follows from it). The others need one of the two.
    # With DP, a step's rows are Poisson-sampled (expected batch_size x gradient_accumulation_steps),
    # rows are not packed, and max_grad_norm gives way to per-example clipping at dp_max_grad_norm.
    dp_epsilon: float | None = _setting(float, 0.0, 100.0, low_open=True)  # target epsilon for the whole job
    # Gaussian noise std in units of dp_max_grad_norm; 0 would be no privacy at all.
    dp_noise_multiplier: float | None = _setting(float, 0.0, 100.0, low_open=True)
    dp_delta: float | None = _setting(float, 0.0, 0.1, low_open=True)  # None: min(1e-5, 1/N^1.1), N = training rows
    dp_max_grad_norm: float | None = _setting(float, 0.0, 1e6, low_open=True)  # per-example gradient clipping norm
    dp_accountant: str | None = _setting(str, choices=DP_ACCOUNTANTS)  # rdp (default) | prv
    # Memorization audit: one canary (a random secret in a question-answer row) planted per entry,
    # repeated that many times, and its exposure measured after training; with it, training answers'
    # identifiers are looked for in greedy answers. canary_secrets replace the random secrets, in order.
    canary_repetitions: tuple[int, ...] | None = _setting(list, 1, MAX_CANARY_REPETITIONS)
    canary_secrets: tuple[str, ...] | None = _setting(list)
    # Preference tuning only (None: PREFERENCE_DEFAULT at train time, so SFT specs stay as they were).
    preference_beta: float | None = _setting(float, 0.0, 10.0, low_open=True)  # DPO's beta
    orpo_lambda: float | None = _setting(float, 0.0, 10.0, low_open=True)  # ORPO's odds-ratio weight

    @property
    def dp(self) -> bool:
        return self.dp_epsilon is not None or self.dp_noise_multiplier is not None

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in fields(Hyperparameters)}


@dataclass(frozen=True)
class ResolvedHyperparameters:
    """The settings a job runs with: the fields of Hyperparameters, every "auto" chosen.

    max_seq_len and lora_target_modules are None until the worker fills them (with_data,
    with_target_modules); gradient_checkpointing None means the worker decides from the device.
    The DP fields are None for a job without DP.
    """

    epochs: int
    max_steps: int
    learning_rate: float
    batch_size: int
    gradient_accumulation_steps: int
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    max_seq_len: int | None
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    lr_scheduler: str
    eval_every: int
    validation_fraction: float
    seed: int
    eval_accuracy_max_examples: int
    checkpoint_every: int
    lora_target_modules: tuple[str, ...] | None
    export_merged: bool
    gradient_checkpointing: bool | None
    early_stopping_patience: int
    truncation: str
    dp_epsilon: float | None
    dp_noise_multiplier: float | None
    dp_delta: float | None
    dp_max_grad_norm: float | None
    dp_accountant: str | None
    canary_repetitions: tuple[int, ...]
    canary_secrets: tuple[str, ...]
    preference_beta: float | None
    orpo_lambda: float | None

    @property
    def dp(self) -> bool:
        return self.dp_epsilon is not None or self.dp_noise_multiplier is not None

    def to_dict(self) -> dict[str, Any]:
        """As spec.json, the job row and metrics.json hold them; a job without DP says nothing about it."""
        out = _plain(asdict(self))
        if not self.dp:
            for name in DP_FIELDS:
                del out[name]
        for name in PREFERENCE_FIELDS:  # unset on every SFT job: left out, as before they existed
            if out[name] is None:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> ResolvedHyperparameters:
        """Read resolved settings back (spec.json, the job row), checking each as the API did."""
        if not isinstance(raw, dict):
            raise HyperparameterError("hyperparameters", "must be an object of name -> value")
        checked = validate(raw)
        missing = [f.name for f in fields(cls)
                   if raw.get(f.name) is None and f.name not in OPTIONAL_WHEN_RESOLVED]
        if missing:
            raise HyperparameterError(missing[0], "is missing from resolved hyperparameters")
        values = {f.name: getattr(checked, f.name) for f in fields(cls)}
        values["canary_repetitions"] = checked.canary_repetitions or ()
        values["canary_secrets"] = checked.canary_secrets or ()
        return cls(**values)

    def with_data(self, longest_row_tokens: int) -> ResolvedHyperparameters:
        """max_seq_len, if "auto": the longest tokenized row, within [16, AUTO_MAX_SEQ_LEN_CAP]."""
        if self.max_seq_len is not None:
            return self
        return replace(self, max_seq_len=min(AUTO_MAX_SEQ_LEN_CAP, max(16, longest_row_tokens)))

    def with_target_modules(self, names: tuple[str, ...]) -> ResolvedHyperparameters:
        return replace(self, lora_target_modules=tuple(names))

    def with_gradient_checkpointing(self, on: bool) -> ResolvedHyperparameters:
        return replace(self, gradient_checkpointing=on)


# Resolved fields that may be None: filled by the worker, decided on the device, or DP-only.
OPTIONAL_WHEN_RESOLVED = frozenset({"lora_target_modules", "max_seq_len", "gradient_checkpointing",
                                    "canary_repetitions", "canary_secrets", "preference_beta", "orpo_lambda",
                                    *DP_FIELDS})
assert [f.name for f in fields(ResolvedHyperparameters)] == list(RULES)  # one list of names, in the proto's order


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: tuples become lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


# Validation ----------------------------------------------------------------------------------

def _check_number(name: str, value: Any, rule: Rule) -> int | float:
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
            # The value itself is not echoed: a caller's mistake may have pasted private text here.
            raise HyperparameterError(name, f"module names must be non-empty strings of at most 128 characters, "
                                            f"got a {type(item).__name__}")
        if not all(c.isalnum() or c in "._-" for c in item):
            raise HyperparameterError(name, "a module name has characters other than letters, digits, '.', '_', '-'")
    return tuple(value)


def _check_switch(name: str, value: Any) -> bool:
    # Strict like the numbers: "false" or 0 from a hand-written spec is a caller bug, and a
    # truthy "false" would silently turn the switch on.
    if not isinstance(value, bool):
        raise HyperparameterError(name, f"must be true or false, got a {type(value).__name__}")
    return value


def _check_canary_list(name: str, value: Any, rule: Rule) -> tuple:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise HyperparameterError(name, "must be a list")
    if len(value) > MAX_CANARIES:
        raise HyperparameterError(name, f"must have at most {MAX_CANARIES} entries")
    if name == "canary_secrets":
        low, high = CANARY_SECRET_CHARS
        for index, item in enumerate(value):
            # Never the value itself: a secret must not reach an error message or a log line.
            if not isinstance(item, str) or not low <= len(item.strip()) <= high or "\n" in item:
                raise HyperparameterError(f"{name}[{index}]", f"each secret must be one line of {low}-{high} "
                                                              "characters (the value is not shown)")
        return tuple(item.strip() for item in value)
    return tuple(int(_check_number(name, item, Rule(int, rule.low, rule.high))) for item in value)


def _check_value(name: str, value: Any, rule: Rule) -> Any:
    if rule.kind is tuple:
        return _check_modules(name, value)
    if rule.kind is list:
        return _check_canary_list(name, value, rule) or None  # [] is "no audit", as unset
    if rule.kind is bool:
        return _check_switch(name, value)
    if rule.kind is str:
        if value not in rule.choices:
            raise HyperparameterError(name, f"must be one of {', '.join(rule.choices)}")
        return value
    return _check_number(name, value, rule)


def validate(raw: dict[str, Any] | None) -> Hyperparameters:
    """Check a user's hyperparameters; raise HyperparameterError naming the first bad field."""
    if raw is None:
        return Hyperparameters()
    if not isinstance(raw, dict):
        raise HyperparameterError("hyperparameters", "must be an object of name -> value")
    values: dict[str, Any] = {}
    for name in sorted(raw):
        rule = RULES.get(name)
        if rule is None:
            raise HyperparameterError(str(name), f"unknown hyperparameter; known: {', '.join(sorted(RULES))}")
        if raw[name] is None or raw[name] == "auto":
            continue
        values[name] = _check_value(name, raw[name], rule)
    _check_dp(values)
    if len(values.get("canary_secrets") or ()) > len(values.get("canary_repetitions") or ()):
        raise HyperparameterError("canary_secrets", "needs one canary_repetitions entry per secret (how often to plant it)")
    return Hyperparameters(**values)


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


# Resolution ----------------------------------------------------------------------------------

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


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def resolve(
    hp: Hyperparameters,
    train_rows: int,
    *,
    has_validation_file: bool = False,
    longest_row_tokens: int | None = None,
    example_budget: int = AUTO_EXAMPLE_BUDGET,
) -> ResolvedHyperparameters:
    """Fill every "auto" field from the dataset size.

    train_rows counts the rows of the training file; without a validation file the held-out
    split comes out of them first. longest_row_tokens is known only after tokenizing; without it
    max_seq_len stays None for the worker to fill (ResolvedHyperparameters.with_data).
    """
    if train_rows < 1:
        raise HyperparameterError("train_rows", "the training set has no rows")
    fraction = _or(hp.validation_fraction, auto_validation_fraction(train_rows))
    rows = train_rows if has_validation_file else train_rows - validation_split_size(train_rows, fraction)
    rows = max(rows, 1)

    batch_size = _or(hp.batch_size, min(AUTO_BATCH_SIZE, rows))
    accumulation = _or(hp.gradient_accumulation_steps, 1)
    epochs = _or(hp.epochs, min(AUTO_MAX_EPOCHS, max(1, math.ceil(example_budget / rows))))
    max_steps = hp.max_steps
    if max_steps is None and hp.epochs is None:
        # Auto: the example budget, which may end part-way through an epoch.
        max_steps = max(1, math.ceil(min(epochs * rows, example_budget) / (batch_size * accumulation)))
    elif max_steps is None:
        max_steps = epochs * math.ceil(math.ceil(rows / batch_size) / accumulation)  # explicit epochs, in full
    lora_r = _or(hp.lora_r, AUTO_LORA_R)
    resolved = ResolvedHyperparameters(
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, gradient_accumulation_steps=accumulation,
        learning_rate=_or(hp.learning_rate, AUTO_LEARNING_RATE),
        lora_r=lora_r, lora_alpha=_or(hp.lora_alpha, AUTO_LORA_ALPHA_PER_R * lora_r),
        lora_dropout=_or(hp.lora_dropout, AUTO_LORA_DROPOUT),
        # None stays: "all linear projections" is resolved against the model itself.
        lora_target_modules=hp.lora_target_modules, max_seq_len=hp.max_seq_len,
        warmup_ratio=_or(hp.warmup_ratio, AUTO_WARMUP_RATIO), weight_decay=_or(hp.weight_decay, AUTO_WEIGHT_DECAY),
        max_grad_norm=_or(hp.max_grad_norm, AUTO_MAX_GRAD_NORM), lr_scheduler=_or(hp.lr_scheduler, AUTO_LR_SCHEDULER),
        # One eval-loss point half-way (besides the baseline and the final eval): on a CPU each pass
        # over the validation set costs about as much as three training steps.
        eval_every=_or(hp.eval_every, max(1, math.ceil(max_steps / 2))),
        validation_fraction=fraction, seed=_or(hp.seed, AUTO_SEED),
        eval_accuracy_max_examples=_or(hp.eval_accuracy_max_examples, AUTO_EVAL_ACCURACY_MAX_EXAMPLES),
        checkpoint_every=_or(hp.checkpoint_every, max(1, math.ceil(max_steps / 4))),
        # The dataset has no say in these two; "auto" checkpointing needs the device, which only
        # the worker knows.
        export_merged=hp.export_merged, gradient_checkpointing=hp.gradient_checkpointing,
        early_stopping_patience=hp.early_stopping_patience or 0, truncation=hp.truncation or "truncate",
        dp_epsilon=hp.dp_epsilon, dp_noise_multiplier=hp.dp_noise_multiplier,
        dp_delta=_or(hp.dp_delta, auto_dp_delta(rows)) if hp.dp else None,
        dp_max_grad_norm=_or(hp.dp_max_grad_norm, AUTO_DP_MAX_GRAD_NORM) if hp.dp else None,
        dp_accountant=(hp.dp_accountant or AUTO_DP_ACCOUNTANT) if hp.dp else None,
        canary_repetitions=hp.canary_repetitions or (),  # empty: no memorization audit
        canary_secrets=hp.canary_secrets or (),
        preference_beta=hp.preference_beta, orpo_lambda=hp.orpo_lambda,
    )
    return resolved.with_data(longest_row_tokens) if longest_row_tokens is not None else resolved
