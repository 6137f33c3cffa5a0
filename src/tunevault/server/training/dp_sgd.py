"""DP-SGD on the LoRA weights: Opacus in hooks mode around the PEFT model, one Poisson-sampled step at a time, and its accountant.

Opacus' GradSampleModule wraps the 4-bit PEFT model as it is: hooks on every module that has
trainable parameters (only the LoRA A/B linears; the frozen 4-bit base gets none) compute
per-example gradients. Its DPOptimizer clips each example's gradient to max_grad_norm, sums,
adds Gaussian noise of std noise_multiplier x max_grad_norm once per step and divides by the
expected batch. A step's rows may span several micro-batches (gradient accumulation): every
micro-batch but the last is clipped and summed with the step held back (signal_skip_step), so
memory stays at one micro-batch of per-example gradients and the noise is added once.

Randomness that the privacy guarantee rests on is secret: rows are drawn with the OS entropy
pool and the noise generator is seeded from it, not from the job's seed, which is on the job for
anyone to read (with it, an adversary could replay the sampling and subtract the noise). So a DP
job is not bit-for-bit reproducible, by design.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from typing import Any

import torch

from tunevault.server.contract.hyperparameters import ResolvedHyperparameters
from tunevault.server.privacy.dp_plan import DPPlan, make_accountant, plan_for
from tunevault.server.training.batching import Batch
from tunevault.server.training.objective import per_example_loss


class DPStep:
    """Runs DP-SGD steps on a PEFT model and keeps count of the privacy spent."""

    def __init__(self, model: Any, optimizer: torch.optim.Optimizer, *, noise_multiplier: float,
                 max_grad_norm: float, expected_batch: int, sample_rate: float, accountant: str, delta: float,
                 steps_done: int = 0) -> None:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        # loss_reduction "sum": the loss is a sum of per-example losses, so each per-example
        # gradient is that example's own; the optimizer's "mean" then divides the noisy sum by the
        # expected batch (not the drawn one, which would leak the batch size).
        self.module = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
        self.optimizer = DPOptimizer(
            optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch, loss_reduction="mean",
            generator=torch.Generator().manual_seed(secrets.randbits(63)),
        )
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sample_rate
        self.delta = delta
        self.accountant_name = accountant
        self.accountant = make_accountant(accountant)
        if steps_done:
            # A resumed job: the accountants keep exactly this history after steps_done equal steps.
            self.accountant.history = [(noise_multiplier, sample_rate, steps_done)]
        self.sampler = random.SystemRandom()
        self.params = [p for p in model.parameters() if p.requires_grad]

    def step(self, micro_batches: list[Batch],
             losses: Callable[[Any, Batch], tuple[torch.Tensor, torch.Tensor]] | None = None,
             rows_per_example: int = 1) -> torch.Tensor:
        """One optimizer step over a Poisson-drawn step's micro-batches; returns its summed reported loss (detached).

        losses(module, batch) gives (each example's loss, the loss to report); by default an SFT
        row's summed token loss. rows_per_example 2 is a preference pair batch (the n chosen rows,
        then the n rejected): a pair's loss depends on its two rows, so their per-row gradients
        are summed into the pair's before clipping, and the pair is the unit of privacy.

        An empty draw still takes a step of noise alone: skipping it would tell an observer of
        the weights that the draw was empty, and the accountant counts it either way. (The HF
        forward cannot take zero rows, so the empty per-example gradients are made here.)
        """
        loss_total = torch.zeros(())
        if not micro_batches:
            for p in self.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            self.optimizer.step()
        for i, batch in enumerate(micro_batches):
            per_example, token_loss = (losses or per_example_loss)(self.module, batch)
            per_example.sum().backward()
            if rows_per_example > 1:
                self._fold_rows_into_examples(rows_per_example)
            if i < len(micro_batches) - 1:
                self.optimizer.signal_skip_step(do_skip=True)  # clip and sum now, noise and update at the last
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss_total = loss_total + token_loss.float().cpu()
        self.optimizer.zero_grad(set_to_none=True)
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return loss_total

    def _fold_rows_into_examples(self, rows_per_example: int) -> None:
        """Per-row gradients (rows_per_example blocks of n rows) summed into n per-example gradients."""
        for p in self.params:
            rows = p.grad_sample
            n = rows.shape[0] // rows_per_example
            p.grad_sample = sum(rows[k * n:(k + 1) * n] for k in range(rows_per_example))

    @property
    def steps(self) -> int:
        return sum(entry[2] for entry in self.accountant.history)

    def epsilon(self) -> float:
        """Epsilon spent so far at this job's delta, from the accountant."""
        return float(self.accountant.get_epsilon(delta=self.delta)) if self.steps else 0.0

    def figures(self) -> dict[str, float]:
        """The privacy spent so far, for events and the job result."""
        return {
            "dp_epsilon": self.epsilon(), "dp_delta": self.delta, "dp_noise_multiplier": self.noise_multiplier,
            "dp_sample_rate": self.sample_rate, "dp_steps": float(self.steps),
            "dp_max_grad_norm": self.optimizer.max_grad_norm,
        }


def plan_and_announce(resolved: ResolvedHyperparameters, train_rows: int, events: Any) -> DPPlan:
    """The job's DP plan from its resolved hyperparameters, said as a "dp.plan" event and "dp.warning" events.

    The validation step and the worker both call this, so a job hears the same warnings before it
    is queued as when it runs.
    """
    from tunevault.server.contract.hyperparameters import HyperparameterError

    try:
        plan = plan_for(resolved, train_rows)
    except ValueError as exc:  # Opacus: no noise under its cap reaches so small an epsilon
        raise HyperparameterError("dp_epsilon", f"cannot be reached in {resolved.max_steps} steps: {exc}") from None
    events.emit(
        "dp.plan",
        f"DP-SGD: noise multiplier {plan.noise_multiplier:.4g}, Poisson sample rate {plan.sample_rate:.4g} "
        f"(expected batch {plan.expected_batch}), {plan.steps} steps -> epsilon {plan.epsilon:.4g} at delta "
        f"{plan.delta:.3g} ({plan.accountant.upper()} accountant)",
        {"dp_noise_multiplier": plan.noise_multiplier, "dp_sample_rate": plan.sample_rate,
         "dp_planned_epsilon": plan.epsilon, "dp_delta": plan.delta, "dp_noise_per_batch": plan.noise_per_batch,
         "total_steps": plan.steps},
        dp_accountant=plan.accountant,
    )
    for warning in plan.warnings:
        # The suggestion answers the "too little data" warning; the others carry their own fix.
        advice = plan.suggestion if plan.suggestion and warning.startswith("too little data") else ""
        events.emit("dp.warning", f"{warning}. {advice[:1].upper()}{advice[1:]}" if advice else warning)
    return plan
