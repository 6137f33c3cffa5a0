"""DPO and ORPO: the pair batches, the two losses, and the held-out preference figures.

A pair batch is one padded batch of 2n rows, the n chosen answers first, then the n rejected
ones, so one forward pass scores both sides. A row's score is its answer's summed log-probability
(objective.row_summed_loss, negated).

DPO's reference model is the same 4-bit base with the LoRA adapter disabled: no second copy in
memory. Its log-probabilities are computed once per batch under no_grad (they carry no gradient),
in train mode like the policy pass, so no eval-mode repacking of NF4 weights is involved.
ORPO needs no reference: the chosen answer's SFT loss plus an odds-ratio term.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tunevault.server.training.batching import Batch, collate, epoch_plan, poisson_draw
from tunevault.server.training.objective import row_summed_loss
from tunevault.server.training.preference_data import TokenizedPair
from tunevault.server.training.stopping import StopFlag
from tunevault.server.training.tokenization import IGNORE_INDEX


def collate_pairs(pairs: list[TokenizedPair], pad_token_id: int) -> Batch:
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_token_id)


def answer_logps(model: Any, batch: Batch) -> torch.Tensor:
    """Each row's answer log-probability (summed over its labelled tokens), (2n,)."""
    return -row_summed_loss(model, batch)


def answer_tokens(batch: Batch, device: torch.device) -> torch.Tensor:
    """Each row's labelled token count (at least 1), from the batch's CPU copy: no device wait."""
    return (batch.targets != IGNORE_INDEX).sum(dim=1).clamp(min=1).to(device)


def reference_logps(model: Any, batch: Batch) -> torch.Tensor:
    """The base model's scores: the adapter disabled, no gradient, once per batch."""
    with torch.no_grad(), model.disable_adapter():
        return answer_logps(model, batch)


def dpo_losses(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-pair DPO loss, per-pair reward margin beta * (chosen log-ratio - rejected log-ratio))."""
    n = policy.shape[0] // 2
    ratios = policy - reference
    margin = beta * (ratios[:n] - ratios[n:])
    return -F.logsigmoid(margin), margin.detach()


def orpo_losses(policy: torch.Tensor, tokens: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-pair ORPO loss: chosen NLL per token - weight * log sigmoid(log odds ratio); the log odds ratio).

    Log-probabilities are averaged per token, as in the paper (Hong et al. 2024) and TRL, so the
    odds of a long answer are not driven to 0 by its length alone.
    """
    n = policy.shape[0] // 2
    mean = (policy / tokens).clamp(max=-1e-6)  # log p < 0, so log(1 - p) stays finite
    log_odds = mean - torch.log1p(-torch.exp(mean))
    ratio = log_odds[:n] - log_odds[n:]
    return -mean[:n] - weight * F.logsigmoid(ratio), ratio.detach()


@dataclass(frozen=True)
class PairScores:
    """Each held-out pair's answer log-probabilities, chosen and rejected, in a fixed pair order."""

    chosen: list[float]
    rejected: list[float]

    @property
    def accuracy(self) -> float:
        """Share of pairs where the chosen answer is the likelier one."""
        return sum(c > r for c, r in zip(self.chosen, self.rejected)) / len(self.chosen)

    @property
    def margin(self) -> float:
        """Mean of log p(chosen) - log p(rejected), in nats."""
        return sum(c - r for c, r in zip(self.chosen, self.rejected)) / len(self.chosen)

    def rewards(self, reference: PairScores, beta: float) -> dict[str, float]:
        """DPO's implicit reward against the reference's scores: how often it prefers chosen, and by how much."""
        margins = [beta * ((c - rc) - (r - rr)) for c, r, rc, rr
                   in zip(self.chosen, self.rejected, reference.chosen, reference.rejected)]
        return {"reward_accuracy": sum(m > 0 for m in margins) / len(margins),
                "reward_margin": sum(margins) / len(margins)}


def score_pairs(model: Any, batches: list[Batch], stop: StopFlag | None = None) -> PairScores:
    """Answer log-probabilities of held-out pair batches (eval mode, no_grad)."""
    was_training = model.training
    model.eval()
    chosen: list[float] = []
    rejected: list[float] = []
    try:
        with torch.no_grad():
            for batch in batches:
                if stop is not None:
                    stop.check()
                scores = answer_logps(model, batch).float().cpu()
                n = scores.shape[0] // 2
                chosen.extend(scores[:n].tolist())
                rejected.extend(scores[n:].tolist())
    finally:
        model.train(was_training)
    return PairScores(chosen, rejected)


def poisson_pair_batches(pairs: list[TokenizedPair], sample_rate: float, rng: random.Random, pairs_per_batch: int,
                         pad_token_id: int) -> list[Batch]:
    """One DP-SGD step's pairs, each drawn with probability sample_rate (batching.poisson_micro_batches for pairs)."""
    chosen = poisson_draw([p.length for p in pairs], sample_rate, rng)
    return [collate_pairs([pairs[i] for i in chosen[s:s + pairs_per_batch]], pad_token_id)
            for s in range(0, len(chosen), pairs_per_batch)]


def eval_pair_batches(pairs: list[TokenizedPair], pairs_per_batch: int, pad_token_id: int) -> list[Batch]:
    order = sorted(range(len(pairs)), key=lambda i: (-pairs[i].length, i))
    return [collate_pairs([pairs[i] for i in order[s:s + pairs_per_batch]], pad_token_id)
            for s in range(0, len(order), pairs_per_batch)]


class PairStream:
    """The endless, deterministic sequence of training pairs, `batch_size` pairs per micro-batch.

    Same contract as batching.BatchStream (position, next_step, epochs_done), so checkpoints,
    pause/resume and crash recovery resume it the same way. Pairs are never packed.
    """

    def __init__(self, pairs: list[TokenizedPair], batch_size: int, seed: int, pad_token_id: int) -> None:
        self.pairs = pairs
        self.lengths = [p.length for p in pairs]
        self.batch_size = batch_size
        self.seed = seed
        self.pad_token_id = pad_token_id
        self.per_epoch = -(-len(pairs) // batch_size)
        self.position = 0
        self._plan_epoch: int | None = None
        self._plan: list[list[int]] = []

    def next(self) -> Batch:
        epoch, index = divmod(self.position, self.per_epoch)
        if epoch != self._plan_epoch:
            self._plan = epoch_plan(self.lengths, self.batch_size, self.seed, epoch)
            self._plan_epoch = epoch
        self.position += 1
        return collate_pairs([self.pairs[i] for i in self._plan[index]], self.pad_token_id)

    def next_step(self, groups: int) -> list[Batch]:
        return [self.next() for _ in range(groups)]

    @property
    def epochs_done(self) -> float:
        return self.position / self.per_epoch
