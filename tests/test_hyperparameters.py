"""Hyperparameters: validation at the API edge, "auto" resolution, and staying importable without torch."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import fields

import pytest

from tests.conftest import REPO
from tunevault.server.contract import hyperparameters as hp


def test_empty_and_auto_values_validate_to_all_auto() -> None:
    assert hp.validate({}) == hp.Hyperparameters()
    assert hp.validate(None) == hp.Hyperparameters()
    assert hp.validate({"learning_rate": "auto", "epochs": None}) == hp.Hyperparameters()


def test_good_values_are_kept_and_whole_floats_become_ints() -> None:
    parsed = hp.validate({"epochs": 3.0, "learning_rate": 1, "lora_target_modules": ["q_proj", "v_proj"],
                          "lr_scheduler": "linear", "max_grad_norm": 0})
    assert parsed.epochs == 3 and isinstance(parsed.epochs, int)
    assert parsed.learning_rate == 1.0 and isinstance(parsed.learning_rate, float)
    assert parsed.lora_target_modules == ("q_proj", "v_proj")
    assert parsed.lr_scheduler == "linear" and parsed.max_grad_norm == 0.0


@pytest.mark.parametrize("raw, field", [
    ({"learnin_rate": 1e-3}, "learnin_rate"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": 1.5}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"learning_rate": float("inf")}, "learning_rate"),
    ({"learning_rate": "0.001"}, "learning_rate"),
    ({"epochs": 2.5}, "epochs"),
    ({"epochs": -1}, "epochs"),
    ({"batch_size": True}, "batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 100_000}, "batch_size"),
    ({"lora_r": 512}, "lora_r"),
    ({"lora_dropout": -0.1}, "lora_dropout"),
    ({"max_seq_len": 8}, "max_seq_len"),
    ({"max_seq_len": 10**6}, "max_seq_len"),
    ({"lr_scheduler": "exponential"}, "lr_scheduler"),
    ({"lora_target_modules": "q_proj"}, "lora_target_modules"),
    ({"lora_target_modules": []}, "lora_target_modules"),
    ({"lora_target_modules": ["q proj"]}, "lora_target_modules"),
    ({"validation_fraction": 0}, "validation_fraction"),
    ({"seed": -5}, "seed"),
])
def test_bad_values_name_their_field(raw: dict, field: str) -> None:
    with pytest.raises(hp.HyperparameterError) as caught:
        hp.validate(raw)
    assert caught.value.field == field
    assert field in str(caught.value) and caught.value.reason


def test_resolve_fills_every_field_but_the_model_and_device_dependent_ones() -> None:
    resolved = hp.resolve(hp.validate({}), train_rows=360)
    missing = {k for k, v in resolved.to_dict().items() if v is None}
    assert missing == {"lora_target_modules", "max_seq_len", "gradient_checkpointing"}
    assert 1e-3 <= resolved.learning_rate <= 2e-3
    assert resolved.lora_alpha == 2 * resolved.lora_r


def test_resolve_keeps_explicit_values() -> None:
    explicit = {"epochs": 2, "max_steps": 7, "learning_rate": 1e-4, "batch_size": 3, "eval_every": 2,
                "checkpoint_every": 5, "seed": 9, "max_seq_len": 64, "validation_fraction": 0.25}
    resolved = hp.resolve(hp.validate(explicit), train_rows=100, longest_row_tokens=5000)
    assert {k: getattr(resolved, k) for k in explicit} == explicit


def test_auto_steps_give_small_datasets_several_epochs_within_the_example_budget() -> None:
    small = hp.resolve(hp.Hyperparameters(), train_rows=40, has_validation_file=True)
    tiny = hp.resolve(hp.Hyperparameters(), train_rows=10, has_validation_file=True)
    large = hp.resolve(hp.Hyperparameters(), train_rows=100_000, has_validation_file=True)
    assert small.epochs > 1 and large.epochs == 1
    assert small.max_steps * small.batch_size >= hp.AUTO_EXAMPLE_BUDGET - small.batch_size
    assert large.max_steps == math.ceil(hp.AUTO_EXAMPLE_BUDGET / large.batch_size)
    assert tiny.epochs == hp.AUTO_MAX_EPOCHS and tiny.max_steps == math.ceil(10 * 10 / 8)
    assert hp.resolve(hp.Hyperparameters(), train_rows=100_000, example_budget=8000).max_steps == 1000


def test_the_triage_demo_gets_32_steps_with_or_without_a_validation_file() -> None:
    with_file = hp.resolve(hp.Hyperparameters(), train_rows=360, has_validation_file=True)
    split = hp.resolve(hp.Hyperparameters(), train_rows=360)
    assert with_file.max_steps == split.max_steps == 32
    assert with_file.eval_every == 16 and with_file.checkpoint_every == 8


def test_explicit_epochs_are_trained_in_full() -> None:
    resolved = hp.resolve(hp.validate({"epochs": 3, "batch_size": 4}), train_rows=100, has_validation_file=True)
    assert resolved.max_steps == 3 * 25


def test_auto_max_seq_len_follows_the_longest_row_up_to_the_cap() -> None:
    assert hp.resolve(hp.Hyperparameters(), train_rows=10, longest_row_tokens=153).max_seq_len == 153
    assert hp.resolve(hp.Hyperparameters(), train_rows=10, longest_row_tokens=9000).max_seq_len == hp.AUTO_MAX_SEQ_LEN_CAP


def test_resolve_is_idempotent() -> None:
    once = hp.resolve(hp.validate({}), train_rows=360, longest_row_tokens=150)
    twice = hp.resolve(hp.validate(once.to_dict()), train_rows=360, longest_row_tokens=150)
    assert once == twice


def test_validation_split_size_leaves_rows_on_both_sides() -> None:
    assert hp.validation_split_size(1, 0.5) == 0
    assert hp.validation_split_size(2, 0.01) == 1
    assert hp.validation_split_size(3, 0.5) == 2
    assert hp.validation_split_size(300, hp.auto_validation_fraction(300)) == 50


def test_importing_hyperparameters_does_not_import_torch() -> None:
    probe = "import sys, tunevault.server.contract.hyperparameters as h; h.resolve(h.validate({}), 10); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_export_merged_is_off_by_default_and_passes_through_resolve() -> None:
    assert hp.validate({}).export_merged is False
    assert hp.validate({"export_merged": "auto"}).export_merged is False
    assert hp.resolve(hp.validate({}), train_rows=100).export_merged is False
    on = hp.resolve(hp.validate({"export_merged": True}), train_rows=100)
    assert on.export_merged is True
    assert hp.resolve(hp.validate(on.to_dict()), train_rows=100) == on


@pytest.mark.parametrize("value", ["true", "false", 1, 0, 1.0, ["yes"]])
def test_export_merged_takes_only_true_or_false(value: object) -> None:
    with pytest.raises(hp.HyperparameterError) as caught:
        hp.validate({"export_merged": value})
    assert caught.value.field == "export_merged"
    assert "true or false" in caught.value.reason and type(value).__name__ in caught.value.reason
    assert repr(value) not in caught.value.reason  # named by its type: the value may be private text


def test_every_setting_has_the_proto_field_of_the_same_name_and_kind() -> None:
    from tunevault.v1 import tunevault_pb2 as pb

    descriptor = pb.Hyperparameters.DESCRIPTOR
    assert [f.name for f in descriptor.fields] == list(hp.RULES)
    assert [f.name for f in fields(hp.ResolvedHyperparameters)] == list(hp.RULES)
    scalar = {descriptor.fields[0].TYPE_INT32: int, descriptor.fields[0].TYPE_INT64: int,
              descriptor.fields[0].TYPE_DOUBLE: float, descriptor.fields[0].TYPE_STRING: str,
              descriptor.fields[0].TYPE_BOOL: bool}
    for field in descriptor.fields:
        rule = hp.RULES[field.name]
        if field.is_repeated:
            assert rule.kind in (tuple, list), field.name
        else:
            assert scalar[field.type] is rule.kind, field.name


def test_every_range_the_proto_states_is_the_range_validation_enforces() -> None:
    text = (REPO / "proto" / "tunevault" / "v1" / "tunevault.proto").read_text()
    block = text[text.index("message Hyperparameters {"):]
    block = block[: block.index("\n}")]
    stated = {}
    comment = ""
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("//"):
            comment += " " + line
            continue
        field = re.match(r"(?:optional |repeated )?\w+ (\w+) = \d+;", line)
        if field:
            found = re.search(r"in ([\[(])([-0-9.e+]+), ([-0-9.e+]+)\]", comment)
            if found:
                stated[field.group(1)] = (found.group(1) == "(", float(found.group(2)), float(found.group(3)))
            comment = ""
    numeric = {name for name, rule in hp.RULES.items() if rule.kind in (int, float)}
    assert set(stated) == numeric, numeric ^ set(stated)
    for name, (low_open, low, high) in stated.items():
        rule = hp.RULES[name]
        assert (rule.low_open, rule.low, rule.high) == (low_open, low, high), name
