"""DP-SGD: per-example clipping on the real 4-bit PEFT model, epsilon as Opacus' accountants compute it, a DP job, the preflight.

The clipping tests read the gradient the optimizer is handed (an SGD with lr 0 that records it):
with noise 0 and an expected batch of 1 that gradient is exactly the sum of the clipped
per-example gradients, so one example's contribution is the difference between the sums with
and without it.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny_model import EXAMPLES, WorkerRun, run_worker, stop_after, triage_subset, write_job
from tunevault.server.contract import hyperparameters as hp
from tunevault.server.contract.formats import read_chat_jsonl
from tunevault.server.privacy import dp_plan
from tunevault.server.training import quantized_model
from tunevault.server.training.batching import collate, poisson_micro_batches
from tunevault.server.training.objective import per_example_loss, summed_token_loss
from tunevault.server.training.tokenization import tokenize_row

TINY = "tiny-llama"


class RecordingSGD(torch.optim.SGD):
    """lr 0: the weights stay put, and each step's gradients are kept for the test to read."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__(params, lr=0.0)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):  # type: ignore[override]
        self.seen.append([p.grad.detach().clone() for group in self.param_groups for p in group["params"]])
        return super().step(closure)


@pytest.fixture(scope="module")
def lora_model(tiny_models_dir: Path):
    from transformers import AutoTokenizer

    model_dir = tiny_models_dir / TINY
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    base = quantized_model.load_quantized_base(model_dir, torch.device("cpu"), torch.float32)
    base = quantized_model.prepare_for_training(base, torch.device("cpu"))
    torch.manual_seed(0)
    model = quantized_model.attach_lora(base, r=8, alpha=16, dropout=0.0, target_modules=None)
    quantized_model.pin_cpu_weight_layout(model)
    with torch.no_grad():  # random B so that every LoRA gradient is informative
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    model.train()
    return model, tokenizer


@pytest.fixture(scope="module")
def rows(lora_model):
    _, tokenizer = lora_model
    return [tokenize_row(tokenizer, r) for r in read_chat_jsonl(EXAMPLES / "triage.jsonl")[:6]]


@pytest.fixture(scope="module")
def dp_step(lora_model):
    """One DPStep for the module (Opacus hooks attach once per model): noise 0, expected batch 1."""
    from tunevault.server.training.dp_sgd import DPStep

    model, _ = lora_model
    params = quantized_model.trainable_parameters(model)
    optimizer = RecordingSGD(params)
    step = DPStep(model, optimizer, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch=1,
                  sample_rate=0.5, accountant="rdp", delta=1e-5)
    return step, optimizer


def _summed_clipped(step, optimizer, batches, max_grad_norm: float) -> torch.Tensor:
    step.optimizer.max_grad_norm = max_grad_norm
    step.step(batches)
    return torch.cat([g.flatten() for g in optimizer.seen[-1]])


def _plain_gradient(model, batch, step) -> torch.Tensor:
    """The ordinary autograd gradient of the batch's per-sequence loss, with Opacus' hooks off."""
    step.module.disable_hooks()  # otherwise this backward would leave per-example gradients for the next step
    try:
        per_row, _ = per_example_loss(model, batch)
        grads = torch.autograd.grad(per_row.sum(), quantized_model.trainable_parameters(model))
    finally:
        step.module.enable_hooks()
    return torch.cat([g.flatten() for g in grads])


def test_per_example_gradients_match_autograd_when_nothing_is_clipped(lora_model, rows, dp_step) -> None:
    model, tokenizer = lora_model
    step, optimizer = dp_step
    batch = collate(rows[:3], tokenizer.pad_token_id)
    opacus_sum = _summed_clipped(step, optimizer, [batch], max_grad_norm=1e6)
    reference = _plain_gradient(model, batch, step)
    assert torch.allclose(opacus_sum, reference, rtol=1e-3, atol=1e-6)


