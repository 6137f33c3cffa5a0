"""The QLoRA fine-tuning recipe: setup, baseline eval, the training loop, checkpoints, final eval and export.

One class, read top to bottom (in the manner of torchtune's single-device LoRA recipe): setup()
prepares data and model, train() runs an explicit loop with token-normalised gradient
accumulation, and finish() evaluates and writes the adapter. A job with differential privacy
swaps the step for DP-SGD (dp_sgd.py: Poisson-sampled rows, unpacked, per-example clipping and
noise) and reports the privacy spent at every eval. Events go out through an EventWriter; a
StopFlag set by SIGTERM is honoured at step boundaries and between eval batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from tunevault.server.contract import hyperparameters as hp
from tunevault.server.contract.events import EventWriter
from tunevault.server.contract.job_spec import JobSpec, check_fits_model
from tunevault.server.contract.memory_estimate import device_limit, estimate_peak_memory
from tunevault.server.privacy.sealing import canary_secrets
from tunevault.server.training import baseline_cache, canary_audit, checkpoints, quantized_model
from tunevault.server.training.atomic_dir import atomic_dir
from tunevault.server.training.batching import BatchStream, eval_batches, poisson_micro_batches
from tunevault.server.training.canary_audit import MemorizationAudit
from tunevault.server.training.checkpoints import TrainState
from tunevault.server.training.distributed import Ranks
from tunevault.server.training.dp_sgd import DPStep, plan_and_announce
from tunevault.server.training import label_scores
from tunevault.server.training.general_probe import GeneralProbe
from tunevault.server.training.evaluation import eval_loss, exact_match_accuracy, exact_match_answers, match_share
from tunevault.server.training.fused_kernels import apply_fused_kernels, model_type
from tunevault.server.training.job_data import JobData, prepare_job_data
from tunevault.server.training.lr_schedule import make_scheduler
from tunevault.server.training.objective import summed_token_loss
from tunevault.server.training.report import write_report
from tunevault.server.training.runtime import (
    measured_peak_bytes,
    return_freed_memory_to_os,
    seed_everything,
    set_threads,
)
from tunevault.server.training.stopping import StopFlag, StopRequested

log = logging.getLogger("tunevault.worker")

EVAL_BATCH_ROWS = 16  # no gradients at eval: bigger batches amortise 4-bit dequantisation further
MAX_STEP_EVENTS = 1000  # long jobs report every k-th step so the event store stays small
TRAIN_LOSS_TAIL_STEPS = 10  # the reported train_loss is the token-weighted mean of the last steps
MEMORY_HEADROOM = 0.9  # share of the GPU's free memory a job may plan to use without checkpointing
CPU_ACTIVATION_BUDGET_SHARE = 0.1  # share of the host's memory a CPU job's activations may take without checkpointing


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy); capped where exp would overflow (a loss that high means "untrained")."""
    return math.exp(min(loss, 700.0))


class TrainingDiverged(ValueError):
    """The loss stopped being a number: the hyperparameters (usually the learning rate) are to blame."""


