"""DP-SGD vs ordinary training on the same generated dataset: eval loss, privacy spent and cost per step.

    .venv/bin/python bench/dp_bench.py --out bench/results/dp_bench_cpu.json

Generates a support-ticket routing task (100,000 training rows by default, prompt/completion,
whose answer, "<team> <priority>", follows from the ticket's wording; about one ticket in ten is
ambiguous between two teams, as real queues are; an order number makes nearly every row
distinct), then runs two real worker jobs on it, side by side on their own cores, with
identical hyperparameters but for dp_epsilon (and --dp-learning-rate, when given): one without
DP and one with DP-SGD at epsilon 8. Prints and writes (--out) each run's eval loss and
exact-match accuracy, the relative difference, the share of the non-DP run's improvement over
the base model that DP kept, epsilon spent, noise multiplier, the learning curves and the
per-step time ratio, and, with the memorization audit's canaries planted 1, 4 and 16 times in
both arms, each canary's exposure (after training, before it, and by what training changed).

What DP needs, measured here (epsilon 8, 12 steps, LoRA r=4 on q_proj,v_proj, lr 1.5e-2; more in
the issue notes): the noise on a step's mean gradient is noise_multiplier / expected batch of the
clipping norm, and at a fixed epsilon the multiplier grows only slowly with the batch (0.575 for
12 steps of 1,024 of 20,000 rows, 0.620 for 24), so rows spent in few large steps beat many small
ones, and more rows to draw from lower it further. Hence the defaults: batches of 4,096 (64 x 64)
drawn from 100,000 rows, and Opacus' PRV accountant, whose tighter bound needs noise 0.527 for
epsilon 8 where RDP needs 0.571 (at 0.527 RDP would report 9.57): noise per batch 1.3e-4.

The eval set is 2,000 rows by default because the gap between two arms measured on 100 rows
moves by about 6 points either way with the rows drawn (a bootstrap over one pair of adapters:
95% of 100-row draws fall within +4.3% and +17.5% of a +10.6% gap; 1,000 rows, +8.5% to +12.6%;
2,000 rows, +9.1% to +12.1%); the bench reports that interval (paired_gap.py) with the gap. Eval
loss, DP against the job without DP, the adapters of each pair scored on the same 2,000 fresh
rows (the gap's 95% bootstrap interval in square brackets, the 100-row figure the jobs reported
in parentheses, RDP's noise unless said):

    rows     expected batch  noise per batch  seed 7                 seed 8                  seed 9
    50,000   2,048           2.7e-4           +4.9% [+3.2, +6.6]     +18.4% [+16.5, +20.3]   +18.7% [+17.2, +20.3]
                                              (-1.5% on 100 rows)    (+20%)                  (+14%)
    100,000  4,096 (default) 1.4e-4 (RDP)     not run                +10.6% [+9.1, +12.2]    -0.7% [-1.7, +0.3]
                                                                     (+15.6%)                (-4.8%)
                             1.3e-4 (PRV,     -6.0% [-7.3, -4.7]
                             the default)     (the bench's own 2,000
                                              rows: -6.6% [-8.0, -5.3])
    20,000   1,024           5.6e-4           +5% once, +35% twice (100 rows)

At 4,096 the two arms of seed 7 score 0.569 and 0.605, of seed 8 0.812 and 0.733, of seed 9 0.823
and 0.829; seed 9's job without DP did worse at 4,096 than at 2,048 (0.829 against 0.718), so part
of that seed's closing is the baseline's, not DP's. Seed 7 at the defaults was DP's best seed: ahead
from the first eval (4.66 / 1.13 / 0.664 / 0.570 at steps 3 / 6 / 9 / 12, against 4.88 / 1.38 /
0.782 / 0.610 on the bench's own rows), exact match 52% against 49%, epsilon 7.947 (PRV, delta
3.16e-6), no canary extracted in either arm; its job without DP scored about as at 2,048 (0.605
against 0.598), so there the closing is DP's own. Twelve steps end mid-curve, where the data order
alone moves a job's loss by 15-20%, so judge DP on several seeds (--seed), not one. What did not
close the gap at 2,048, on seed 8 unless said:
- the optimizer: Adam's eps at the noise's std (1.041), at 3x it (1.75 at step 9), DP-AdamBC
  (the second moment less the noise's variance, floored at it: 0.913; 0.786 against 0.813 on
  seed 9; on the 2,000 rows +26% and +11.5%);
- the DP arm's rate: 2.5e-2 diverged at step 3; 1e-2 ended at 0.755 (+8.5% on the 2,000 rows), but
  on seeds 7 and 9 it trailed the DP arm at 1.5e-2 at step 9 (0.924 against 0.688, 1.229 against
  0.919);
- the clipping norm: 0.1 instead of 1.0 gave 0.966 (every per-example gradient is clipped at 1.0:
  norms 3.2-5.5 before training, 4.6-14.5 after, 64 rows);
- the LoRA rank: the noise's norm grows with the square root of the trainable weights, but Adam
  scales each weight's step on its own; at r=1 both arms learnt more slowly and DP fell further
  behind (1.114 against 0.799, +39%), and at r=8 the rate of 1.5e-2 threw both arms back up by
  step 3 (eval 8.3 with DP, 11.6 without);
- smaller batches over more steps: 256 for 30 steps left DP far behind, and on 5,000 rows for 30
  steps (noise 1.07) DP stopped at 0.18 where the job without DP reached 0.022 (exact match 86%
  against 98%).
SmolLM2-135M trains at about 200-230 tokens/s per core here with these short rows: with the
defaults each arm takes about 100 minutes (half that with --rows 50000 --accumulation 32).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from paired_gap import DEFAULT_MODEL, compare_adapters

# Short rows on purpose (about 39 tokens with the chat template, 20 as prompt/completion): SmolLM2
# trains about a hundred tokens a second per core here, and DP needs many rows per step.
SYSTEM = "Route: team and priority."

# Ticket wordings per team; {p} is a product.
TEMPLATES: dict[str, list[str]] = {
    "billing": ["Charged twice for my {p}.", "Wrong amount on my {p} invoice.", "Payment for the {p} failed."],
    "shipping": ["My {p} has not arrived.", "{p} tracking stuck.", "Ship my {p} elsewhere."],
    "technical": ["My {p} will not turn on.", "{p} keeps disconnecting.", "{p} update failed."],
    "account": ["Cannot log in.", "Change my account email.", "Password reset link expired."],
    "returns": ["Return my {p}.", "{p} arrived broken, replace it.", "Exchange my {p} for another size."],
    "sales": ["Is the {p} in stock?", "Bulk discount on the {p}?", "Quote for ten {p} units."],
}
# Wordings that fit two teams: the label is either, at random (the task's irreducible uncertainty).
AMBIGUOUS: list[tuple[str, tuple[str, str]]] = [
    ("No refund yet for my {p}.", ("billing", "returns")),
    ("{p} arrived damaged.", ("shipping", "returns")),
    ("{p} not linked to my account.", ("technical", "account")),
]
PRODUCTS = ["headphones", "router", "smartwatch", "speaker", "camera", "tablet", "lamp", "kettle", "keyboard",
            "charger"]
URGENT = ["Urgent!", "Need it today.", "ASAP please."]
CALM = ["No rush.", "Thanks.", "When you can."]
AMBIGUOUS_SHARE = 0.1


def make_row(rng: random.Random) -> dict[str, Any]:
    """One chat row: a ticket and its "<team> <priority>" answer."""
    product = rng.choice(PRODUCTS)
    if rng.random() < AMBIGUOUS_SHARE:
        text, teams = rng.choice(AMBIGUOUS)
        team = rng.choice(teams)
    else:
        team = rng.choice(list(TEMPLATES))
        text = rng.choice(TEMPLATES[team])
    urgent = rng.random() < 0.3
    # An order number makes (nearly) every row distinct, as real tickets are, at about 3 tokens a row.
    ticket = f"#{rng.randrange(10_000)} " + text.format(p=product) + " " + rng.choice(URGENT if urgent else CALM)
    answer = f"{team} {'high' if urgent else 'low'}"
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket},
                         {"role": "assistant", "content": answer}]}


def as_completion(row: dict[str, Any]) -> dict[str, Any]:
    """The same ticket as a prompt/completion row: no chat template, about half the tokens."""
    _, user, assistant = row["messages"]
    return {"prompt": f"Ticket: {user['content']}\nRoute:", "completion": f" {assistant['content']}"}


def write_dataset(path: Path, rows: int, seed: int, row_format: str = "chat") -> Path:
    rng = random.Random(seed)
    shape = as_completion if row_format == "completion" else (lambda row: row)
    path.write_text("".join(json.dumps(shape(make_row(rng))) + "\n" for _ in range(rows)))
    return path


def run_job(jobs_dir: Path, job_id: str, model: Path, train: Path, validation: Path,
            hyperparameters: dict[str, Any], cpus: set[int] | None = None) -> dict[str, Any]:
    """A real worker job, as the scheduler starts one; returns its result metrics, events and wall time.

    `cpus` pins the worker (and so its thread count, which follows the affinity mask) to those cores.
    """
    from tunevault.server.contract.job_spec import JobSpec, resolve_for_files

    job_dir = jobs_dir / job_id
    JobSpec(job_id=job_id, base_model_dir=model, train_file=train, validation_file=validation,
            output_dir=job_dir / "artifacts", checkpoint_dir=job_dir / "checkpoints",
            hyperparameters=resolve_for_files(hyperparameters, train, validation)).write(job_dir)
    started = time.perf_counter()
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    # Events go to a file as they come, so a long run can be watched (tail events.jsonl).
    with (job_dir / "worker.log").open("wb") as log, (job_dir / "events.jsonl").open("w") as out:
        done = subprocess.run([sys.executable, "-m", "tunevault.server.worker.train", "--jobs-dir", str(jobs_dir), job_id],
                              stdout=out, stderr=log, text=True, check=False, preexec_fn=pin)
    wall = time.perf_counter() - started
    events = [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]
    results = [e for e in events if e["type"] == "result"]
    if done.returncode != 0 or not results:
        errors = [e["message"] for e in events if e["type"] == "error"]
        raise SystemExit(f"{job_id} failed ({done.returncode}): {errors}; see {job_dir / 'worker.log'}")
    return {"result": results[0]["metrics"], "events": events, "wall_seconds": wall,
            "adapter_dir": job_dir / "artifacts"}


def run_arms(jobs_dir: Path, model: Path, train: Path, validation: Path,
             arms: dict[str, dict[str, Any]], parallel: bool) -> dict[str, dict[str, Any]]:
    """Each arm as its own worker; with `parallel`, side by side, each pinned to its own half of the cores.

    Side by side, both arms meet the same machine load, which a shared CPU makes fairer than one after the other.
    """
    cores = sorted(os.sched_getaffinity(0))
    job_ids = {name: f"{name}-{os.getpid()}" for name in arms}
    if not parallel or len(cores) < len(arms):
        runs = {}
        for name, hyperparameters in arms.items():
            print(f"running {name} ...", flush=True)
            runs[name] = run_job(jobs_dir, job_ids[name], model, train, validation, hyperparameters)
        return runs
    share = len(cores) // len(arms)
    with ThreadPoolExecutor(len(arms)) as pool:
        futures = {name: pool.submit(run_job, jobs_dir, job_ids[name], model, train, validation,
                                     hyperparameters, set(cores[i * share:(i + 1) * share]))
                   for i, (name, hyperparameters) in enumerate(arms.items())}
        print(f"running {', '.join(arms)} side by side, {share} core(s) each; events in {jobs_dir}/*/events.jsonl",
              flush=True)
        return {name: future.result() for name, future in futures.items()}


def canary_figures(metrics: dict[str, float]) -> dict[str, Any]:
    """One canary's audit: exposure after training, before it, by what training changed (calibrated), extraction."""
    return {"repetitions": int(metrics["repetitions"]), "exposure_bits": metrics["exposure_bits"],
            "base_exposure_bits": metrics["base_exposure_bits"],
            "calibrated_exposure_bits": metrics["calibrated_exposure_bits"],
            "calibrated_rank": int(metrics["calibrated_rank"]), "extracted": bool(metrics["extracted"])}


