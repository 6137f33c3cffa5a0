"""Training checkpoints: everything a resumed job needs to continue as if it had never stopped.

A checkpoint is `<checkpoint_dir>/step-N/`: the LoRA adapter (PEFT format, loadable on its
own), optimizer and LR-scheduler state, the torch RNG state (dropout), and state.json (step,
data position, metrics and history so far, and a fingerprint of the job configuration). It is
written into a temporary sibling and renamed, so a checkpoint directory is complete or absent.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunevault.server.training.atomic_dir import atomic_dir

STEP_DIR_RE = re.compile(r"step-(\d+)")
KEEP_CHECKPOINTS = 3  # older ones are pruned: resume only ever needs the latest


@dataclass
class TrainState:
    """The loop's own state at a step boundary."""

    step: int = 0
    micro_batches_done: int = 0  # position in the deterministic stream of row groups (BatchStream.position)
    trained_tokens: int = 0
    padded_slots: int = 0  # padding positions computed alongside trained_tokens
    train_seconds: float = 0.0
    base_eval_loss: float | None = None
    base_accuracy: float | None = None
    base_general_loss: float | None = None  # general_probe: the base model's loss on the general prompts
    last_eval_loss: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # step and eval events, for the loss curve
    best_eval_loss: float | None = None  # early stopping: the lowest eval loss seen, and where
    best_step: int = 0
    evals_since_best: int = 0
    stopped_early: bool = False
    fingerprint: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "TrainState":
        return cls(**raw)


def step_dir(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"step-{step}"


def list_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for child in checkpoint_dir.iterdir():
        match = STEP_DIR_RE.fullmatch(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = list_checkpoints(checkpoint_dir)
    return found[-1][1] if found else None


def save_checkpoint(checkpoint_dir: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainState) -> Path:
    """Write step-N atomically and prune old checkpoints; returns the checkpoint's directory."""
    target = step_dir(checkpoint_dir, state.step)
    if (target / "state.json").is_file():
        return target  # the same step of the same run: identical contents, nothing to do
    # An existing target is an incomplete leftover without state.json: replaced.
    with atomic_dir(target) as staging:
        model.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)  # PEFT's blank model card
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()  # dropout on a GPU draws from these
        torch.save(rng, staging / "rng.pt")
        # state.json last: its presence is what marks a checkpoint complete.
        (staging / "state.json").write_text(json.dumps(state.to_json(), indent=1))
    for _, old in list_checkpoints(checkpoint_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


BEST_DIR = "best"  # early stopping's best adapter so far, beside the step-N checkpoints


def save_best_adapter(checkpoint_dir: Path, model: Any) -> Path:
    """Write the current adapter as checkpoint_dir/best, atomically (a crash leaves the previous best)."""
    target = checkpoint_dir / BEST_DIR
    with atomic_dir(target) as staging:
        model.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)
    return target


def load_best_adapter(checkpoint_dir: Path, model: Any) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint_dir / BEST_DIR / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> TrainState:
    """Restore adapter weights, optimizer, scheduler and RNG from `path`; returns the loop state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(path / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"checkpoint {path.name} does not fit this model: unexpected keys {unexpected[:3]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainState.from_json(json.loads((path / "state.json").read_text()))
