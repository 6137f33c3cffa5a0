"""Same-run training benchmark: the plain Hugging Face QLoRA recipe (arm A) against tunevault's trainer (arm B).

    .venv/bin/python bench/train_compare.py --device cpu --out bench/results/train_compare_cpu.json
    python bench/train_compare.py --device cuda --model llama3-8b-shape --max-seq-len 2048 ...

Arm A is written as the public QLoRA guides write it: BitsAndBytesConfig(nf4, double quant),
prepare_model_for_kbit_training (which turns gradient checkpointing on), get_peft_model,
transformers.Trainer with a dynamic-padding collator (DataCollatorForSeq2Seq) and AdamW.
Arm B is tunevault's QLoRATrainer (setup + its training loop), as the worker runs it.

No warmup in either arm: HF's warmup spends its first step at lr 0 and tunevault's does not, so
any warmup would make the arms train differently.

Both arms get the same tokenized rows (chat template, loss on the answer only), the same LoRA
config, seed, learning rate and schedule, and the same rows in every optimizer step: A reads
the rows in the order B's plan uses (a sequential sampler instead of the Trainer's shuffle, the
one change to the guides' code), so the eval losses differ only by arithmetic. Each run is its
own subprocess; runs alternate A B A B ... The first --warmup steps of each run are not timed.

Throughput counts non-padding tokens only. MFU per non-padding token uses the issue's formula:
4N + 6 N_lora + 6 L d s_eff FLOPs (N: matmul parameters including lm_head, excluding the input
embedding; s_eff = sum(s_i^2) / sum(s_i) over the rows), over the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "triage.jsonl"
H100_BF16_DENSE = 989e12

# A Llama-3-8B-shaped model with random weights: the GPU throughput subject (no weights needed).
SHAPES = {
    "llama3-8b-shape": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
    ),
}


# Data ------------------------------------------------------------------------------------------

def make_rows(count: int, seed: int, tail: float) -> list[dict[str, Any]]:
    """Chat rows whose notes are 1..many referral notes of one specialty: a long-tailed length mix.

    The number of notes per row is 1 + floor(lognormal(0, tail)): most rows are one or two
    notes, a few are long documents, as in real clinical or legal text.
    """
    source = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in source:
        by_label.setdefault(row["messages"][-1]["content"], []).append(row)
    rng = random.Random(seed)
    labels = sorted(by_label)
    rows = []
    for _ in range(count):
        label = rng.choice(labels)
        notes = 1 + int(rng.lognormvariate(0.0, tail))
        text = " ".join(rng.choice(by_label[label])["messages"][-2]["content"] for _ in range(notes))
        system = by_label[label][0]["messages"][0]
        rows.append({"messages": [system, {"role": "user", "content": text}, {"role": "assistant", "content": label}]})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_shaped_model(shape: str, tokenizer_dir: Path, out: Path, device: str) -> None:
    """Save a random-weight model of a known shape (bf16 safetensors) with a real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    config = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    del model


# Shared by both arms ---------------------------------------------------------------------------

def tokenized(tokenizer: Any, path: Path, max_seq_len: int) -> list[Any]:
    from tunevault.server.contract.formats import read_chat_jsonl
    from tunevault.server.training.tokenization import tokenize_row, truncate_row

    rows = [truncate_row(tokenize_row(tokenizer, r), max_seq_len) for r in read_chat_jsonl(path)]
    return [r for r in rows if r.label_count > 0]  # as the worker does: a row with no answer left teaches nothing


def rows_digest(rows: list[Any], order: list[int]) -> str:
    """Fingerprint of the rows an arm trains on, in order: both arms must report the same one."""
    import hashlib

    return hashlib.sha256(json.dumps([rows[i].input_ids for i in order]).encode()).hexdigest()


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def checkpointing_on(model: Any) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers 5.23, older
        value = getattr(inner, name, None)
        if value is not None:
            return bool(value() if callable(value) else value)
    return False


def shared_eval_loss(model: Any, tokenizer: Any, rows: list[Any]) -> float:
    from tunevault.server.training.batching import eval_batches
    from tunevault.server.training.evaluation import eval_loss

    return eval_loss(model, eval_batches(rows, 8, tokenizer.pad_token_id))