def _file_digest(path: Path | None) -> str:
    if path is None:
        return ""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class QLoRATrainer:
    """Fine-tunes one job: 4-bit NF4 base, LoRA adapters, AdamW on the adapters only."""

    ROWS_PER_EXAMPLE = 1  # batch rows per training example: a preference pair has two
    PRIVACY_UNIT = "one training row"  # what DP-SGD protects (and clips) as one example

    def __init__(self, spec: JobSpec, events: EventWriter, stop: StopFlag, ranks: Ranks | None = None) -> None:
        self.spec = spec
        # Under torchrun: this process's rank (distributed.py); rank 0 alone writes anything.
        self.ranks = ranks or Ranks()
        self.events = events
        self.stop = stop
        self.state = TrainState()
        self.dp: DPStep | None = None
        self.labels: dict[str, Any] | None = None  # label_scores.summary of the final eval
        self.memorization_result: dict[str, Any] | None = None
        self.dp_plan: Any = None  # privacy.dp_plan.DPPlan of a DP job

    # Setup ------------------------------------------------------------------------

    def setup(self) -> None:
        from transformers import AutoTokenizer

        self.threads = set_threads(self.ranks.world_size)
        self.device = self.ranks.device() if self.ranks.distributed else quantized_model.pick_device()
        if self.device.type == "cpu":
            return_freed_memory_to_os()  # glibc's heap would otherwise keep most of a step's freed activations
        self.compute_dtype = quantized_model.pick_compute_dtype(self.device)

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.spec.base_model_dir), local_files_only=True)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.general = self._general_probe()
        self.data: JobData = self._prepare_data()
        self.hp = self.data.hyperparameters
        # Memorization audit: canary rows join the training rows after the data checks (off: no change).
        self.memorization = MemorizationAudit.for_job(self.hp, self.data.data_format, self._canary_secrets())
        self.data = self.memorization.plant(self.tokenizer, self.data)
        check_fits_model(self.spec.base_model_dir, self.data.max_seq_len)
        self.total_steps = self.hp.max_steps
        self.accumulation = self.hp.gradient_accumulation_steps
        self.dp_enabled = self.hp.dp
        if self.dp_enabled and self.ranks.distributed:
            # Poisson sampling and per-example clipping are accounted for one process's draws.
            raise hp.HyperparameterError("dp", "differential privacy runs on one device; ask for one GPU")
        pad = self.tokenizer.pad_token_id
        # Packs hold at most max_seq_len tokens and a micro-batch at most batch_size packs: the
        # same worst-case memory as batch_size padded rows, without the padding.
        # On a GPU every micro-batch also has the same width: cuDNN plans attention per shape, and
        # new shapes each step cost more host time than the step's kernels (measured on an H100,
        # Llama-3-8B shape: 2.40 s for two steps at fixed width vs 6.16 s at varying widths).
        # DP-SGD never packs: a per-example gradient needs each example alone in its row.
        self.stream = self._train_stream(pad)
        self.eval_set = eval_batches(self.data.validation, max(EVAL_BATCH_ROWS, self.hp.batch_size), pad)
        self.events.emit(
            "data.prepared",
            f"{len(self.data.train)} training rows, {len(self.data.validation)} validation rows, "
            f"{self.total_steps} steps (max_seq_len {self.data.max_seq_len})",
            {**self.data.stats(), "total_steps": self.total_steps},
            hyperparameters=self.hp.to_dict(),
            data_format=self.data.data_format,
        )
        for warning in self.data.warnings(self.tokenizer.eos_token):
            self.events.emit("data.warning", warning)
        if self.dp_enabled:
            self._plan_dp()
        self.stop.check()

        started = time.perf_counter()
        seed_everything(self.hp.seed)
        self.fused_kernels = apply_fused_kernels(model_type(self.spec.base_model_dir), self.device)
        loaded = quantized_model.load_with_cache(self.spec.base_model_dir, self.device, self.compute_dtype)
        self.base_entry = loaded.cache_dir  # also holds the base model's cached eval scores
        self.hp = self.hp.with_gradient_checkpointing(self._gradient_checkpointing())
        base = quantized_model.prepare_for_training(loaded.model, self.device, bool(self.hp.gradient_checkpointing))
        # LoRA A matrices are drawn from the torch RNG: seeding right before makes them reproducible.
        torch.manual_seed(self.hp.seed)
        try:
            self.model = quantized_model.attach_lora(
                base,
                r=self.hp.lora_r,
                alpha=self.hp.lora_alpha,
                dropout=self.hp.lora_dropout,
                target_modules=self.hp.lora_target_modules,
            )
        except ValueError as exc:  # PEFT: none of the named modules exist in this model
            raise hp.HyperparameterError("lora_target_modules", str(exc).split("\n")[0]) from None
        quantized_model.pin_cpu_weight_layout(self.model)
        self.hp = self.hp.with_target_modules(quantized_model.lora_target_names(self.model))
        self.params = quantized_model.trainable_parameters(self.model)
        self.ranks.broadcast_parameters(self.params)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=self.hp.learning_rate, weight_decay=self.hp.weight_decay
        )
        warmup = math.ceil(self.total_steps * self.hp.warmup_ratio)
        self.scheduler = make_scheduler(self.optimizer, self.hp.lr_scheduler, warmup, self.total_steps)
        load_seconds = time.perf_counter() - started
        self.events.emit(
            "model.loaded",
            f"{self.spec.base_model_dir.name} in 4-bit NF4, compute {str(self.compute_dtype).removeprefix('torch.')} "
            f"on {self.device.type} x{self.threads} threads, LoRA r={self.hp.lora_r} on "
            f"{', '.join(self.hp.lora_target_modules)}",
            {
                "load_seconds": load_seconds,
                "trainable_parameters": sum(p.numel() for p in self.params),
                "quantized_from_cache": float(loaded.from_cache),
                "gradient_checkpointing": float(bool(self.hp.gradient_checkpointing)),
            },
        )
        self.state.fingerprint = self._fingerprint()
        self._resume_if_possible()
        if self.dp_enabled:
            self.dp = DPStep(
                self.model, self.optimizer, noise_multiplier=self.dp_plan.noise_multiplier,
                max_grad_norm=self.hp.dp_max_grad_norm, expected_batch=self.dp_plan.expected_batch,
                sample_rate=self.dp_plan.sample_rate, accountant=self.dp_plan.accountant, delta=self.dp_plan.delta,
                steps_done=self.state.step,
            )

    def _prepare_data(self) -> JobData:
        """The job's rows, tokenized (a hook: preference_trainer.py reads pairs instead)."""
        return prepare_job_data(
            self.tokenizer, self.spec.train_file, self.spec.validation_file, self.spec.hyperparameters,
            data_format=self.spec.data_format, validation_data_format=self.spec.validation_data_format,
        )

    def _train_stream(self, pad: int) -> Any:
        """The deterministic stream of training micro-batches (a hook: preference jobs stream pairs)."""
        return BatchStream(
            self.data.train, self.hp.batch_size, self.hp.seed, pad,
            pack_tokens=None if self.dp_enabled else self.data.max_seq_len,
            fixed_width=self.device.type == "cuda",
        )

    def _dp_step(self) -> tuple[list[Any], torch.Tensor]:
        """One DP-SGD step on a fresh Poisson draw of rows (a hook: preference jobs draw pairs)."""
        micro_batches = poisson_micro_batches(self.data.train, self.dp.sample_rate, self.dp.sampler,
                                              self.hp.batch_size, self.tokenizer.pad_token_id)
        return micro_batches, self.dp.step(micro_batches)

    def _plan_dp(self) -> None:
        """The noise for the target epsilon (or the epsilon of the given noise), with the preflight's warnings as events."""
        self.dp_plan = plan_and_announce(self.hp, len(self.data.train), self.events)

    def _canary_secrets(self) -> tuple[str, ...]:
        """The user's secrets: unsealed by the worker, or as written in a plain spec (a worker run by hand)."""
        if self.spec.canary_secrets is not None:
            return self.spec.canary_secrets
        return canary_secrets.restore(self.hp.canary_secrets, self.spec.output_dir.parent, keys=None)

    def _gradient_checkpointing(self) -> bool:
        """As asked; on "auto", when the job's activations would take too much of the device's memory otherwise.

        On a GPU: when the estimate without checkpointing exceeds the free memory (less headroom).
        On a CPU: when the activations alone would pass CPU_ACTIVATION_BUDGET_SHARE of the memory a
        job may use. The recompute costs compute (not yet timed cleanly on CPU: bench/memory_bench.py
        ran on a contended host), while the activations of a modest job (SmolLM2-135M, batch 8 x 372
        tokens: 6 GB, the bulk of a 10 GB peak) would crowd out other jobs and the page cache.
        """
        setting = self.hp.gradient_checkpointing
        if setting is not None:
            return setting
        config = json.loads((self.spec.base_model_dir / "config.json").read_text())
        labels = max(r.label_count for r in self.data.train)
        without = estimate_peak_memory(config, self.hp.with_gradient_checkpointing(False), device=self.device.type,
                                       label_tokens_per_row=labels)
        if self.device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(self.device)
            return without.total > MEMORY_HEADROOM * free_bytes
        limit = device_limit(None, "cpu").bytes or 0
        return without.activations > CPU_ACTIVATION_BUDGET_SHARE * limit

    def _fingerprint(self) -> str:
        """What a checkpoint must agree on to be resumed: data, base model and hyperparameters.

        Not the switches that leave the arithmetic alone: "auto" checkpointing may decide
        differently after a restart, and exporting a merged model happens after training.
        """
        unchanged_math = {"gradient_checkpointing", "export_merged"}
        parts = {
            "train": _file_digest(self.spec.train_file),
            "validation": _file_digest(self.spec.validation_file),
            "base": str(self.spec.base_model_dir.resolve()),
            "hyperparameters": {k: v for k, v in self.hp.to_dict().items() if k not in unchanged_math},
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _resume_if_possible(self) -> None:
        latest = checkpoints.latest_checkpoint(self.spec.checkpoint_dir)
        if latest is None:
            return
        state = checkpoints.load_checkpoint(latest, self.model, self.optimizer, self.scheduler)
        if state.fingerprint != self.state.fingerprint:
            raise hp.HyperparameterError(
                "checkpoint_dir",
                f"{latest} was written for different data, base model or hyperparameters; cannot resume from it",
            )
        self.state = state
        self.stream.position = state.micro_batches_done
        log.info("resumed from %s (step %d of %d)", latest, state.step, self.total_steps)

    # Evaluation ---------------------------------------------------------------------

    def _general_probe(self) -> GeneralProbe | None:
        """The forgetting check's prompts; None for a base model without a chat template to render them."""
        if not getattr(self.tokenizer, "chat_template", None):
            return None
        return GeneralProbe(self.tokenizer)

    def baseline(self) -> None:
        """Eval loss and accuracy of the untouched base model (adapter disabled), once per job."""
        if self.general is not None and self.state.base_general_loss is None:
            with self.model.disable_adapter():
                self.state.base_general_loss = self.general.loss(self.model, self.stop)
        if self.state.base_eval_loss is not None:
            return
        key = baseline_cache.cache_key(self.data.validation, self.data.accuracy_examples,
                                       max(EVAL_BATCH_ROWS, self.hp.batch_size), self.threads)
        cached = baseline_cache.load(self.base_entry, key)
        scores = cached
        if scores is None:
            with self.model.disable_adapter():
                scores = baseline_cache.Baseline(eval_loss(self.model, self.eval_set, self.stop), self._accuracy())
            if self.ranks.is_main:
                baseline_cache.store(self.base_entry, key, scores)
        loss, accuracy = scores.loss, scores.accuracy
        self.state.base_eval_loss, self.state.base_accuracy = loss, accuracy
        metrics = {"step": 0, "base_eval_loss": loss, "base_eval_cached": float(cached is not None)}
        if self.state.base_general_loss is not None:
            metrics["base_general_loss"] = self.state.base_general_loss
        if accuracy is not None:
            metrics["base_accuracy"] = accuracy
        what = "base model (scores cached by an earlier job)" if cached is not None else "base model"
        self._record(self.events.emit("eval.baseline", self._describe(what, loss, accuracy), metrics))

    def _accuracy(self) -> float | None:
        if not self.data.accuracy_examples:
            return None
        return exact_match_accuracy(self.model, self.tokenizer, self.data.accuracy_examples, self.stop)

    def _evaluate(self, step: int, with_accuracy: bool) -> tuple[float, float | None]:
        loss = eval_loss(self.model, self.eval_set, self.stop)
        accuracy = self._accuracy() if with_accuracy else None
        self.state.last_eval_loss = loss
        metrics = {"step": step, "eval_loss": loss, "eval_perplexity": perplexity(loss)}
        if accuracy is not None:
            metrics["accuracy"] = accuracy
        self._record(self.events.emit("eval", self._describe(f"step {step}", loss, accuracy), metrics))
        self._report_privacy(step)
        return loss, accuracy

    def _report_privacy(self, step: int) -> None:
        """A "dp" event beside every eval: the privacy spent up to this step."""
        if self.dp is None:
            return
        figures = self.dp.figures()
        self._record(self.events.emit(
            "dp",
            f"step {step}: epsilon {figures['dp_epsilon']:.4g} spent at delta {figures['dp_delta']:.3g} "
            f"({self.dp.accountant_name.upper()} accountant)",
            {"step": step, **figures},
            dp_accountant=self.dp.accountant_name,
        ))

    # Early stopping ---------------------------------------------------------------------

    def _track_best(self, step: int, loss: float) -> None:
        """Keep the adapter of the best eval so far on disk; count evals since it."""
        if self.state.best_eval_loss is None or loss < self.state.best_eval_loss:
            self.state.best_eval_loss, self.state.best_step, self.state.evals_since_best = loss, step, 0
            if self.ranks.is_main:
                checkpoints.save_best_adapter(self.spec.checkpoint_dir, self.model)
            self.ranks.barrier()  # every rank may restore it at the end
        else:
            self.state.evals_since_best += 1

    def _should_stop_early(self) -> bool:
        patience = self.hp.early_stopping_patience
        return patience > 0 and self.state.evals_since_best >= patience

    def _restore_best_if_better(self, final_loss: float) -> float:
        """With early stopping on, the job's result is the best evaluated adapter; returns its loss."""
        best = self.state.best_eval_loss
        if not self.hp.early_stopping_patience or best is None or best >= final_loss:
            return final_loss
        checkpoints.load_best_adapter(self.spec.checkpoint_dir, self.model)
        self.events.emit(
            "early_stopping.restored",
            f"kept the adapter of step {self.state.best_step} (eval loss {best:.4f}; final weights {final_loss:.4f})",
            {"best_step": self.state.best_step, "best_eval_loss": best, "final_eval_loss": final_loss},
        )
        return best

    @staticmethod
    def _describe(what: str, loss: float, accuracy: float | None) -> str:
        text = f"{what}: eval loss {loss:.4f}"
        return text + (f", accuracy {accuracy:.1%}" if accuracy is not None else "")

    def _record(self, event: dict[str, Any]) -> None:
        self.state.history.append({"type": event["type"], **event["metrics"]})

    # Training -----------------------------------------------------------------------

    def _step_event_due(self, step: int) -> bool:
        every = max(1, math.ceil(self.total_steps / MAX_STEP_EVENTS))
        return step % every == 0 or step == self.total_steps or step == 1

    def train(self) -> None:
        eval_every = self.hp.eval_every
        checkpoint_every = self.hp.checkpoint_every
        max_grad_norm = self.hp.max_grad_norm
        self.model.train()
        while self.state.step < self.total_steps:
            # The step boundary: the only place a stop request is acted on during training.
            # Every rank stops at the same step: one that went on would wait for the others forever.
            if self.ranks.any(self.stop.requested, self.device):
                self.save_checkpoint()
                raise StopRequested()
            started = time.perf_counter()
            learning_rate = self.scheduler.get_last_lr()[0]
            if self.dp is None:
                micro_batches, loss_total = self._step(max_grad_norm)
            else:
                micro_batches, loss_total = self._dp_step()
            self.scheduler.step()
            step_label_tokens = max(1, sum(b.label_tokens for b in micro_batches))
            step_loss = float(loss_total)  # the step's one wait on the device
            seconds = time.perf_counter() - started

            if not math.isfinite(step_loss):
                raise TrainingDiverged(
                    f"training diverged at step {self.state.step + 1} (loss is {step_loss}); lower learning_rate"
                )
            step_tokens = sum(b.tokens for b in micro_batches)
            self.state.padded_slots += sum(b.slots for b in micro_batches) - step_tokens
            self.state.step += 1
            self.state.micro_batches_done = self.stream.position
            self.state.trained_tokens += step_tokens
            self.state.train_seconds += seconds
            step = self.state.step
            metrics = {
                "step": step,
                "total_steps": self.total_steps,
                # None for an empty DP draw (a noise-only step): there was no loss to measure.
                "loss": step_loss / step_label_tokens if micro_batches else None,
                "learning_rate": learning_rate,
                "tokens_per_second": step_tokens / seconds,
                "trained_tokens": self.state.trained_tokens,
                "epoch": self.stream.epochs_done if self.dp is None else step * self.dp.sample_rate,
            }
            if self.dp is not None:
                metrics["dp_examples"] = sum(b.input_ids.shape[0] for b in micro_batches) // self.ROWS_PER_EXAMPLE
            self.state.history.append({
                "type": "step", **metrics, "label_tokens": step_label_tokens, "step_seconds": seconds,
                "step_tokens": step_tokens, "step_slots": sum(b.slots for b in micro_batches),
            })
            if self._step_event_due(step):
                shown = f"loss {metrics['loss']:.4f}" if metrics["loss"] is not None else "no rows drawn (noise only)"
                self.events.emit("step", f"step {step}/{self.total_steps} {shown}", metrics)
            if eval_every and step % eval_every == 0 and step < self.total_steps:
                try:
                    loss, _ = self._evaluate(step, with_accuracy=False)
                except StopRequested:
                    self.save_checkpoint()  # the step is done; keep it even though its eval is not
                    raise
                if self.hp.early_stopping_patience:
                    self._track_best(step, loss)
                    if self._should_stop_early():
                        self.state.stopped_early = True
                        self.events.emit(
                            "early_stopping",
                            f"eval loss has not improved for {self.state.evals_since_best} evals since step "
                            f"{self.state.best_step}; stopping at step {step} of {self.total_steps}",
                            {"step": step, "best_step": self.state.best_step},
                        )
                        return
            if checkpoint_every and step % checkpoint_every == 0 and step < self.total_steps:
                self.save_checkpoint()

    def _step(self, max_grad_norm: float) -> tuple[list[Any], torch.Tensor]:
        """One ordinary optimizer step over the stream's next packed micro-batches; returns them and their summed loss."""
        micro_batches = self.stream.next_step(self.accumulation)
        # Token-normalised accumulation: divide by the answer tokens of the whole step, so each
        # token counts the same whichever micro-batch it is in.
        step_label_tokens = max(1, sum(b.label_tokens for b in micro_batches))
        loss_total = torch.zeros((), device=self.device)
        for batch in self.ranks.share(micro_batches):  # all of them in a single process
            loss_sum, _ = summed_token_loss(self.model, batch)
            (loss_sum / step_label_tokens).backward()
            loss_total += loss_sum.detach()
        self.ranks.sum_gradients(self.params)
        loss_total = self.ranks.sum(loss_total)
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return micro_batches, loss_total

    def save_checkpoint(self) -> None:
        if not self.ranks.is_main:
            return  # every rank holds the same state; rank 0's copy is the one all resume from
        started = time.perf_counter()
        path = checkpoints.save_checkpoint(self.spec.checkpoint_dir, self.model, self.optimizer, self.scheduler, self.state)
        self.events.emit(
            "checkpoint",
            f"checkpoint at step {self.state.step}: {path}",
            {"step": self.state.step, "save_seconds": time.perf_counter() - started},
            path=str(path),
        )

    # Finishing ------------------------------------------------------------------------

    def _train_loss(self) -> float:
        steps = [h for h in self.state.history if h["type"] == "step" and h["loss"] is not None][-TRAIN_LOSS_TAIL_STEPS:]
        tokens = sum(h["label_tokens"] for h in steps)
        return sum(h["loss"] * h["label_tokens"] for h in steps) / tokens if tokens else float("nan")

    def _final_eval(self) -> tuple[float, float | None]:
        """Eval loss of the final weights, or of the best ones when early stopping keeps those; then accuracy."""
        loss = eval_loss(self.model, self.eval_set, self.stop)
        loss = self._restore_best_if_better(loss)
        accuracy = None
        if self.data.accuracy_examples:
            # The answers themselves, once: the accuracy, and per class where the answers are labels.
            answers = exact_match_answers(self.model, self.tokenizer, self.data.accuracy_examples, self.stop)
            accuracy = match_share(answers)
            self.labels = label_scores.summary(answers)
        self.state.last_eval_loss = loss
        metrics = {"step": self.state.step, "eval_loss": loss, "eval_perplexity": perplexity(loss)}
        if accuracy is not None:
            metrics["accuracy"] = accuracy
        self._record(self.events.emit("eval", self._describe(f"step {self.state.step}", loss, accuracy), metrics))
        self._report_privacy(self.state.step)
        return loss, accuracy

    def finish(self) -> dict[str, float]:
        """Final eval, then the adapter and metrics.json, written atomically; returns the result metrics."""
        try:
            eval_final, accuracy = self._final_eval()
            general_loss = self.general.loss(self.model, self.stop) if self.general is not None else None
            self.memorization_result = self._audit_memorization()
        except StopRequested:
            self.save_checkpoint()  # all steps are done; a resumed job goes straight to this eval
            raise
        result = {
            "eval_loss": eval_final,
            "eval_perplexity": perplexity(eval_final),
            "base_eval_loss": self.state.base_eval_loss,
            "base_eval_perplexity": perplexity(self.state.base_eval_loss) if self.state.base_eval_loss is not None else None,
            "best_step": self.state.best_step if self.hp.early_stopping_patience else None,
            "stopped_early": float(self.state.stopped_early),
            "accuracy": accuracy,
            "base_accuracy": self.state.base_accuracy,
            # The forgetting check (general_probe.py): the general prompts' answer loss, base and adapter.
            "general_loss": general_loss,
            "base_general_loss": self.state.base_general_loss,
            "train_loss": self._train_loss(),
            "trained_tokens": self.state.trained_tokens,
            "steps": self.state.step,
            "train_seconds": self.state.train_seconds,
            "tokens_per_second": self.state.trained_tokens / self.state.train_seconds if self.state.train_seconds else None,
            "padding_fraction": self.state.padded_slots / max(1, self.state.trained_tokens + self.state.padded_slots),
            "peak_memory_bytes": measured_peak_bytes(self.device),
            "estimated_peak_memory_bytes": (self.spec.memory_estimate or {}).get("total"),
            **(self.dp.figures() if self.dp is not None else {}),
            **canary_audit.figures(self.memorization_result),
        }
        result = {k: float(v) for k, v in result.items() if v is not None and math.isfinite(float(v))}
        self._export(result)
        return result

    def _export(self, result: dict[str, float]) -> None:
        if not self.ranks.is_main:
            return
        output = self.spec.output_dir
        # A previous attempt that finished exporting but not reporting is replaced by this run's result.
        with atomic_dir(output) as staging:
            self.model.save_pretrained(staging)
            (staging / "README.md").unlink(missing_ok=True)  # PEFT's blank model card; metrics.json says more
            metrics = {
                "job_id": self.spec.job_id,
                "result": result,
                "hyperparameters": self.hp.to_dict(),
                "data": {"format": self.data.data_format, **self.data.stats(),
                         "accuracy_examples": len(self.data.accuracy_examples)},
                "runtime": {
                    "device": self.device.type,
                    "threads": self.threads,
                    "compute_dtype": str(self.compute_dtype).removeprefix("torch."),
                    "quantization": "bitsandbytes nf4, double quantization",
                },
                "privacy": {"differential_privacy": self._privacy(), "memorization_audit": self.memorization_result},
                # Per-class exact match and confusions on label-like answers: here (sealed with the
                # artifacts) and in report.md, never in the result event, which the server stores as is.
                "labels": self.labels,
                "history": self.state.history,
            }
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False) + "\n")
            try:
                write_report(staging, metrics)
            except Exception:  # noqa: BLE001 - a picture must not fail a finished training
                log.exception("could not write the job report; the adapter and metrics.json are kept")
        if self.hp.export_merged:
            self._export_merged(output)

    def _audit_memorization(self) -> dict[str, Any] | None:
        """Canary exposure and identifier leaks of the final adapter, as events; None when the job asked for no audit."""
        found = self.memorization.run(self.model, self.tokenizer, self.spec, self.stop)
        if found is None:
            return None
        for canary in found["canaries"]:
            self.events.emit(
                "canary",
                f"canary planted {canary['repetitions']}x: exposure {canary['exposure_bits']:.2f} bits "
                f"(rank {canary['rank']} of {canary['candidates'] + 1}; before training {canary['base_exposure_bits']:.2f}"
                f"; by what training changed {canary['calibrated_exposure_bits']:.2f}, rank {canary['calibrated_rank']}"
                f"; chance {found['chance_exposure_bits']:.2f}), "
                + ("EXTRACTED by greedy decoding" if canary["extracted"] else "not extracted"),
                {k: float(canary[k]) for k in ("repetitions", "rank", "exposure_bits", "extrapolated_bits", "extracted",
                                                 "user_supplied", "base_rank", "base_exposure_bits", "calibrated_rank",
                                                 "calibrated_exposure_bits")
                 if math.isfinite(float(canary[k]))},
            )
        leaks = found["identifier_leaks"]
        self.events.emit(
            "memorization",
            f"{found['canaries_extracted']} of {len(found['canaries'])} canaries extractable; "
            f"{leaks['identifiers_reproduced']} of {leaks['identifiers_at_risk']} identifiers in training answers "
            f"repeated from {leaks['rows_probed']} of their questions",
            canary_audit.figures(found),
        )
        return found

    def _privacy(self) -> dict[str, Any] | None:
        """The DP guarantee as the compliance report states it; None for a job without DP."""
        if self.dp is None:
            return None
        figures = self.dp.figures()
        return {
            "epsilon": figures["dp_epsilon"], "delta": figures["dp_delta"], "accountant": self.dp.accountant_name,
            "noise_multiplier": figures["dp_noise_multiplier"], "sample_rate": figures["dp_sample_rate"],
            "steps": self.dp.steps, "max_grad_norm": figures["dp_max_grad_norm"],
            "expected_batch": self.dp_plan.expected_batch, "sampling": "poisson",
            "unit": self.PRIVACY_UNIT, "trained": "LoRA weights only",
        }

    def _export_merged(self, adapter_dir: Path) -> None:
        """Base (dequantized from the NF4 weights the adapter was trained on) + adapter, in 16-bit.

        Beside the adapter rather than inside it: the adapter archive stays small, and the merged
        model is a full copy of the base.
        """
        from tunevault.server.training.merge_export import export_merged

        merged = adapter_dir.parent / "merged"
        report = export_merged(self.spec.base_model_dir, adapter_dir, merged)
        self.events.emit(
            "export.merged",
            f"merged {report.dtype} model: {report.bytes_written / 1e6:.0f} MB in {report.seconds:.1f} s",
            {"merged_bytes": report.bytes_written, "merged_seconds": report.seconds, "merged_peak_rss_bytes": report.peak_rss_bytes},
            path=str(merged),
        )

    def run(self) -> dict[str, float]:
        self.setup()
        self.baseline()
        self.train()
        result = self.finish()
        extra = {"dp_accountant": self.dp.accountant_name} if self.dp is not None else {}
        self.events.emit("result", self._describe("final", result["eval_loss"], result.get("accuracy")), result, **extra)
        return result
