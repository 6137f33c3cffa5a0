"""The on-disk cache of 4-bit quantized bases: written once, read back bit-identical, rebuilt when broken, never listed as a model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tunevault.server.errors import InvalidArgument
from tunevault.server.model_store import find_model, list_models
from tunevault.server.training import quantized_model as qm

CPU = torch.device("cpu")


@pytest.fixture
def store(tmp_path: Path, tiny_models_dir: Path) -> Path:
    """A model store of its own holding only tiny-llama (hard links), so each test starts with no cache."""
    target = tmp_path / "models" / "tiny-llama"
    target.mkdir(parents=True)
    for item in (tiny_models_dir / "tiny-llama").iterdir():
        os.link(item, target / item.name)
    return tmp_path / "models"


def _load(store: Path) -> qm.QuantizedBase:
    return qm.load_with_cache(store / "tiny-llama", CPU, torch.float32)


def _fresh(store: Path, monkeypatch: pytest.MonkeyPatch):
    """A model quantized from the original weights, the cache switched off."""
    with monkeypatch.context() as patch:
        patch.setenv(qm.QUANTIZED_CACHE_ENV, "off")
        loaded = _load(store)
    assert not loaded.from_cache and loaded.cache_dir is None
    return loaded.model


def _linear4bit(model) -> dict:
    import bitsandbytes as bnb

    return {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def test_first_load_writes_the_cache_and_the_second_reads_it(store: Path) -> None:
    first = _load(store)
    assert not first.from_cache
    assert first.cache_dir is not None and first.cache_dir.parent == store / qm.QUANTIZED_CACHE_DIR
    assert (first.cache_dir / qm.CACHE_MANIFEST).is_file()
    assert not [p for p in first.cache_dir.parent.iterdir() if p.name.startswith(".")]  # no staging debris

    second = _load(store)
    assert second.from_cache and second.cache_dir == first.cache_dir
    # An adapter trained on the cached base still names the model, not the cache.
    assert second.model.name_or_path == str(store / "tiny-llama")


def test_cached_weights_are_bit_identical_to_fresh_quantization(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = _fresh(store, monkeypatch)
    _load(store)
    cached = _load(store)
    assert cached.from_cache

    fresh_layers, cached_layers = _linear4bit(fresh), _linear4bit(cached.model)
    assert fresh_layers.keys() == cached_layers.keys() and len(fresh_layers) == 14
    for name, layer in fresh_layers.items():
        other = cached_layers[name]
        assert torch.equal(layer.weight.data, other.weight.data), name
        a, b = layer.weight.quant_state, other.weight.quant_state
        assert (a.quant_type, a.blocksize, a.dtype, tuple(a.shape)) == (b.quant_type, b.blocksize, b.dtype, tuple(b.shape))
        assert torch.equal(a.absmax, b.absmax) and torch.equal(a.code, b.code) and torch.equal(a.offset, b.offset), name
        assert a.nested and b.nested
        assert torch.equal(a.state2.absmax, b.state2.absmax) and torch.equal(a.state2.code, b.state2.code), name
        assert a.state2.blocksize == b.state2.blocksize
        assert not getattr(b, "packing_format_for_cpu", False)
    fresh_params = dict(fresh.named_parameters())
    for name, param in cached.model.named_parameters():
        assert param.dtype == fresh_params[name].dtype and torch.equal(param, fresh_params[name]), name

    # Same numbers out of a training-mode forward pass, and the CPU-layout pin still reaches every layer.
    ids = torch.randint(0, fresh.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(fresh.train()(input_ids=ids).logits, cached.model.train()(input_ids=ids).logits)
    assert qm.pin_cpu_weight_layout(cached.model) == 14
    assert not any(m.support_avx512bf16_for_cpu for m in cached_layers.values())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no-manifest"])
def test_a_corrupt_cache_falls_back_and_is_rewritten(store: Path, damage: str) -> None:
    entry = _load(store).cache_dir
    assert entry is not None
    weights = entry / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage":  # the size still matches the manifest: only the load can tell
        weights.write_bytes(b"\xff" * weights.stat().st_size)
    else:
        (entry / qm.CACHE_MANIFEST).unlink()

    again = _load(store)
    assert not again.from_cache and again.cache_dir == entry
    manifest = json.loads((entry / qm.CACHE_MANIFEST).read_text())
    assert manifest["files"]["model.safetensors"] == weights.stat().st_size
    assert _load(store).from_cache


def test_losing_the_race_to_write_keeps_the_winners_entry(store: Path) -> None:
    first = _load(store)
    assert first.cache_dir is not None
    assert not qm._write_cache(first.model, first.cache_dir)  # a second worker finishing later
    assert _load(store).from_cache
    assert [p.name for p in first.cache_dir.parent.iterdir()] == [first.cache_dir.name]


def test_the_key_follows_weights_and_compute_dtype(store: Path) -> None:
    model_dir = store / "tiny-llama"
    key = qm.cache_key(model_dir, CPU, torch.float32)
    assert qm.cache_key(model_dir, CPU, torch.bfloat16) != key
    weights = model_dir / "model.safetensors"
    copy = weights.read_bytes()
    weights.unlink()  # a hard link shared with other tests' store: replace it, do not touch it
    weights.write_bytes(copy)  # a re-imported model: same bytes, new file
    assert qm.cache_key(model_dir, CPU, torch.float32) != key


def test_the_model_store_listing_ignores_the_cache(store: Path) -> None:
    _load(store)
    assert (store / qm.QUANTIZED_CACHE_DIR).is_dir()
    assert [m.name for m in list_models(store)] == ["tiny-llama"]
    with pytest.raises(InvalidArgument):
        find_model(store, qm.QUANTIZED_CACHE_DIR)
