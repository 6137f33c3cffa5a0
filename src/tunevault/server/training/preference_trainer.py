"""Preference tuning (DPO, ORPO) on the QLoRA recipe: only the data, the step and the evals differ.

Everything else is the SFT trainer's: 4-bit base and LoRA setup, the loop, checkpoints, pause,
resume and crash recovery (the pair stream resumes from its position like the row stream), eval
loss (on the chosen answers), export and the report. Held-out preference accuracy (the share of
pairs where the chosen answer is the likelier one) and the mean log-probability margin are
measured on the base (adapter disabled) and after training; DPO jobs also report the implicit
reward accuracy and margin against that base.

With differential privacy the unit is a pair: pairs are Poisson-drawn, and a pair's two rows'
gradients are summed into one before clipping (dp_sgd.DPStep, rows_per_example=2), so what is
protected is each preference judgement, chosen and rejected answer together.
"""

from __future__ import annotations

from typing import Any

import torch

from tunevault.server.contract import hyperparameters as hp
from tunevault.server.training.job_data import JobData
from tunevault.server.training.preference_data import PreferenceData, prepare_preference_data
from tunevault.server.training.preference_objective import (
    PairScores,
    PairStream,
    answer_logps,
    answer_tokens,
    dpo_losses,
    eval_pair_batches,
    orpo_losses,
    poisson_pair_batches,
    reference_logps,
    score_pairs,
)
from tunevault.server.training.trainer import EVAL_BATCH_ROWS, QLoRATrainer

EVAL_PAIRS = EVAL_BATCH_ROWS // 2  # a pair batch holds two rows per pair


