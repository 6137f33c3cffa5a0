"""Peak memory of the licence-size job, side by side: plain HF QLoRA, tunevault before, tunevault after.

    PYTHONPATH=src .venv/bin/python bench/memory_bench.py --before-src /tmp/memory-main/src \
        --out bench/results/memory_bench.json

The job is issue 25's: SmolLM2-135M from the model store, about 220 training rows of about 372
tokens, batch 8, a few optimizer steps. Every arm is its own subprocess, so each peak RSS
(ru_maxrss of that child) is clean:

- hf: the plain Hugging Face recipe (bench/train_compare.py arm A: prepare_model_for_kbit_training,
  get_peft_model, transformers.Trainer), as the public QLoRA guides write it.
- before: tunevault's trainer from another source tree (--before-src, e.g. `git archive main src`).
- after: tunevault's trainer from this tree.

Prints peak RSS (GiB), tokens/s and eval loss per arm and writes them as JSON.
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_compare  # noqa: E402  (bench/ is not a package)

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def licence_rows(tokenizer: Any, count: int, target_tokens: int, seed: int) -> list[dict[str, Any]]:
    """Chat rows of about target_tokens tokens each: referral notes of one specialty joined until long enough."""
    source = [json.loads(line) for line in train_compare.EXAMPLES.read_text().splitlines() if line.strip()]
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in source:
        by_label.setdefault(row["messages"][-1]["content"], []).append(row)
    rng = random.Random(seed)
    labels = sorted(by_label)
    rows = []
    for _ in range(count):
        label = rng.choice(labels)
        system = by_label[label][0]["messages"][0]
        notes: list[str] = []
        # Stop one note short of the target so the longest row stays near it.
        while len(tokenizer(" ".join(notes)).input_ids) < target_tokens - 60:
            notes.append(rng.choice(by_label[label])["messages"][-2]["content"])
        rows.append({"messages": [system, {"role": "user", "content": " ".join(notes)},
                                  {"role": "assistant", "content": label}]})
    return rows


def run_arm(name: str, arm: str, src: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / f"result-{name}.json"
    command = [sys.executable, str(ROOT / "bench" / "train_compare.py"), "--arm", arm, "--work", str(work),
               "--result", str(out), "--device", "cpu", "--batch-size", str(args.batch_size), "--accumulation", "1",
               "--max-seq-len", str(args.max_seq_len), "--lora-r", "16", "--learning-rate", "2e-4",
               "--seed", "0", "--steps", str(args.steps), "--warmup", "1", "--model-dir", str(args.model_dir)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - started
    result["src"] = str(src)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", type=Path,
                        default=Path(os.environ.get("TUNEVAULT_TEST_MODELS_DIR", ROOT / ".cache" / "models")))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--before-src", type=Path, required=True, help="src/ of the tree to compare against")
    parser.add_argument("--arms", default="hf,before,after")
    parser.add_argument("--rows", type=int, default=220)
    parser.add_argument("--validation-rows", type=int, default=16)
    parser.add_argument("--target-tokens", type=int, default=372)
    parser.add_argument("--max-seq-len", type=int, default=372)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory_bench.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.model_dir = args.models_dir / args.model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir), local_files_only=True)
    work = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    rows = licence_rows(tokenizer, args.rows + args.validation_rows, args.target_tokens, seed=0)
    train_compare.write_jsonl(work / "train.jsonl", rows[: args.rows])
    train_compare.write_jsonl(work / "validation.jsonl", rows[args.rows:])
    arms = {"hf": ("A", ROOT / "src"), "before": ("B", args.before_src.resolve()), "after": ("B", ROOT / "src")}
    report: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
    for name in args.arms.split(","):
        arm, src = arms[name]
        result = run_arm(name, arm, src, args, work)
        report[name] = result
        print(f"{name:>6}: peak RSS {result['peak_memory_bytes'] / GIB:.2f} GiB, {result['tokens_per_s']:.1f} tokens/s, "
              f"eval loss {result['eval_loss']:.4f}, checkpointing {result['gradient_checkpointing']}", flush=True)
    if "before" in report and "after" in report:
        report["after_over_before"] = report["after"]["peak_memory_bytes"] / report["before"]["peak_memory_bytes"]
        print(f"after / before peak RSS: {report['after_over_before']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
