"""Multi-GPU check: one job as one process, then the same job under torchrun over every visible GPU; same curve?

    python3 bench/ddp_check.py --tokenizer-dir .gpu/tokenizer --out "$OUT/ddp_check.json"

Runs the real worker (tunevault.server.worker.train) on a tiny random Llama with the real
tokenizer, exactly as the scheduler starts it (scheduler/launch.py: torchrun --standalone
--nproc-per-node=N for N ranks; nccl on CUDA). Prints each run's step losses and eval loss and
whether they agree within tolerance; exits 0 when they do, 1 when not. With fewer than two GPUs
it prints why it is skipped and exits 0 (a single-GPU box has nothing to check here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HP = {"max_steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 2, "lora_dropout": 0.0,
      "eval_accuracy_max_examples": 0, "learning_rate": 2e-3}
TOLERANCE = 1e-2  # relative; bf16 matmuls on a GPU, summed in another order


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_job(jobs: Path, job_id: str, ranks: int) -> dict[str, Any]:
    from tunevault.server.scheduler.launch import worker_argv

    argv = worker_argv(sys.executable, "tunevault.server.worker.train", jobs, job_id, ranks=ranks)
    started = time.perf_counter()
    with (jobs / job_id / "worker.log").open("ab") as log:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=log, text=True, check=False)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    steps = [e["metrics"]["loss"] for e in events if e["type"] == "step"]
    result = next((e["metrics"] for e in events if e["type"] == "result"), {})
    return {"ranks": ranks, "exit": done.returncode, "step_losses": steps, "eval_loss": result.get("eval_loss"),
            "tokens_per_second": result.get("tokens_per_second"), "wall_s": time.perf_counter() - started}


def agree(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) > 0 and all(abs(x - y) <= TOLERANCE * abs(x) for x, y in zip(a, b))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-dir", type=Path, required=True, help="a model store entry's tokenizer (SmolLM2)")
    parser.add_argument("--out", type=Path, default=Path("ddp_check.json"))
    args = parser.parse_args()
    gpus = gpu_count()
    if gpus < 2:
        print(f"ddp_check: SKIPPED, {gpus} GPU(s) visible; the multi-GPU path needs at least 2")
        return 0
    from tests.tiny_model import make_tiny_model, triage_subset, write_job

    work = Path(tempfile.mkdtemp(prefix="ddp-check-"))
    model = make_tiny_model(work / "models", args.tokenizer_dir)
    train = triage_subset(work / "train.jsonl", rows=80)
    # Accumulation over as many micro-batches as ranks: each rank takes one, the global batch is the same.
    hyperparameters = {**HP, "gradient_accumulation_steps": gpus}
    for job in ("one", "many"):
        write_job(work / "jobs", job, model, train, hyperparameters)
    one = run_job(work / "jobs", "one", 1)
    many = run_job(work / "jobs", "many", gpus)
    ok = one["exit"] == many["exit"] == 0 and agree(one["step_losses"], many["step_losses"])
    ok = ok and agree([one["eval_loss"]], [many["eval_loss"]])
    report = {"gpus": gpus, "one": one, "many": many, "agree": ok, "tolerance": TOLERANCE}
    for run in (one, many):
        print(f"ddp_check: {run['ranks']} rank(s): exit {run['exit']}, eval loss {run['eval_loss']}, "
              f"steps {[round(x, 4) for x in run['step_losses']]}, {run['wall_s']:.0f} s")
    print(f"ddp_check: {'PASS' if ok else 'FAIL'}: {gpus}-rank curve {'matches' if ok else 'differs from'} one process"
          f" (logs in {work / 'jobs'})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
