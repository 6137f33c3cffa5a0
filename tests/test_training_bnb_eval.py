"""Regression: an eval pass must not change the LoRA gradients of the 4-bit model (bitsandbytes CPU repacking pitfall).

bitsandbytes 0.50.2 on AVX512-BF16 CPUs repacks NF4 weights the first time a Linear4bit runs in
eval mode under no_grad, after which gradients through it are silently wrong. The trainer pins
the layout (quantized_model.pin_cpu_weight_layout); this test compares the LoRA gradients of one
batch before and after an eval-loss pass and a greedy generation. On CPUs without AVX512-BF16 the
repacking never happens, so the gradients agree either way; the test still checks the pin.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunevault.server.contract.formats import read_chat_jsonl
from tunevault.server.training import quantized_model
from tunevault.server.training.batching import collate
from tunevault.server.training.evaluation import AccuracyExample, eval_loss, exact_match_accuracy
from tunevault.server.training.objective import summed_token_loss
from tunevault.server.training.tokenization import prompt_ids, tokenize_row

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "triage.jsonl"


def _lora_model(model_dir: Path, pin: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    base = quantized_model.load_quantized_base(model_dir, torch.device("cpu"), torch.float32)
    if pin:
        base = quantized_model.prepare_for_training(base, torch.device("cpu"))
    torch.manual_seed(0)
    model = quantized_model.attach_lora(base, r=8, alpha=16, dropout=0.0, target_modules=None)
    # LoRA B starts at zero, which makes A's gradient zero; random B makes both gradients informative.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return model, tokenizer


def _lora_grads(model, batch) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    loss, count = summed_token_loss(model, batch)
    (loss / count).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_gradients_are_the_same_after_an_eval_pass(tiny_models_dir: Path) -> None:
    model, tokenizer = _lora_model(tiny_models_dir / "tiny-llama", pin=True)
    rows = read_chat_jsonl(EXAMPLES)[:6]
    batch = collate([tokenize_row(tokenizer, r) for r in rows[:4]], tokenizer.pad_token_id)

    before = _lora_grads(model, batch)
    eval_loss(model, [batch])
    examples = [AccuracyExample(prompt_ids(tokenizer, r, 256), r.reference_answer, 4) for r in rows[4:]]
    exact_match_accuracy(model, tokenizer, examples)
    after = _lora_grads(model, batch)

    assert before.keys() == after.keys() and len(before) > 0
    assert any(g.abs().sum() > 0 for g in before.values())
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-7, msg=name)

    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(not m.support_avx512bf16_for_cpu for m in layers)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


def test_without_the_pin_bitsandbytes_repacks_on_avx512bf16(tiny_models_dir: Path) -> None:
    """Documents the hazard the pin exists for; only observable on CPUs with AVX512-BF16."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    if not F.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    model, tokenizer = _lora_model(tiny_models_dir / "tiny-llama", pin=False)
    batch = collate([tokenize_row(tokenizer, r) for r in read_chat_jsonl(EXAMPLES)[:2]], tokenizer.pad_token_id)
    eval_loss(model, [batch])
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
