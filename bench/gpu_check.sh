#!/usr/bin/env bash
# Issue 8's GPU check in one command, for a lent H100/H200 whose image has CUDA torch,
# transformers and accelerate but not bitsandbytes, liger-kernel or our own dependencies, and
# no network. Meant to end inside one 10-minute device command (BUDGET_S, below).
#
#   here:   make gpu-carry                  (wheels for Python 3.12 and the tokenizer, into .gpu/)
#   there:  bash bench/gpu_check.sh         (carry: .gpu; figures and logs land in $OUT)
#
# Stages, each logged: versions and the GPU, then bench/train_compare.py on a random-weight
# Llama-3-8B shape at seq 2048 (RUNS runs per arm, alternated; 3 by default), then
# bench/ddp_check.py over every visible GPU (skipped, with a line saying so, below 2 GPUs; not yet
# run on real GPUs: written on a CPU-only machine). RUNS, STEPS, ACCUMULATION, BUDGET_S and
# DDP_BUDGET_S shrink it when a run must fit in less time.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
STEPS=${STEPS:-4}
RUNS=${RUNS:-3}
ACCUMULATION=${ACCUMULATION:-8}
BUDGET_S=${BUDGET_S:-480}
DDP_BUDGET_S=${DDP_BUDGET_S:-90}
started=$SECONDS

# Our wheels go into their own folder ahead of the image's packages; --no-deps keeps the image's
# CUDA torch (a wheel's torch requirement would otherwise pull a CPU build or fail offline).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 - <<'EOF'
import importlib
from importlib.metadata import version
for module, dist in (("torch", "torch"), ("transformers", "transformers"), ("peft", "peft"),
                     ("bitsandbytes", "bitsandbytes"), ("accelerate", "accelerate"), ("liger_kernel", "liger-kernel")):
    try:
        importlib.import_module(module)
        print(dist, version(dist))
    except Exception as exc:  # report, do not stop: the bench says what it cannot run without
        print(dist, "MISSING", type(exc).__name__, exc)
import torch
print("cuda", torch.version.cuda, torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
EOF
} 2>&1 | tee "$OUT/versions.txt"

left=$((BUDGET_S - (SECONDS - started)))
(( left > 60 )) || left=60  # timeout 0 would mean no limit at all
set +e
timeout "$left" python3 bench/train_compare.py --device cuda --model llama3-8b-shape \
  --tokenizer-dir .gpu/tokenizer --max-seq-len 2048 --runs "$RUNS" --steps "$STEPS" --warmup 1 \
  --batch-size 2 --accumulation "$ACCUMULATION" --out "$OUT/train_compare_cuda.json" \
  2>&1 | grep -v "Loading weights" | tee "$OUT/train_compare_cuda.log"
status=${PIPESTATUS[0]}
echo "train_compare exit $status after $((SECONDS - started)) s" | tee -a "$OUT/train_compare_cuda.log"

# Multi-GPU stage: the same tiny job as one process and under torchrun over every visible GPU
# (nccl), as the scheduler launches a job asking for several; prints SKIPPED on a one-GPU box.
left=$((BUDGET_S + DDP_BUDGET_S - (SECONDS - started)))
(( left > 60 )) || left=60
timeout "$left" python3 bench/ddp_check.py --tokenizer-dir .gpu/tokenizer --out "$OUT/ddp_check.json" \
  2>&1 | tee "$OUT/ddp_check.log"
ddp_status=${PIPESTATUS[0]}
echo "ddp_check exit $ddp_status after $((SECONDS - started)) s" | tee -a "$OUT/ddp_check.log"
(( status != 0 )) && exit "$status"
exit "$ddp_status"
