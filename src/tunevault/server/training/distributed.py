"""One job over several processes (torchrun): the process group, each rank's share of a step, and the gradient sum.

Every rank runs the same trainer on the same deterministic batch stream, so every rank knows the
whole optimizer step (its micro-batches and their answer-token count) without communicating. A
rank computes the loss of its share only, divided by the tokens of the whole step, and the LoRA
gradients are summed over the ranks: the step's gradient is then the one a single process would
compute over the same global batch, and with identical optimizer steps the adapters stay equal on
every rank. The stream position, and so checkpoints and resume, are those of one process: rank 0
writes checkpoints, events and artifacts; every rank resumes from the same checkpoint.

Only LoRA gradients travel (a few MB), in one flat all-reduce per step; the frozen 4-bit base is
never wrapped in DistributedDataParallel, whose hooks expect every parameter to be a plain tensor.
gloo on a CPU, nccl on CUDA with LOCAL_RANK's device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import timedelta

import torch

from tunevault.server.training.batching import Batch
from tunevault.server.training.tokenization import IGNORE_INDEX

# A rank that died leaves the others waiting in a collective; torchrun's agent tears the group
# down when it sees the death, so this only bounds a hang that the agent somehow missed.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank 0 of 1 when the job runs as one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The rank that writes checkpoints, events and artifacts."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self) -> torch.device:
        """This rank's device: its LOCAL_RANK's GPU, or the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def share(self, micro_batches: list[Batch]) -> list[Batch]:
        """This rank's part of one optimizer step: whole micro-batches when there are enough, else rows of each."""
        if not self.distributed:
            return micro_batches
        if len(micro_batches) >= self.world_size:
            return micro_batches[self.rank :: self.world_size]
        parts = [_rows_of(batch, self.rank, self.world_size) for batch in micro_batches]
        return [part for part in parts if part is not None]

    def sum_gradients(self, params: list[torch.Tensor]) -> None:
        """Sum the parameters' gradients over the ranks, in one flat all-reduce; a missing gradient counts as zero."""
        if not self.distributed:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for param, grad in zip(params, grads):
            param.grad = flat[offset : offset + grad.numel()].view_as(param).clone()
            offset += grad.numel()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """A scalar summed over the ranks (the step's loss)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on any: a stop request must be acted on at the same step everywhere."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast_parameters(self, params: list[torch.Tensor]) -> None:
        """Rank 0's values on every rank: LoRA weights drawn from a seeded RNG agree anyway; this makes sure."""
        if not self.distributed:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for param in params:
                dist.broadcast(param.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def _rows_of(batch: Batch, rank: int, world_size: int) -> Batch | None:
    """Rank's contiguous share of a micro-batch's rows (packs), or None when it gets none."""
    rows = batch.input_ids.shape[0]
    start, stop = rows * rank // world_size, rows * (rank + 1) // world_size
    if start == stop:
        return None

    def take(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor[start:stop]

    targets = batch.targets[start:stop]
    mask = take(batch.attention_mask)
    tokens = int(mask.sum()) if mask is not None else int(batch.input_ids[start:stop].numel())
    return replace(batch, input_ids=batch.input_ids[start:stop], labels=batch.labels[start:stop], attention_mask=mask,
                   position_ids=take(batch.position_ids), logits_index=batch.logits_index[start:stop], targets=targets,
                   tokens=tokens, label_tokens=int((targets != IGNORE_INDEX).sum()))


def from_env() -> Ranks:
    """This process's ranks from torchrun's environment, joining the process group when there are several."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks()
    ranks = Ranks(rank=int(os.environ["RANK"]), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    import torch.distributed as dist

    if os.environ.get("LOCAL_WORLD_SIZE") == str(world_size):
        # All ranks on this box (the local executor's torchrun --standalone): gloo's traffic stays
        # on loopback, which also keeps it clear of the zero-egress guard's concerns.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return ranks


def shut_down() -> None:
    """Leave the process group (if any) so the process exits without the backend's warning."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
