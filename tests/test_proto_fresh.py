"""The checked-in generated code is exactly what the pinned generator makes from the .proto."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

from tests.conftest import REPO


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", REPO / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "the generator wrote nothing"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, REPO / "src" / p, shallow=False)]
    assert not stale, f"regenerate with `make proto`: {stale}"