def step_order(rows: list[Any], rows_per_step: int, steps: int, seed: int, batch_size: int) -> list[int]:
    """Row indices in the order arm B's plan consumes them (the first epoch, which the runs stay within)."""
    from tunevault.server.training.batching import epoch_plan

    plan = epoch_plan([len(r.input_ids) for r in rows], batch_size, seed, 0, group_by_length=False)
    order = [i for group in plan for i in group]
    if len(order) < rows_per_step * steps:
        raise SystemExit(f"{len(order)} training rows cannot fill {steps} steps of {rows_per_step} rows; add --rows")
    return order[: rows_per_step * steps]


def timing_summary(step_seconds: list[float], step_tokens: list[int], step_slots: list[int], warmup: int) -> dict[str, Any]:
    timed_s, timed_t, timed_p = step_seconds[warmup:], step_tokens[warmup:], step_slots[warmup:]
    ordered = sorted(timed_s)
    return {
        "steps_timed": len(timed_s),
        "tokens_per_s": sum(timed_t) / sum(timed_s),
        "padding_fraction": 1 - sum(timed_t) / sum(timed_p),
        "step_p50_s": statistics.median(ordered),
        "step_p90_s": ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)],
        "tokens_timed": sum(timed_t),
        "seconds_timed": sum(timed_s),
    }


# Arm A: the plain Hugging Face recipe --------------------------------------------------------------