def summary(run: dict[str, Any]) -> dict[str, Any]:
    result = run["result"]
    return {
        "eval_loss": result["eval_loss"], "base_eval_loss": result.get("base_eval_loss"),
        "accuracy": result.get("accuracy"), "base_accuracy": result.get("base_accuracy"),
        "steps": int(result["steps"]), "train_seconds": result["train_seconds"],
        "seconds_per_step": result["train_seconds"] / result["steps"],
        "tokens_per_second": result.get("tokens_per_second"), "wall_seconds": run["wall_seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="base model directory (default SmolLM2-135M)")
    parser.add_argument("--rows", type=int, default=100000, help="training rows (the DP unit)")
    parser.add_argument("--validation-rows", type=int, default=2000,
                        help="eval rows; on 100 the gap between the arms moves by about 6 points with the draw")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per micro-batch")
    parser.add_argument("--accumulation", type=int, default=64, help="micro-batches per step (expected batch = product)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--learning-rate", type=float, default=1.5e-2)
    parser.add_argument("--dp-learning-rate", type=float,
                        help="the DP arm's rate, if not --learning-rate (on the default task 2.5e-2 diverged "
                             "and 1e-2 beat the shared 1.5e-2 on one seed of three)")
    parser.add_argument("--lora-r", type=int, default=4)
    parser.add_argument("--lora-targets", default="q_proj,v_proj",
                        help="comma-separated module names; DP's noise grows with the trainable parameter count")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--accountant", choices=("rdp", "prv"), default="prv",
                        help="the DP arm's Opacus accountant; PRV's tighter bound needs less noise for the same "
                             "epsilon (0.527 against RDP's 0.571 at the defaults)")
    parser.add_argument("--dp-max-grad-norm", type=float,
                        help="the DP arm's per-example clipping norm (default: the product's, 1.0; 0.1 left DP "
                             "further behind on the default task)")
    parser.add_argument("--eval-every", type=int, default=3, help="steps between eval losses (the learning curve)")
    parser.add_argument("--accuracy-examples", type=int, default=100,
                        help="validation rows scored by exact match of the greedy answer (0 = off)")
    parser.add_argument("--canary-repetitions", default="1,4,16",
                        help="the memorization audit's canaries, planted in both arms ('' = no audit)")
    parser.add_argument("--format", choices=("chat", "completion"), default="completion",
                        help="chat rows (system, ticket, answer) or prompt/completion rows, about half as long")
    parser.add_argument("--sequential", action="store_true", help="run the arms one after the other on all cores")
    parser.add_argument("--seed", type=int, default=7,
                        help="the generated rows and their order (both arms); DP's own sampling and noise are secret")
    parser.add_argument("--jobs-dir", type=Path, help="where the two jobs run (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--no-interval", action="store_true",
                        help="skip re-scoring both adapters row by row for the gap's paired bootstrap interval")
    args = parser.parse_args(argv)

    jobs_dir = args.jobs_dir or Path(tempfile.mkdtemp(prefix="dp-bench-"))
    jobs_dir.mkdir(parents=True, exist_ok=True)
    train = write_dataset(jobs_dir / "train.jsonl", args.rows, args.seed, args.format)
    validation = write_dataset(jobs_dir / "validation.jsonl", args.validation_rows, args.seed + 1, args.format)
    common = {"batch_size": args.batch_size, "gradient_accumulation_steps": args.accumulation,
              "max_steps": args.steps, "learning_rate": args.learning_rate, "lora_r": args.lora_r,
              "lora_target_modules": args.lora_targets.split(","), "lora_dropout": 0.0,
              "eval_every": args.eval_every, "checkpoint_every": 0, "early_stopping_patience": 0,
              "eval_accuracy_max_examples": args.accuracy_examples, "seed": args.seed}
    canaries = [int(n) for n in args.canary_repetitions.split(",") if n]
    if canaries:
        common["canary_repetitions"] = canaries
    runs = run_arms(jobs_dir, args.model, train, validation,
                    {"non_dp": common, "dp": dp_arm(common, args)},
                    parallel=not args.sequential)
    figures = compare(runs, args, common)
    if not args.no_interval:
        gap = compare_adapters(args.model, runs["dp"]["adapter_dir"], runs["non_dp"]["adapter_dir"], validation)
        figures["paired_gap"] = asdict(gap)
    print(json.dumps(figures, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


def dp_arm(common: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The DP arm's hyperparameters: the common ones, DP on, and the DP-only overrides given."""
    arm = {**common, "dp_epsilon": args.epsilon, "dp_accountant": args.accountant,
           "learning_rate": args.dp_learning_rate or args.learning_rate}
    if args.dp_max_grad_norm is not None:
        arm["dp_max_grad_norm"] = args.dp_max_grad_norm
    return arm


def compare(runs: dict[str, dict[str, Any]], args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    plain, private = summary(runs["non_dp"]), summary(runs["dp"])
    dp_result = runs["dp"]["result"]
    base = plain["base_eval_loss"]
    return {
        "model": args.model.name, "format": args.format, "train_rows": args.rows, "validation_rows": args.validation_rows,
        "expected_batch": args.batch_size * args.accumulation, "hyperparameters": common,
        "dp_learning_rate": args.dp_learning_rate or args.learning_rate,
        "dp_max_grad_norm": dp_result["dp_max_grad_norm"],
        "non_dp": plain, "dp": private,
        "relative_eval_loss_difference": (private["eval_loss"] - plain["eval_loss"]) / plain["eval_loss"],
        # How much of the non-DP run's improvement over the base model DP kept: a DP run that learnt
        # nothing would be far from 1 even where both losses are small.
        "improvement_kept": (base - private["eval_loss"]) / (base - plain["eval_loss"]) if base else None,
        "target_epsilon": args.epsilon, "epsilon_spent": dp_result["dp_epsilon"], "delta": dp_result["dp_delta"],
        "accountant": next(e.get("dp_accountant") for e in runs["dp"]["events"] if e["type"] == "result"), "noise_multiplier": dp_result["dp_noise_multiplier"],
        "sample_rate": dp_result["dp_sample_rate"], "dp_steps": int(dp_result["dp_steps"]),
        "noise_per_expected_batch": dp_result["dp_noise_multiplier"] / (args.batch_size * args.accumulation),
        "per_step_time_ratio": private["seconds_per_step"] / plain["seconds_per_step"],
        "dp_warnings": [e["message"] for e in runs["dp"]["events"] if e["type"] == "dp.warning"],
        "canaries": {name: [canary_figures(e["metrics"]) for e in run["events"] if e["type"] == "canary"]
                     for name, run in runs.items()},
        "eval_curves": {name: [(int(e["metrics"]["step"]), e["metrics"]["eval_loss"]) for e in run["events"]
                               if e["type"] == "eval" and "eval_loss" in e.get("metrics", {})]
                        for name, run in runs.items()},
        "note": "wall times on a CPU shared with other work are noisy",
    }


if __name__ == "__main__":
    sys.exit(main())