def test_clipping_bounds_each_examples_contribution(lora_model, rows, dp_step) -> None:
    model, tokenizer = lora_model
    step, optimizer = dp_step
    norms = [float(_plain_gradient(model, collate([r], tokenizer.pad_token_id), step).norm()) for r in rows]
    clip = 0.5 * min(norms)  # every example is clipped
    everyone = _summed_clipped(step, optimizer, [collate(rows, tokenizer.pad_token_id)], clip)
    for k in range(len(rows)):
        others = rows[:k] + rows[k + 1 :]
        without = _summed_clipped(step, optimizer, [collate(others, tokenizer.pad_token_id)], clip)
        contribution = float((everyone - without).norm())
        assert contribution <= clip * (1 + 1e-3), (k, contribution, clip)
        assert contribution == pytest.approx(clip, rel=1e-2)  # clipped to exactly the bound, not below it
    # An example under the bound keeps its gradient whole.
    alone = _summed_clipped(step, optimizer, [collate(rows[:1], tokenizer.pad_token_id)], 10 * max(norms))
    assert float(alone.norm()) == pytest.approx(norms[0], rel=1e-3)


@pytest.fixture(scope="module")
def pairs(lora_model):
    from tunevault.server.training.preference_data import prepare_preference_data

    _, tokenizer = lora_model
    resolved = hp.resolve(hp.validate({"validation_fraction": 0.25}), train_rows=32)
    return prepare_preference_data(tokenizer, EXAMPLES / "preference.jsonl", None, resolved).train[:4]


def _dpo_pair_losses(model):
    """DPO's per-pair losses as the preference trainer computes them under DP (reference: adapter disabled)."""
    from tunevault.server.training.preference_objective import answer_logps, dpo_losses, reference_logps

    def losses(module, batch):
        per_pair = dpo_losses(answer_logps(module, batch), reference_logps(model, batch), beta=0.5)[0]
        return per_pair, per_pair.detach().sum()
    return losses


def _summed_clipped_pairs(step, optimizer, model, batch, max_grad_norm: float) -> torch.Tensor:
    step.optimizer.max_grad_norm = max_grad_norm
    step.step([batch], _dpo_pair_losses(model), rows_per_example=2)
    return torch.cat([g.flatten() for g in optimizer.seen[-1]])


def test_a_pairs_two_rows_are_one_example_the_unclipped_sum_is_the_dpo_gradient(lora_model, pairs, dp_step) -> None:
    from tunevault.server.training.preference_objective import collate_pairs

    model, tokenizer = lora_model
    step, optimizer = dp_step
    batch = collate_pairs(pairs[:3], tokenizer.pad_token_id)
    opacus_sum = _summed_clipped_pairs(step, optimizer, model, batch, max_grad_norm=1e6)
    step.module.disable_hooks()
    try:
        grads = torch.autograd.grad(_dpo_pair_losses(model)(model, batch)[0].sum(),
                                    quantized_model.trainable_parameters(model))
    finally:
        step.module.enable_hooks()
    assert torch.allclose(opacus_sum, torch.cat([g.flatten() for g in grads]), rtol=1e-3, atol=1e-6)


def test_clipping_bounds_each_pairs_contribution_chosen_and_rejected_together(lora_model, pairs, dp_step) -> None:
    from tunevault.server.training.preference_objective import collate_pairs

    model, tokenizer = lora_model
    step, optimizer = dp_step
    alone = [_summed_clipped_pairs(step, optimizer, model, collate_pairs([p], tokenizer.pad_token_id), 1e6).norm()
             for p in pairs]
    clip = 0.5 * float(min(alone))  # every pair is clipped
    everyone = _summed_clipped_pairs(step, optimizer, model, collate_pairs(pairs, tokenizer.pad_token_id), clip)
    for k in range(len(pairs)):
        others = collate_pairs(pairs[:k] + pairs[k + 1:], tokenizer.pad_token_id)
        contribution = float((everyone - _summed_clipped_pairs(step, optimizer, model, others, clip)).norm())
        # Exactly the bound: clipped per row, a pair could move the weights by up to twice it.
        assert contribution == pytest.approx(clip, rel=1e-2), (k, contribution, clip)