class PreferenceTrainer(QLoRATrainer):
    """A DPO or ORPO job (spec.method)."""

    ROWS_PER_EXAMPLE = 2
    PRIVACY_UNIT = "one preference pair (prompt, chosen and rejected answer)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._base: PairScores | None = None

    def _prepare_data(self) -> JobData:
        # The API refuses this; a spec written by hand must not plant SFT canaries in a preference job.
        if self.spec.hyperparameters.canary_repetitions:
            raise hp.HyperparameterError("canary_repetitions", f"the memorization audit is not available with "
                                                               f"method {self.spec.method.upper()} yet")
        self.pairs: PreferenceData = prepare_preference_data(
            self.tokenizer, self.spec.train_file, self.spec.validation_file, self.spec.hyperparameters,
            data_format=self.spec.data_format, validation_data_format=self.spec.validation_data_format,
        )
        pad = self.tokenizer.pad_token_id
        pairs_per_batch = max(EVAL_PAIRS, self.spec.hyperparameters.batch_size)
        self.pair_eval_set = eval_pair_batches(self.pairs.validation, pairs_per_batch, pad)
        return self.pairs.job

    def _train_stream(self, pad: int) -> PairStream:
        return PairStream(self.pairs.train, self.hp.batch_size, self.hp.seed, pad)

    @property
    def _beta(self) -> float:
        return self.hp.preference_beta or hp.PREFERENCE_DEFAULT

    @property
    def _orpo_lambda(self) -> float:
        return self.hp.orpo_lambda or hp.PREFERENCE_DEFAULT

    def _step(self, max_grad_norm: float) -> tuple[list[Any], torch.Tensor]:
        """One optimizer step over the next pair micro-batches; the loss is the mean over the step's pairs.

        The loop divides the returned total by the step's label tokens (an SFT loss is per token),
        so the mean pair loss is returned multiplied by them: the step event then shows the pair loss.
        """
        micro_batches = self.stream.next_step(self.accumulation)
        pairs = sum(b.input_ids.shape[0] // 2 for b in micro_batches)
        loss_total = torch.zeros((), device=self.device)
        for batch in micro_batches:
            losses = self._pair_losses(batch)
            (losses.sum() / pairs).backward()
            loss_total += losses.detach().sum()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        label_tokens = max(1, sum(b.label_tokens for b in micro_batches))
        return micro_batches, loss_total / pairs * label_tokens

    def _pair_losses(self, batch: Any, policy_model: Any = None) -> torch.Tensor:
        """Each pair's loss; policy_model is the model the gradient flows through (DP: its per-example wrapper)."""
        policy_model = policy_model if policy_model is not None else self.model
        if self.spec.method == "dpo":
            reference = reference_logps(self.model, batch)  # before the policy pass: no graph held meanwhile
            return dpo_losses(answer_logps(policy_model, batch), reference, self._beta)[0]
        policy = answer_logps(policy_model, batch)
        return orpo_losses(policy, answer_tokens(batch, policy.device), self._orpo_lambda)[0]

    def _dp_step(self) -> tuple[list[Any], torch.Tensor]:
        """A DP-SGD step on Poisson-drawn pairs, each pair clipped as one example; the loss as _step reports it."""
        micro_batches = poisson_pair_batches(self.pairs.train, self.dp.sample_rate, self.dp.sampler,
                                             self.hp.batch_size, self.tokenizer.pad_token_id)

        def losses(module: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            per_pair = self._pair_losses(batch, module)
            return per_pair, per_pair.detach().sum()

        total = self.dp.step(micro_batches, losses, rows_per_example=2)
        pairs = max(1, sum(b.input_ids.shape[0] // 2 for b in micro_batches))
        label_tokens = max(1, sum(b.label_tokens for b in micro_batches))
        return micro_batches, total / pairs * label_tokens

    # Evaluation ---------------------------------------------------------------------

    def _scores(self) -> PairScores:
        return score_pairs(self.model, self.pair_eval_set, self.stop)

    def baseline(self) -> None:
        """The SFT baseline (eval loss of the chosen answers), then the base model's preference figures."""
        super().baseline()
        if any(h["type"] == "preference.baseline" for h in self.state.history):
            return  # a resumed job measured them before its checkpoint
        scores = self._base_scores()
        metrics = {"step": 0, "base_preference_accuracy": scores.accuracy, "base_preference_margin": scores.margin}
        self._record(self.events.emit(
            "preference.baseline",
            f"base model: chosen answer likelier in {scores.accuracy:.1%} of {len(scores.chosen)} held-out pairs, "
            f"mean log-probability margin {scores.margin:+.3f}", metrics))

    def _base_scores(self) -> PairScores:
        """The base model's held-out scores: DPO's reference scores too (the same weights, adapter disabled),
        so they are measured once per run (again after a resume) rather than at every eval."""
        if self._base is None:
            with self.model.disable_adapter():
                self._base = self._scores()
        return self._base

    def _base_figures(self) -> dict[str, float]:
        found = next(h for h in self.state.history if h["type"] == "preference.baseline")
        return {k: found[k] for k in ("base_preference_accuracy", "base_preference_margin")}

    def _preference_eval(self, step: int) -> dict[str, float]:
        scores = self._scores()
        metrics = {"step": step, "preference_accuracy": scores.accuracy, "preference_margin": scores.margin}
        if self.spec.method == "dpo":
            metrics.update(scores.rewards(self._base_scores(), self._beta))
        shown = f", reward margin {metrics['reward_margin']:+.3f}" if "reward_margin" in metrics else ""
        self._record(self.events.emit(
            "preference.eval",
            f"step {step}: chosen answer likelier in {scores.accuracy:.1%} of held-out pairs "
            f"(base {self._base_figures()['base_preference_accuracy']:.1%}), margin {scores.margin:+.3f}{shown}",
            metrics))
        return metrics

    def _evaluate(self, step: int, with_accuracy: bool) -> tuple[float, float | None]:
        found = super()._evaluate(step, with_accuracy)
        self._preference_eval(step)
        return found

    def _final_eval(self) -> tuple[float, float | None]:
        found = super()._final_eval()
        self.final_preference = self._preference_eval(self.state.step)
        return found

    def _export(self, result: dict[str, float]) -> None:
        # finish() hands the same dict to the result event: the figures go to metrics.json and the event.
        result.update(self._base_figures())
        result.update({k: v for k, v in self.final_preference.items() if k != "step"})
        super()._export(result)
