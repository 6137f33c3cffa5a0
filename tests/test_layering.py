"""The process boundaries hold as import rules: pyproject's [tool.importlinter] contracts, checked by import-linter.

The gRPC server process never imports training code or torch, training code never imports the API,
the store or the scheduler, and the contract between the processes imports neither side. A second
test plants one forbidden import in a copy of the tree, so a checker that passes everything fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=src.parent, env=env, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_import_contract() -> None:
    result = lint(REPO / "src")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


def test_an_import_of_training_from_the_api_breaks_a_contract(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    # A regular package in the copy, so that the copy alone is analysed even where another tree of the
    # `tunevault` namespace is on the path (an editable install of a checkout beside this one).
    (src / "tunevault" / "__init__.py").touch()
    servicer = src / "tunevault" / "server" / "api" / "servicer.py"
    servicer.write_text(servicer.read_text() + "\nfrom tunevault.server.training import trainer  # noqa\n")
    result = lint(src)
    assert result.returncode != 0
    assert "tunevault.server.api is not allowed to import" in " ".join(result.stdout.split())