def run_arm_a(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from torch.utils.data import SequentialSampler
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    cuda = args.device == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir), local_files_only=True)
    rows = tokenized(tokenizer, work / "train.jsonl", args.max_seq_len)
    validation = tokenized(tokenizer, work / "validation.jsonl", args.max_seq_len)
    rows_per_step = args.batch_size * args.accumulation
    order = step_order(rows, rows_per_step, args.steps, args.seed, args.batch_size)
    dataset = [{"input_ids": rows[i].input_ids, "labels": rows[i].labels} for i in order]

    compute = torch.bfloat16 if cuda else torch.float32
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(str(args.model_dir), quantization_config=bnb, local_files_only=True,
                                                 device_map={"": 0} if cuda else None, dtype=torch.float32)
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model)
    torch.manual_seed(args.seed)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)

    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
    seen: list[tuple[int, int]] = []  # (non-padding tokens, positions) per micro-batch, in order

    def counting_collator(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(features)
        seen.append((int(batch["attention_mask"].sum()), batch["input_ids"].numel()))
        return batch

    times: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.started)

    class InOrderTrainer(Trainer):
        def _get_train_sampler(self, *_: Any, **__: Any) -> SequentialSampler:
            return SequentialSampler(self.train_dataset)

    training_args = TrainingArguments(
        output_dir=str(work / "arm-a"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulation, max_steps=args.steps, learning_rate=args.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", logging_steps=1, save_strategy="no", report_to="none", seed=args.seed,
        bf16=cuda, use_cpu=not cuda, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = InOrderTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=counting_collator,
                             callbacks=[StepClock()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    per_step = [seen[i * args.accumulation : (i + 1) * args.accumulation] for i in range(len(times))]
    result = timing_summary(times, [sum(t for t, _ in s) for s in per_step], [sum(p for _, p in s) for s in per_step],
                            args.warmup)
    result.update(
        train_loss=statistics.fmean(losses[-3:]),
        eval_loss=shared_eval_loss(model, tokenizer, validation),
        peak_memory_bytes=peak_memory_bytes(args.device),
        lora_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        gradient_checkpointing=checkpointing_on(model),
        rows_digest=rows_digest(rows, order),
    )
    return result


# Arm B: tunevault's trainer --------------------------------------------------------------------

def run_arm_b(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import io

    from tunevault.server.contract.events import EventWriter
    from tunevault.server.contract.job_spec import JobSpec, resolve_for_files
    from tunevault.server.training.stopping import StopFlag
    from tunevault.server.training.trainer import QLoRATrainer

    hyperparameters = {
        "batch_size": args.batch_size, "gradient_accumulation_steps": args.accumulation, "max_steps": args.steps,
        "learning_rate": args.learning_rate, "lr_scheduler": "cosine", "warmup_ratio": 0.0, "weight_decay": 0.0,
        "max_grad_norm": 1.0, "lora_r": args.lora_r, "lora_alpha": 2 * args.lora_r, "lora_dropout": 0.05,
        "max_seq_len": args.max_seq_len, "seed": args.seed, "eval_every": 0, "checkpoint_every": 0,
    }
    spec = JobSpec(job_id="bench", base_model_dir=args.model_dir, train_file=work / "train.jsonl",
                   validation_file=work / "validation.jsonl", output_dir=work / "arm-b" / "adapter",
                   checkpoint_dir=work / "arm-b" / "checkpoints",
                   hyperparameters=resolve_for_files(hyperparameters, work / "train.jsonl", work / "validation.jsonl"))
    trainer = QLoRATrainer(spec, EventWriter(io.StringIO()), StopFlag())
    trainer.setup()
    rows_per_step = args.batch_size * args.accumulation
    # The same rows as arm A, in the same steps (B's plan is what A was made to follow).
    order = step_order(trainer.data.train, rows_per_step, args.steps, args.seed, args.batch_size)
    trainer.train()
    steps = [h for h in trainer.state.history if h["type"] == "step"]
    result = timing_summary([h["step_seconds"] for h in steps], [h["step_tokens"] for h in steps],
                            [h["step_slots"] for h in steps], args.warmup)
    result.update(
        train_loss=statistics.fmean(h["loss"] for h in steps[-3:]),
        eval_loss=shared_eval_loss(trainer.model, trainer.tokenizer, trainer.data.validation),
        peak_memory_bytes=peak_memory_bytes(args.device),
        lora_parameters=sum(p.numel() for p in trainer.params),
        gradient_checkpointing=checkpointing_on(trainer.model),
        rows_digest=rows_digest(trainer.data.train, order),
        fused_kernels=trainer.fused_kernels,
    )
    return result


# FLOPs and the driver ----------------------------------------------------------------------------

def flops_per_token(model_dir: Path, lora_parameters: int, lengths: list[int], label_fraction: float) -> dict[str, float]:
    config = json.loads((model_dir / "config.json").read_text())
    d, layers, ff, vocab = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"], config["vocab_size"]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim") or d // heads
    per_layer = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2 + 3 * d * ff
    matmul_params = layers * per_layer + d * vocab  # lm_head counts; the input embedding is a lookup
    s_eff = sum(n * n for n in lengths) / sum(lengths)
    return {
        "matmul_parameters": matmul_params,
        "s_eff": s_eff,
        "flops_per_token": 4 * matmul_params + 6 * lora_parameters + 6 * layers * d * s_eff,
        # tunevault projects onto the vocabulary only where a label follows; the formula
        # credits lm_head for every token, so this is the count of what B really executes.
        "flops_per_token_executed_b": 4 * (matmul_params - d * vocab * (1 - label_fraction))
        + 6 * lora_parameters + 6 * layers * d * s_eff,
    }


def run_arm_subprocess(arm: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / f"result-{arm}.json"
    command = [sys.executable, __file__, "--arm", arm, "--work", str(work), "--result", str(out)] + args.passthrough
    started = time.perf_counter()
    subprocess.run(command, check=True)
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - started
    return result


def summarise(runs: dict[str, list[dict[str, Any]]], flops: dict[str, dict[str, float]], args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for arm, results in runs.items():
        tps = statistics.median(r["tokens_per_s"] for r in results)
        mfu = tps * flops[arm]["flops_per_token"] / args.peak_flops if args.device == "cuda" else None
        summary[arm] = {
            "tokens_per_s": tps,
            "padding_fraction": statistics.median(r["padding_fraction"] for r in results),
            "step_p50_s": statistics.median(r["step_p50_s"] for r in results),
            "step_p90_s": statistics.median(r["step_p90_s"] for r in results),
            "peak_memory_bytes": max(r["peak_memory_bytes"] for r in results),
            "train_loss": statistics.median(r["train_loss"] for r in results),
            "eval_loss": statistics.median(r["eval_loss"] for r in results),
            "mfu": mfu,
            "gradient_checkpointing": results[0]["gradient_checkpointing"],
            "fused_kernels": results[0].get("fused_kernels", []),
        }
    a, b = summary["A"], summary["B"]
    return {
        "tokens_per_s_ratio": b["tokens_per_s"] / a["tokens_per_s"],
        "eval_loss_rel_diff": (b["eval_loss"] - a["eval_loss"]) / a["eval_loss"],
        "mfu_b": b["mfu"],
        "mfu_a": a["mfu"],
        "mfu_b_executed": (b["tokens_per_s"] * flops["B"]["flops_per_token_executed_b"] / args.peak_flops
                           if args.device == "cuda" else None),
        "arms": summary,
        "flops": flops,
        "runs": runs,
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{'':28}{'A: HF Trainer':>16}{'B: tunevault':>16}")
    rows = [("non-padding tokens/s", "tokens_per_s", "{:.1f}"), ("padding fraction", "padding_fraction", "{:.1%}"),
            ("step p50 (s)", "step_p50_s", "{:.3f}"), ("step p90 (s)", "step_p90_s", "{:.3f}"),
            ("peak memory (GiB)", "peak_memory_bytes", "{:.2f}"), ("final train loss", "train_loss", "{:.4f}"),
            ("final eval loss", "eval_loss", "{:.4f}"), ("MFU", "mfu", "{:.1%}"),
            ("gradient checkpointing", "gradient_checkpointing", "{}")]
    for label, key, fmt in rows:
        cells = []
        for arm in ("A", "B"):
            value = report["arms"][arm][key]
            if key == "peak_memory_bytes":
                value = value / 2**30
            cells.append("n/a" if value is None else fmt.format(value))
        print(f"{label:28}{cells[0]:>16}{cells[1]:>16}")
    print(f"B/A tokens/s ratio: {report['tokens_per_s_ratio']:.2f}   eval loss (B-A)/A: {report['eval_loss_rel_diff']:+.2%}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model store entry, or " + ", ".join(SHAPES))
    parser.add_argument("--models-dir", type=Path, default=ROOT / ".cache" / "models")
    parser.add_argument("--tokenizer-dir", type=Path, help="tokenizer for a shaped model (default: the default model's)")
    parser.add_argument("--runs", type=int, default=3, help="runs per arm, alternated A B A B ...")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="steps per run left out of the timings")
    parser.add_argument("--rows", type=int, default=200, help="training rows generated")
    parser.add_argument("--tail", type=float, default=0.9, help="sigma of the lognormal notes-per-row draw")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE, help="dense bf16 FLOP/s of the GPU")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_compare.json")
    parser.add_argument("--arm", choices=("A", "B"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, work: Path) -> Path:
    """Write the data, and the model when it is a shape; returns the model directory."""
    rows = make_rows(args.rows + 48, args.seed, args.tail)
    write_jsonl(work / "train.jsonl", rows[:-48])
    write_jsonl(work / "validation.jsonl", rows[-48:])
    if args.model in SHAPES:
        model_dir = work / args.model
        tokenizer_dir = args.tokenizer_dir or args.models_dir / "smollm2-135m-instruct"
        started = time.perf_counter()
        build_shaped_model(args.model, tokenizer_dir, model_dir, args.device)
        print(f"built {args.model} with random weights in {time.perf_counter() - started:.0f} s", flush=True)
        return model_dir
    model_dir = args.models_dir / args.model
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir} is not a model store entry (run `make model`)")
    return model_dir


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.arm:  # inside one run's subprocess
        result = (run_arm_a if args.arm == "A" else run_arm_b)(args, args.work)
        args.result.write_text(json.dumps(result))
        return
    work = Path(tempfile.mkdtemp(prefix="train-compare-"))
    try:
        args.model_dir = prepare(args, work)
        keep = ("--device", "--batch-size", "--accumulation", "--max-seq-len", "--lora-r", "--learning-rate",
                "--seed", "--steps", "--warmup")
        args.passthrough = [x for k in keep for x in (k, str(getattr(args, k[2:].replace("-", "_"))))]
        args.passthrough += ["--model-dir", str(args.model_dir)]
        runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
        for run in range(args.runs):
            for arm in ("A", "B"):
                result = run_arm_subprocess(arm, args, work)
                runs[arm].append(result)
                print(f"run {run + 1} arm {arm}: {result['tokens_per_s']:.1f} tokens/s, eval loss "
                      f"{result['eval_loss']:.4f}, padding {result['padding_fraction']:.1%}", flush=True)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir), local_files_only=True)
        train_rows = tokenized(tokenizer, work / "train.jsonl", args.max_seq_len)
        lengths = [len(r.input_ids) for r in train_rows]
        label_fraction = sum(r.label_count for r in train_rows) / sum(lengths)
        flops = {arm: flops_per_token(args.model_dir, runs[arm][0]["lora_parameters"], lengths, label_fraction)
                 for arm in runs}
        if len({r["rows_digest"] for arm in runs for r in runs[arm]}) != 1:
            raise SystemExit("the arms did not train on the same rows in the same order")
        report = summarise(runs, flops, args)
        report["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "passthrough"}
        print_table(report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
