"""Chunked cross-entropy (long answers): the same loss and LoRA gradients as the logits computed at once, on the 4-bit tiny model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.test_training_bnb_eval import EXAMPLES, _lora_grads, _lora_model
from tunevault.server.contract.formats import read_chat_jsonl
from tunevault.server.training import objective
from tunevault.server.training.batching import collate
from tunevault.server.training.tokenization import tokenize_row


def _long_answer_batch(tokenizer):
    """Rows whose answer repeats the note: tens of labelled tokens each, several chunks in all."""
    rows = [replace(r, messages=(*r.messages[:-1], replace(r.messages[-1], content=r.messages[-2].content)))
            for r in read_chat_jsonl(EXAMPLES)[:4]]
    return collate([tokenize_row(tokenizer, r) for r in rows], tokenizer.pad_token_id)


def test_chunked_loss_and_gradients_equal_the_whole_logits(tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = _lora_model(tiny_models_dir / "tiny-llama", pin=True)
    batch = _long_answer_batch(tokenizer)
    assert batch.label_tokens > 3 * 16

    monkeypatch.setattr(objective, "CHUNKED_LOGITS_BYTES", 2**62)  # never chunk
    whole = _lora_grads(model, batch)
    whole_loss = float(objective.summed_token_loss(model, batch)[0])
    monkeypatch.setattr(objective, "CHUNKED_LOGITS_BYTES", 0)  # always chunk, in chunks of 16 positions
    monkeypatch.setattr(objective, "CE_CHUNK_POSITIONS", 16)
    assert objective._chunkable(model, batch)
    chunked = _lora_grads(model, batch)
    chunked_loss = float(objective.summed_token_loss(model, batch)[0])

    assert chunked_loss == pytest.approx(whole_loss, rel=1e-5)
    assert chunked.keys() == whole.keys() and any(g.abs().sum() > 0 for g in whole.values())
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-4, atol=1e-7, msg=name)
    # The head is back in place: the next forward returns logits again.
    assert model.get_base_model().get_output_embeddings().weight.shape[0] == len(tokenizer)
