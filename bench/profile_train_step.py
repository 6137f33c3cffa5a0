"""Where a training step's GPU time goes: torch.profiler over a few steps of tunevault's trainer.

    python bench/profile_train_step.py --model llama3-8b-shape --tokenizer-dir DIR --max-seq-len 2048

Builds the same random-weight model and data as bench/train_compare.py, runs the trainer for
--steps steps and profiles the last two; prints the CUDA kernels by total time, grouped by the
kind of work (4-bit dequantization, matmuls, attention, elementwise), and writes a Chrome trace.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_compare  # noqa: E402  (bench/ is not a package)

KINDS = {  # kernel-name fragments -> the kind of work, first match wins
    "dequant": "4-bit dequantize", "kDequantize": "4-bit dequantize",
    "gemm": "matmul", "sm90_xmma": "matmul", "cutlass": "matmul", "nvjet": "matmul",
    "fmha": "attention", "flash": "attention", "attention": "attention", "efficient": "attention",
    "softmax": "softmax / cross-entropy", "nll": "softmax / cross-entropy",
    "_rms_norm": "fused (liger)", "_swiglu": "fused (liger)", "_rope": "fused (liger)",
}


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for fragment, kind in KINDS.items() if fragment.lower() in lowered), "elementwise / other")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama3-8b-shape")
    parser.add_argument("--tokenizer-dir", type=Path, required=True)
    parser.add_argument("--max-seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--accumulation", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fixed-width", action="store_true", help="pad packs to max_seq_len")
    parser.add_argument("--no-cudnn-sdpa", action="store_true", help="SDPA without cuDNN's per-shape plans")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from tunevault.server.contract.events import EventWriter
    from tunevault.server.contract.job_spec import JobSpec, resolve_for_files
    from tunevault.server.training.stopping import StopFlag
    from tunevault.server.training.trainer import QLoRATrainer

    work = Path(tempfile.mkdtemp(prefix="profile-"))
    rows = train_compare.make_rows(args.batch_size * args.accumulation * args.steps + 48, 0, 1.6)
    train_compare.write_jsonl(work / "train.jsonl", rows[:-48])
    train_compare.write_jsonl(work / "validation.jsonl", rows[-48:])
    model_dir = work / args.model
    train_compare.build_shaped_model(args.model, args.tokenizer_dir, model_dir, "cuda")
    hp = {"batch_size": args.batch_size, "gradient_accumulation_steps": args.accumulation, "max_steps": args.steps,
          "learning_rate": 2e-4, "warmup_ratio": 0.0, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
          "max_seq_len": args.max_seq_len, "eval_every": 0, "checkpoint_every": 0, "seed": 0}
    spec = JobSpec(job_id="profile", base_model_dir=model_dir, train_file=work / "train.jsonl",
                   validation_file=work / "validation.jsonl", output_dir=work / "out", checkpoint_dir=work / "ckpt",
                   hyperparameters=resolve_for_files(hp, work / "train.jsonl", work / "validation.jsonl"))

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                 schedule=schedule(wait=0, warmup=args.steps - 3, active=2, repeat=1)) as prof:

        class SteppingEvents(EventWriter):
            def emit(self, event_type, message="", metrics=None, **extra):  # type: ignore[override]
                if event_type == "step":
                    prof.step()
                return super().emit(event_type, message, metrics, **extra)

        trainer = QLoRATrainer(spec, SteppingEvents(io.StringIO()), StopFlag())
        trainer.setup()
        trainer.stream.fixed_width = args.fixed_width
        if args.no_cudnn_sdpa:
            torch.backends.cuda.enable_cudnn_sdp(False)
        trainer.train()
    steps = [h for h in trainer.state.history if h["type"] == "step"]
    print(vars(args))
    print("step seconds:", [round(h["step_seconds"], 3) for h in steps], "tokens:", [h["step_tokens"] for h in steps])
    # Kernels only (CUDA self time), so the profiler's own step markers are not counted.
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0 and not e.key.startswith("ProfilerStep")]
    kernels = [e for e in events if not e.key.startswith("aten::") and "::" not in e.key.split("(")[0][:12]]
    total = sum(e.self_device_time_total for e in kernels)
    by_kind: dict[str, float] = {}
    for e in kernels:
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + e.self_device_time_total
    wall = sum(h["step_seconds"] for h in steps[-2:])
    print(f"profiled steps: {wall:.3f} s wall, GPU kernels busy {total / 1e6:.3f} s ({total / 1e6 / wall:.0%})")
    for kind, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:28} {t / 1e6:8.3f} s  {t / total:6.1%}")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))
    print("max memory allocated GiB:", torch.cuda.max_memory_allocated() / 2**30)


if __name__ == "__main__":
    main()