def test_micro_batches_of_one_step_sum_like_one_batch(lora_model, rows, dp_step) -> None:
    _, tokenizer = lora_model
    step, optimizer = dp_step
    whole = _summed_clipped(step, optimizer, [collate(rows, tokenizer.pad_token_id)], 0.05)
    calls = len(optimizer.seen)
    split = _summed_clipped(step, optimizer, [collate(rows[:4], tokenizer.pad_token_id),
                                              collate(rows[4:], tokenizer.pad_token_id)], 0.05)
    assert len(optimizer.seen) == calls + 1  # the inner optimizer stepped once for the two micro-batches
    assert torch.allclose(whole, split, rtol=1e-4, atol=1e-7)


def test_an_empty_draw_takes_a_noise_only_step(dp_step) -> None:
    step, optimizer = dp_step
    step.optimizer.noise_multiplier, step.optimizer.max_grad_norm = 2.0, 0.5
    try:
        steps_before = step.steps
        step.step([])
        noise = torch.cat([g.flatten() for g in optimizer.seen[-1]])
        assert step.steps == steps_before + 1  # the accountant counts it
        assert float(noise.std()) == pytest.approx(2.0 * 0.5 / 1, rel=0.05)  # std = noise x clip / expected batch
    finally:
        step.optimizer.noise_multiplier = 0.0


def test_per_example_loss_is_each_rows_own_token_mean(lora_model, rows) -> None:
    model, tokenizer = lora_model
    batch = collate(rows[:4], tokenizer.pad_token_id)
    with torch.no_grad():
        per_row, summed = per_example_loss(model, batch)
        singles = [summed_token_loss(model, collate([r], tokenizer.pad_token_id)) for r in rows[:4]]
        whole, _ = summed_token_loss(model, batch)
    assert torch.allclose(per_row, torch.tensor([float(loss) / n for loss, n in singles]), rtol=1e-4)
    assert float(summed) == pytest.approx(float(whole), rel=1e-5)


def test_poisson_draws_vary_around_the_expected_batch_and_respect_the_micro_batch(rows) -> None:
    many = rows * 50  # 300 rows
    rng = random.Random(3)
    sizes = []
    for _ in range(200):
        batches = poisson_micro_batches(many, 0.1, rng, 8, pad_token_id=0)
        assert all(b.input_ids.shape[0] <= 8 for b in batches)
        sizes.append(sum(b.input_ids.shape[0] for b in batches))
    assert sum(sizes) / len(sizes) == pytest.approx(30, rel=0.1)
    assert len(set(sizes)) > 5  # Poisson, not a fixed batch
    assert poisson_micro_batches(many, 0.0, rng, 8, pad_token_id=0) == []


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_dp_step_epsilon_equals_opacus_accountant_stepped_independently(lora_model, rows, accountant) -> None:
    from opacus.accountants import PRVAccountant, RDPAccountant

    from tunevault.server.training.dp_sgd import DPStep

    # Only the accounting is under test here: a step with no rows exercises it without new hooks.
    step = DPStep.__new__(DPStep)
    step.noise_multiplier, step.sample_rate, step.delta = 0.9, 0.04, 1e-5
    step.accountant_name, step.accountant = accountant, dp_plan.make_accountant(accountant)
    independent = (RDPAccountant if accountant == "rdp" else PRVAccountant)()
    for _ in range(25):
        step.accountant.step(noise_multiplier=0.9, sample_rate=0.04)
        independent.step(noise_multiplier=0.9, sample_rate=0.04)
    assert step.epsilon() == independent.get_epsilon(delta=1e-5)
    assert dp_plan.epsilon_spent(accountant, 0.9, 0.04, 25, 1e-5) == independent.get_epsilon(delta=1e-5)


# A real DP job through the worker ---------------------------------------------------------

DP_HP = {"dp_epsilon": 8, "batch_size": 8, "gradient_accumulation_steps": 2, "max_steps": 4, "eval_every": 2,
         "eval_accuracy_max_examples": 0, "checkpoint_every": 0, "max_seq_len": 160}


