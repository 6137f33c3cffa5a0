"""Memorization benchmark: what a fine-tune gives away, with and without PII redaction, on the default model.

A synthetic referral-summary task whose answers hold identifiers (a name, an MRN, a birth date)
that the questions do not: the worst case for memorization, since the model can only produce
them from what it trained on. Canaries are planted at 1, 4 and 16 repetitions. Each arm is a real
worker process (`python -m tunevault.server.worker.train`) with the job's memorization audit on:
  off     the data as it is: the control, which must leak for the other arms' zeros to mean anything
  redact  pii=redact: the worker trains on the scrubbed copy; the audit asks the ORIGINAL questions
  dp      the data as it is, with DP-SGD at epsilon 8 (the preflight warns this set is far too small
          for DP to learn much: the point here is what DP lets out, not what it learns)
Few rows seen many times (about 17 epochs by default) make the control memorize: the worst case.
Printed and written (--out): per arm, the identifiers at risk and repeated by greedy decoding,
each canary's exposure after training, under the base model, and ranked by what training
changed (chance is about 1.44 bits, the maximum log2(201) = 7.65), eval loss.

    python bench/memorization_bench.py --models-dir .cache/models [--steps 80] [--arms off,dp] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST = ["Margaret", "Tomasz", "Aaliyah", "Dmitri", "Priya", "Oluwaseun", "Ingrid", "Mateo", "Keiko", "Rashid"]
LAST = ["Okafor", "Lindqvist", "Castellano", "Nakamura", "Whitfield", "Abernathy", "Kowalczyk", "Haddad"]
SPECIALTIES = ["dermatology", "cardiology", "neurology", "orthopedics", "pulmonology"]
SYMPTOMS = ["itchy rash on both shins", "chest pain on exertion", "numbness in the left hand",
            "knee pain after a fall", "persistent dry cough"]


# Arm name -> (pii mode, extra hyperparameters).
ARMS: dict[str, tuple[str, dict]] = {"off": ("off", {}), "redact": ("redact", {}), "dp": ("off", {"dp_epsilon": 8.0})}


def make_rows(count: int, rng: random.Random) -> list[dict]:
    rows = []
    for n in range(count):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        mrn = f"{rng.randrange(10**6, 10**7)}"
        born = f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(1940, 2005)}"
        kind = rng.randrange(len(SYMPTOMS))
        rows.append({"messages": [
            {"role": "user", "content": f"Summarize referral {n + 1}: {SYMPTOMS[kind]}."},
            {"role": "assistant", "content": f"{name}, MRN {mrn}, born {born}: refer to {SPECIALTIES[kind]}."},
        ]})
    return rows


def run_arm(name: str, pii: str, extra: dict, train: Path, model_dir: Path, steps: int, work: Path) -> dict:
    from tunevault.server.contract.job_spec import JobSpec, resolve_for_files

    job_dir = work / name
    requested = {"max_steps": steps, "batch_size": 8, "eval_every": 0, "checkpoint_every": 0,
                 "eval_accuracy_max_examples": 0, "validation_fraction": 0.1, "canary_repetitions": [1, 4, 16], **extra}
    JobSpec(job_id=name, base_model_dir=model_dir, train_file=train, validation_file=None,
            output_dir=job_dir / "artifacts", checkpoint_dir=job_dir / "checkpoints", pii=pii,
            hyperparameters=resolve_for_files(requested, train)).write(job_dir)
    started = time.perf_counter()
    # Events go to a file as they come, so a long arm can be watched (tail events.jsonl).
    with (job_dir / "worker.log").open("wb") as log, (job_dir / "events.jsonl").open("w") as events:
        done = subprocess.run([sys.executable, "-m", "tunevault.server.worker.train", "--jobs-dir", str(work), name],
                              stdout=events, stderr=log, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}); see {job_dir / 'worker.log'}")
    metrics = json.loads((job_dir / "artifacts" / "metrics.json").read_text())
    audit = metrics["privacy"]["memorization_audit"]
    dp = {k: metrics["result"][k] for k in ("dp_epsilon", "dp_delta", "dp_noise_multiplier") if k in metrics["result"]}
    return {"pii": pii, **extra, **dp, "eval_loss": metrics["result"]["eval_loss"], "base_eval_loss": metrics["result"]["base_eval_loss"],
            "wall_seconds": time.perf_counter() - started, "identifier_leaks": audit["identifier_leaks"],
            "canaries": audit["canaries"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / ".cache" / "models")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memorization.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunevault-memorization-") as scratch:
        work = Path(scratch)
        print(f"working in {work}", flush=True)
        train = work / "referrals.jsonl"
        train.write_text("\n".join(json.dumps(r) for r in make_rows(args.rows, random.Random(11))) + "\n")
        arms = {name: run_arm(name, *ARMS[name], train, args.models_dir / args.model, args.steps, work / "jobs")
                for name in args.arms.split(",")}
    print(f"{'arm':8} {'identifiers repeated':>22} {'eval loss':>10}  canary exposure bits (1x, 4x, 16x): "
          "after training (before training / by what training changed)")
    for name, arm in arms.items():
        leaks = arm["identifier_leaks"]
        exposures = ", ".join(f"{c['exposure_bits']:.2f}{'*' if c['extracted'] else ''} "
                              f"({c['base_exposure_bits']:.2f} / {c['calibrated_exposure_bits']:.2f})"
                              for c in arm["canaries"])
        print(f"{name:8} {leaks['identifiers_reproduced']:>10} of {leaks['identifiers_at_risk']:<9} "
              f"{arm['eval_loss']:>10.4f}  {exposures}   (* extracted)")
    report = {"model": args.model, "rows": args.rows, "steps": args.steps, "arms": arms,
              "note": "CPU timings on a shared 2-core machine are noisy"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
