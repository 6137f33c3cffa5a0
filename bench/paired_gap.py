"""The eval-loss gap between two adapters on the same rows, with a paired bootstrap interval.

    .venv/bin/python bench/paired_gap.py VALIDATION.jsonl ADAPTER_A ADAPTER_B [--model DIR]

A gap of a few points between two jobs means little until one knows how much it moves with the
eval rows drawn: on this repository's DP task, 95% of 100-row draws put a +10.6% gap anywhere
from +4.3% to +17.5%. Scoring both adapters row by row on the same rows and resampling the rows
(not each adapter's losses on their own) gives the interval of the gap itself; dp_bench calls
this after its two jobs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / ".cache" / "models" / "smollm2-135m-instruct"


@dataclass(frozen=True)
class PairedGap:
    rows: int
    loss_a: float  # mean loss per answer token, as the jobs' eval_loss
    loss_b: float
    gap: float  # loss_a / loss_b - 1
    low: float  # the gap's bootstrap interval
    high: float
    level: float
    resamples: int


def adapter_row_losses(model_dir: Path, adapter_dir: Path, validation: Path) -> tuple[list[float], list[int]]:
    """Each validation row's summed answer-token loss under the adapter, and its answer-token count.

    Loads and prepares the model as the worker does (NF4 base, fused kernels, pinned CPU weight
    layout), so the token-weighted mean equals the job's own eval_loss on the same file.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tunevault.server.contract.formats import read_dataset
    from tunevault.server.training import quantized_model
    from tunevault.server.training.evaluation import row_losses as score_rows
    from tunevault.server.training.fused_kernels import apply_fused_kernels, model_type
    from tunevault.server.training.tokenization import tokenize_example

    device = quantized_model.pick_device()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    rows = [tokenize_example(tokenizer, row) for row in read_dataset(validation).rows]
    apply_fused_kernels(model_type(model_dir), device)
    base = quantized_model.load_with_cache(model_dir, device, quantized_model.pick_compute_dtype(device)).model
    model = PeftModel.from_pretrained(quantized_model.prepare_for_training(base, device, False), str(adapter_dir),
                                      is_trainable=False)
    quantized_model.pin_cpu_weight_layout(model)
    model.eval()
    with torch.no_grad():
        return score_rows(model, rows, tokenizer.pad_token_id), [row.label_count for row in rows]


def paired_gap(losses_a: list[float], losses_b: list[float], tokens: list[int], *, resamples: int = 2000,
               level: float = 0.95, seed: int = 0) -> PairedGap:
    """The relative gap in mean loss per token (A against B) and its percentile bootstrap interval over rows."""
    n = len(tokens)
    if not n or len(losses_a) != n or len(losses_b) != n:
        raise ValueError("need one loss per row from each adapter, on at least one row")
    rng = random.Random(seed)
    gaps = []
    for _ in range(resamples):
        drawn = [rng.randrange(n) for _ in range(n)]
        gaps.append(sum(losses_a[i] for i in drawn) / sum(losses_b[i] for i in drawn) - 1)
    gaps.sort()
    tail = int(resamples * (1 - level) / 2)
    count = sum(tokens)
    return PairedGap(n, sum(losses_a) / count, sum(losses_b) / count, sum(losses_a) / sum(losses_b) - 1,
                     gaps[tail], gaps[resamples - 1 - tail], level, resamples)


def compare_adapters(model_dir: Path, adapter_a: Path, adapter_b: Path, validation: Path) -> PairedGap:
    losses_a, tokens = adapter_row_losses(model_dir, adapter_a, validation)
    losses_b, _ = adapter_row_losses(model_dir, adapter_b, validation)
    return paired_gap(losses_a, losses_b, tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("validation", type=Path, help="JSONL rows both adapters are scored on")
    parser.add_argument("adapter_a", type=Path)
    parser.add_argument("adapter_b", type=Path, help="the reference: the gap is A's loss over B's, less 1")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="base model directory")
    args = parser.parse_args(argv)
    print(json.dumps(asdict(compare_adapters(args.model, args.adapter_a, args.adapter_b, args.validation)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
