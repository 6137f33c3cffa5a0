"""Packing: rows laid end to end with restarting position ids train exactly like the same rows padded.

The packed batch has no attention mask; transformers reads the restarting position ids as
document boundaries. If attention leaked across a boundary, the later rows' losses (and so the
gradients) would differ from the padded batch's, where each row stands alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunevault.server.contract.formats import read_chat_jsonl
from tunevault.server.training import quantized_model
from tunevault.server.training.batching import (
    BatchStream,
    collate,
    collate_packed,
    pack,
    packed_micro_batches,
)
from tunevault.server.training.objective import model_inputs, summed_token_loss
from tunevault.server.training.tokenization import IGNORE_INDEX, tokenize_row

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "triage.jsonl"


@pytest.fixture(scope="module")
def lora_model(tiny_models_dir: Path):
    from transformers import AutoTokenizer

    model_dir = tiny_models_dir / "tiny-llama"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    base = quantized_model.load_quantized_base(model_dir, torch.device("cpu"), torch.float32)
    base = quantized_model.prepare_for_training(base, torch.device("cpu"))
    torch.manual_seed(0)
    model = quantized_model.attach_lora(base, r=8, alpha=16, dropout=0.0, target_modules=None)
    with torch.no_grad():  # random B so that every LoRA gradient is informative
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return model, tokenizer


@pytest.fixture(scope="module")
def rows(lora_model):
    _, tokenizer = lora_model
    return [tokenize_row(tokenizer, r) for r in read_chat_jsonl(EXAMPLES)[:7]]


def _loss_and_grads(model, batches) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    tokens = sum(b.label_tokens for b in batches)
    total = 0.0
    for batch in batches:
        loss, _ = summed_token_loss(model, batch)
        (loss / tokens).backward()
        total += float(loss.detach())
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return total / tokens, grads


def test_packed_and_padded_batches_give_the_same_loss_and_gradients(lora_model, rows) -> None:
    model, tokenizer = lora_model
    padded = collate(rows, tokenizer.pad_token_id)
    packed = packed_micro_batches(rows, pack_tokens=2 * max(len(r.input_ids) for r in rows), packs_per_batch=8,
                                  pad_token_id=tokenizer.pad_token_id)
    assert len(packed) == 1 and packed[0].input_ids.shape[0] < len(rows)  # rows really share packs
    assert packed[0].label_tokens == padded.label_tokens and packed[0].tokens == padded.tokens

    loss_padded, grads_padded = _loss_and_grads(model, [padded])
    loss_packed, grads_packed = _loss_and_grads(model, packed)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5)
    for name, grad in grads_padded.items():
        assert torch.allclose(grads_packed[name], grad, rtol=1e-4, atol=1e-7), name


def test_no_token_attends_across_a_packed_row_boundary(lora_model, rows) -> None:
    model, tokenizer = lora_model
    first, second = rows[0], rows[1]
    changed = type(first)([t + 1 for t in first.input_ids], first.labels, first.line_number, False)
    model.eval()
    with torch.no_grad():
        logits = [
            model(**model_inputs(collate_packed([[head, second]], tokenizer.pad_token_id), torch.device("cpu"))).logits
            for head in (first, changed)
        ]
    n = len(first.input_ids)
    assert not torch.allclose(logits[0][0, :n], logits[1][0, :n])  # the first row did change
    assert torch.allclose(logits[0][0, n:], logits[1][0, n:], atol=1e-5)  # the second row saw none of it


def test_packed_rows_restart_positions_and_never_predict_the_next_rows_start(rows) -> None:
    batch = collate_packed([rows[:3]], pad_token_id=0)
    starts = [0, len(rows[0].input_ids), len(rows[0].input_ids) + len(rows[1].input_ids)]
    assert all(int(batch.position_ids[0, s]) == 0 for s in starts)
    assert all(int(batch.labels[0, s]) == IGNORE_INDEX for s in starts)
    assert batch.tokens == sum(len(r.input_ids) for r in rows[:3])


def test_packing_fills_bins_evenly_and_keeps_every_row() -> None:
    lengths = [(i * 53) % 97 + 3 for i in range(200)]
    bins = pack(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) <= -(-sum(lengths) // 128) * 1.1 + 1  # close to the lower bound
    fills = [sum(lengths[i] for i in b) for b in bins]
    assert max(fills) - min(fills) <= max(lengths)  # even: little padding when bins share a batch
    # Four rows (519 tokens) need two bins of 512: split 278 + 241, not first-fit's 413 + 106.
    assert sorted(sum([172, 106, 123, 118][i] for i in b) for b in pack([172, 106, 123, 118], 512)) == [241, 278]


def test_short_rows_of_a_large_step_get_a_bin_each_and_small_ones_fill_them() -> None:
    # One DP-bench step: 4,096 classification rows of 18-27 tokens in packs of 27. No two fit
    # together; counting up from the token total, one bin per pass, took minutes per step.
    lengths = [18 + (i * 7) % 10 for i in range(4096)]
    bins = pack(lengths, 27)
    assert sorted(i for b in bins for i in b) == list(range(4096)) and all(len(b) == 1 for b in bins)
    # Three long rows leave room for the three short ones: three bins, not four.
    assert sorted(sorted([20, 20, 20, 5, 5, 5][i] for i in b) for b in pack([20, 20, 20, 5, 5, 5], 27)) == [[5, 20]] * 3


def test_packed_stream_sees_the_same_rows_per_step_and_resumes(rows) -> None:
    stream = BatchStream(rows, 2, seed=1, pad_token_id=0, pack_tokens=512)
    steps = [stream.next_step(2) for _ in range(3)]
    resumed = BatchStream(rows, 2, seed=1, pad_token_id=0, pack_tokens=512, position=2)
    again = resumed.next_step(2)
    assert all((a.input_ids == b.input_ids).all() for a, b in zip(again, steps[1]))
    assert sum(b.label_tokens for b in steps[0]) > 0


def test_fixed_width_pads_packs_to_capacity_and_keeps_the_loss(lora_model, rows) -> None:
    model, tokenizer = lora_model
    capacity = 2 * max(len(r.input_ids) for r in rows)
    varying = packed_micro_batches(rows, capacity, 8, tokenizer.pad_token_id)
    fixed = packed_micro_batches(rows, capacity, 8, tokenizer.pad_token_id, fixed_width=True)
    assert all(b.input_ids.shape[1] == capacity for b in fixed)
    assert [b.tokens for b in fixed] == [b.tokens for b in varying]
    loss_varying, _ = _loss_and_grads(model, varying)
    loss_fixed, _ = _loss_and_grads(model, fixed)
    assert loss_fixed == pytest.approx(loss_varying, rel=1e-5)


def test_union_positions_path_matches_per_row_positions(lora_model, rows, monkeypatch) -> None:
    """Older transformers (5.17, measured on the GPU image) read a 2-D logits_to_keep as one index for
    every row; the 1-D union path used there must give the loss the 2-D path gives."""
    from tunevault.server.training import objective

    model, tokenizer = lora_model
    packed = packed_micro_batches(rows, pack_tokens=2 * max(len(r.input_ids) for r in rows), packs_per_batch=8,
                                  pad_token_id=tokenizer.pad_token_id)
    assert packed[0].input_ids.shape[0] > 1  # rows with different answer positions
    model.eval()
    with torch.no_grad():
        per_row = [float(summed_token_loss(model, b)[0]) for b in packed]
        monkeypatch.setattr(objective, "_keeps_per_row_positions", lambda: False)
        union = [float(summed_token_loss(model, b)[0]) for b in packed]
    assert union == pytest.approx(per_row, rel=1e-6)
