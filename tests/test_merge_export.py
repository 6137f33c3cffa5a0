"""The merged-model export on the tiny model: plain transformers loads it, and it answers as the 4-bit base + adapter does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny_model import EXAMPLES, train_sharp_adapter

MAX_NEW_TOKENS = 8
# Held-out triage notes (the adapter trains on the first 24 rows), with their system prompt.
PROMPT_ROWS = range(100, 103)

# Runs in a fresh interpreter where importing PEFT or bitsandbytes fails, so the merged model is
# shown to need neither. Saves logits, greedy tokens and the input ids it built for each prompt.
PLAIN_LOAD_PROBE = r"""
import json, sys

# None in sys.modules: `import peft` fails and importlib.util.find_spec says "not installed",
# which is how transformers decides whether a package is there.
for blocked in ("peft", "bitsandbytes"):
    sys.modules[blocked] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

merged_dir, prompts_file, out_file, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(merged_dir)
model = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
result = {"dtype": str(model.dtype), "parameters": sum(p.numel() for p in model.parameters()), "prompts": []}
for messages in json.load(open(prompts_file)):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**ids).logits[0].float()
        out = model.generate(**ids, max_new_tokens=max_new, do_sample=False)
    result["prompts"].append({"input_ids": ids["input_ids"][0].tolist(), "logits": logits,
                              "greedy": out[0, ids["input_ids"].shape[1]:].tolist()})
result["imported"] = sorted(m for m in ("peft", "bitsandbytes") if sys.modules.get(m) is not None)
torch.save(result, out_file)  # not JSON: the logits are a few million floats
"""


def _prompts() -> list[list[dict[str, str]]]:
    rows = (EXAMPLES / "triage.jsonl").read_text().splitlines()
    return [json.loads(rows[i])["messages"][:-1] for i in PROMPT_ROWS]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Path:
    """A real adapter from the worker, trained hard enough (lr 0.05) to move the logits far from the base's."""
    return train_sharp_adapter(tmp_path_factory.mktemp("jobs"), tmp_path_factory.mktemp("data"), tiny_models_dir,
                               "job-merge")


@pytest.fixture(scope="module")
def reference(tiny_models_dir: Path, adapter_dir: Path) -> list[dict[str, Any]]:
    """What the appliance itself answers: the 4-bit base with the adapter applied by PEFT (and without it)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tunevault.server.training import quantized_model

    base_dir = tiny_models_dir / "tiny-llama"
    device = torch.device("cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    base = quantized_model.load_quantized_base(base_dir, device, quantized_model.pick_compute_dtype(device))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    answers = []
    for messages in _prompts():
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            logits = model(**ids).logits[0].float()
            with model.disable_adapter():
                base_logits = model(**ids).logits[0].float()
            out = model.generate(**ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True)
        top2 = torch.stack([s[0].float().topk(2).values for s in out.scores])
        answers.append({
            "input_ids": ids["input_ids"][0].tolist(), "logits": logits, "base_logits": base_logits,
            "greedy": out.sequences[0, ids["input_ids"].shape[1]:].tolist(),
            "min_margin": float((top2[:, 0] - top2[:, 1]).min()),  # closest call among the greedy choices
        })
    return answers


def _load_plainly(merged_dir: Path, work: Path) -> dict[str, Any]:
    prompts, out = work / "prompts.json", work / "probe.pt"
    prompts.write_text(json.dumps(_prompts()))
    run = subprocess.run([sys.executable, "-c", PLAIN_LOAD_PROBE, str(merged_dir), str(prompts), str(out),
                          str(MAX_NEW_TOKENS)], capture_output=True, text=True, timeout=600,
                         env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    return torch.load(out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_merged_model_loads_plainly_and_matches_base_plus_adapter(
        dtype: torch.dtype, tiny_models_dir: Path, adapter_dir: Path, reference: list[dict[str, Any]],
        tmp_path: Path) -> None:
    from tunevault.server.training.merge_export import export_merged

    out_dir = tmp_path / "merged"
    out_dir.mkdir()
    (out_dir / "stale.txt").write_text("from an earlier attempt")
    report = export_merged(tiny_models_dir / "tiny-llama", adapter_dir, out_dir, dtype=dtype)

    # Replaced whole, nothing left half-written beside it, and the report adds up.
    files = {p.name: p.stat().st_size for p in out_dir.iterdir()}
    assert "stale.txt" not in files and [p.name for p in tmp_path.iterdir()] == ["merged"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert (out_dir / "chat_template.jinja").read_bytes() == (tiny_models_dir / "tiny-llama" / "chat_template.jinja").read_bytes()
    assert report.bytes_written == sum(files.values())
    assert report.peak_rss_bytes > files["model.safetensors"] and report.peak_gpu_bytes == 0
    config = json.loads((out_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == str(dtype).removeprefix("torch.")

    probe = _load_plainly(out_dir, tmp_path)
    assert probe["imported"] == [] and probe["dtype"] == str(dtype)
    assert probe["parameters"] == report.parameters

    # 16-bit rounding is the only expected difference: each weight and each activation is rounded
    # to `dtype`, a relative error of u = eps/2 (2^-8 for bfloat16, 2^-11 for float16). Measured:
    # max |logit difference| about 1.2 u x max |logit| for both dtypes on one machine, up to 4.9 u
    # for float16 on another (its kernels round differently); 8 u leaves room for that while staying
    # hundreds of times below what the adapter itself changes (asserted; measured 1.7 vs 3.3e-3 for float16).
    unit = torch.finfo(dtype).eps / 2
    for ours, theirs in zip(probe["prompts"], reference):
        assert ours["input_ids"] == theirs["input_ids"]  # the copied tokenizer and chat template
        scale = float(theirs["logits"].abs().max())
        tolerance = 8 * unit * scale
        difference = float((ours["logits"] - theirs["logits"]).abs().max())
        adapter_effect = float((theirs["logits"] - theirs["base_logits"]).abs().max())
        print(f"{dtype}: max |logit diff| {difference:.2e} (tolerance {tolerance:.2e}, "
              f"{difference / (unit * scale):.2f} u), adapter moves logits by {adapter_effect:.3f}")
        assert difference <= tolerance
        assert adapter_effect > 20 * tolerance  # so a merge that dropped the adapter could not pass
        # Greedy choices are decided by more than twice the tolerance, so equal tokens are owed, not luck.
        assert theirs["min_margin"] > 2 * tolerance
        assert ours["greedy"] == theirs["greedy"]


def test_only_16_bit_dtypes_are_accepted(tmp_path: Path) -> None:
    from tunevault.server.training.merge_export import export_merged

    with pytest.raises(ValueError, match="bfloat16 or float16"):
        export_merged(tmp_path / "base", tmp_path / "adapter", tmp_path / "out", dtype=torch.float32)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, expected", [
    ({"dtype": "float32"}, torch.float16),
    ({"dtype": "bfloat16"}, torch.bfloat16),
    ({"torch_dtype": "bfloat16"}, torch.bfloat16),  # configs written before transformers 5
    ({"dtype": "float16"}, torch.float16),
    ({}, torch.float16),
])
def test_the_default_dtype_keeps_a_bfloat16_base_bfloat16_and_is_float16_otherwise(
        config: dict, expected: torch.dtype, tmp_path: Path) -> None:
    from tunevault.server.training.merge_export import merged_dtype

    (tmp_path / "config.json").write_text(json.dumps(config))
    assert merged_dtype(tmp_path) == expected