@pytest.fixture(scope="module")
def dp_job(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> tuple[WorkerRun, Path]:
    jobs = tmp_path_factory.mktemp("jobs")
    train = triage_subset(tmp_path_factory.mktemp("data") / "train.jsonl", rows=120)
    job_dir = write_job(jobs, "dp-job", tiny_models_dir / TINY, train, DP_HP)
    return run_worker(jobs, "dp-job"), job_dir


def test_dp_job_finishes_within_its_epsilon_and_reports_it(dp_job) -> None:
    run, job_dir = dp_job
    assert run.returncode == 0, run.log
    result = run.of_type("result")[0]
    assert result["metrics"]["dp_epsilon"] <= DP_HP["dp_epsilon"]
    assert result["metrics"]["dp_delta"] == 1e-5 and result["dp_accountant"] == "rdp"
    assert result["metrics"]["dp_steps"] == DP_HP["max_steps"]
    # A "dp" event beside every eval, epsilon growing with the steps.
    evals, dps = run.of_type("eval"), run.of_type("dp")
    assert [e["metrics"]["step"] for e in dps] == [e["metrics"]["step"] for e in evals] == [2, 4]
    assert 0 < dps[0]["metrics"]["dp_epsilon"] < dps[1]["metrics"]["dp_epsilon"] == result["metrics"]["dp_epsilon"]
    # Poisson-drawn steps of varying size; the small set draws the preflight's warning.
    assert all("dp_examples" in e["metrics"] for e in run.of_type("step"))
    assert any("too little data for DP" in e["message"] for e in run.of_type("dp.warning"))
    metrics = json.loads((job_dir / "artifacts" / "metrics.json").read_text())
    privacy = metrics["privacy"]["differential_privacy"]
    assert privacy["epsilon"] == result["metrics"]["dp_epsilon"] and privacy["accountant"] == "rdp"
    assert metrics["hyperparameters"]["dp_delta"] == 1e-5
    assert "Differential privacy" in (job_dir / "artifacts" / "report.md").read_text()


def test_dp_job_epsilon_equals_opacus_rdp_accountant(dp_job) -> None:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    run, _ = dp_job
    figures = run.of_type("result")[0]["metrics"]
    train_rows = run.of_type("data.prepared")[0]["metrics"]["train_rows"]
    expected_batch = DP_HP["batch_size"] * DP_HP["gradient_accumulation_steps"]
    assert figures["dp_sample_rate"] == expected_batch / train_rows
    accountant = RDPAccountant()
    for _ in range(DP_HP["max_steps"]):
        accountant.step(noise_multiplier=figures["dp_noise_multiplier"], sample_rate=figures["dp_sample_rate"])
    assert figures["dp_epsilon"] == pytest.approx(accountant.get_epsilon(delta=figures["dp_delta"]), rel=1e-12)
    # The noise is Opacus' own answer for the target, searched to 1% of epsilon.
    noise = get_noise_multiplier(target_epsilon=DP_HP["dp_epsilon"], target_delta=1e-5,
                                 sample_rate=figures["dp_sample_rate"], steps=DP_HP["max_steps"], epsilon_tolerance=0.08)
    assert figures["dp_noise_multiplier"] == pytest.approx(noise)


def test_a_dp_job_resumed_after_a_crash_counts_every_step_once(tmp_path: Path, tiny_models_dir: Path) -> None:
    """PRV through the worker, and the accountant's history carried across a SIGKILL and a fresh worker."""
    from opacus.accountants import PRVAccountant

    train = triage_subset(tmp_path / "train.jsonl", rows=120)
    hyperparameters = {**DP_HP, "dp_accountant": "prv", "max_steps": 4, "checkpoint_every": 2, "eval_every": 4}
    write_job(tmp_path, "dp-crash", tiny_models_dir / TINY, train, hyperparameters)
    crashed = stop_after(tmp_path, "dp-crash", "checkpoint", signal.SIGKILL, min_step=2)
    assert crashed.returncode == -signal.SIGKILL
    resumed = run_worker(tmp_path, "dp-crash")
    assert resumed.returncode == 0, resumed.log
    assert int(resumed.of_type("step")[0]["metrics"]["step"]) == 3  # continued after the step-2 checkpoint
    figures = resumed.of_type("result")[0]["metrics"]
    assert figures["dp_steps"] == 4 and resumed.of_type("result")[0]["dp_accountant"] == "prv"
    accountant = PRVAccountant()
    for _ in range(4):
        accountant.step(noise_multiplier=figures["dp_noise_multiplier"], sample_rate=figures["dp_sample_rate"])
    assert figures["dp_epsilon"] == pytest.approx(accountant.get_epsilon(delta=figures["dp_delta"]), rel=1e-9)
    assert figures["dp_epsilon"] <= hyperparameters["dp_epsilon"]


# Hyperparameters and the preflight ----------------------------------------------------------

@pytest.mark.parametrize("raw, field", [
    ({"dp_epsilon": 8, "dp_noise_multiplier": 1.0}, "dp_noise_multiplier"),
    ({"dp_delta": 1e-6}, "dp_delta"),
    ({"dp_max_grad_norm": 1.0}, "dp_max_grad_norm"),
    ({"dp_accountant": "rdp"}, "dp_accountant"),
    ({"dp_epsilon": 0}, "dp_epsilon"),
    ({"dp_epsilon": 8, "dp_accountant": "gdp"}, "dp_accountant"),
    ({"dp_noise_multiplier": 0}, "dp_noise_multiplier"),
    ({"dp_epsilon": 8, "dp_delta": 0.5}, "dp_delta"),
])
def test_bad_dp_settings_name_their_field(raw: dict, field: str) -> None:
    with pytest.raises(hp.HyperparameterError) as caught:
        hp.validate(raw)
    assert caught.value.field == field


def test_dp_defaults_resolve_below_one_over_n_and_stay_out_of_non_dp_jobs() -> None:
    for rows in (60, 5000, 200_000):
        resolved = hp.resolve(hp.validate({"dp_epsilon": 8}), train_rows=rows, has_validation_file=True)
        assert resolved.dp_delta < 1 / rows and resolved.dp_delta <= 1e-5
        assert resolved.dp_accountant == "rdp" and resolved.dp_max_grad_norm == 1.0
        assert hp.resolve(hp.validate(resolved.to_dict()), train_rows=rows, has_validation_file=True) == resolved
    assert not any(k.startswith("dp_") for k in hp.resolve(hp.validate({}), train_rows=100).to_dict())


def test_dp_plan_imports_without_torch() -> None:
    probe = "import sys, tunevault.server.privacy.dp_plan; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


PREFLIGHT_HP = {"dp_epsilon": 8, "batch_size": 32, "gradient_accumulation_steps": 8, "epochs": 1}


def test_preflight_warns_on_the_small_example_set_with_numbers_and_a_suggestion() -> None:
    rows = len((EXAMPLES / "triage.jsonl").read_text().splitlines())
    for requested in ({"dp_epsilon": 8}, PREFLIGHT_HP):
        plan = dp_plan.plan_for_job(requested, rows)
        assert plan is not None and plan.warnings
        warning = next(w for w in plan.warnings if "too little data" in w)
        assert f"{plan.rows:,} training rows" in warning and f"{plan.noise_multiplier:.3g}" in warning
        assert plan.suggestion.startswith("smallest change that helps:")
        assert plan.epsilon <= 8


def test_preflight_is_quiet_on_a_5000_row_set_with_a_dp_sized_batch() -> None:
    plan = dp_plan.plan_for_job(PREFLIGHT_HP, 5000, has_validation_file=True)
    assert plan is not None
    assert plan.warnings == [] and plan.suggestion == ""
    assert plan.sample_rate == 256 / 5000 and plan.steps == 20 and plan.epsilon <= 8
    assert plan.noise_per_batch < dp_plan.NOISE_PER_BATCH_WARN


def test_preflight_is_none_without_dp_and_warns_on_a_large_delta() -> None:
    assert dp_plan.plan_for_job({}, 5000) is None
    plan = dp_plan.dp_preflight(5000, 256, 20, noise_multiplier=1.0, delta=1e-3)
    assert any("not below 1/N" in w for w in plan.warnings)
