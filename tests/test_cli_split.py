"""The thin client and the appliance's commands are apart: the client never imports the server, a client-only
install runs every client command, and the server commands say how to install them."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, RunningServer

CLIENT = REPO / "src" / "tunevault" / "client"
NEEDS_SERVER = "needs the server extra: pip install 'tunevault[server]'"
# The import names of the [server] extra's packages (pyproject.toml), which a thin install lacks.
SERVER_EXTRA = ["torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors", "gguf", "sqlite_utils",
                "prometheus_client", "grpc_health", "grpc_reflection", "psutil", "cryptography", "matplotlib",
                "pyarrow", "spacy", "names", "zipcodes", "opacus"]

# Runs the CLI with some modules made unimportable, as on a machine where they were never installed.
WITHOUT = textwrap.dedent("""
    import importlib.abc, sys
    blocked = sys.argv[1].split(",")

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in blocked):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    from tunevault.client.cli import main
    code = main(sys.argv[2:])
    leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in blocked))
    assert not leaked, leaked
    sys.exit(code)
""")


def without(blocked: list[str], *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "without.py"
    script.write_text(WITHOUT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEVAULT_")}
    return subprocess.run([sys.executable, str(script), ",".join(blocked), *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)


def test_no_client_module_imports_the_server() -> None:
    """Not even lazily inside a function: the seam (server_commands) names the module as a string."""
    offenders = []
    for path in sorted(CLIENT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                          if n == "tunevault.server" or n.startswith("tunevault.server.")]
    assert offenders == []


@pytest.mark.parametrize("blocked", [SERVER_EXTRA, SERVER_EXTRA + ["tunevault.server"]],
                         ids=["server-extra-missing", "server-package-missing"])
def test_a_client_only_install_names_the_server_extra(blocked: list[str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    for args in (["serve", "--data-dir", str(data)], ["audit", "verify", "--data-dir", str(data)],
                 ["models", "import", "--models-dir", str(tmp_path / "models")]):
        run = without(blocked, *args, tmp_path=tmp_path)
        assert run.returncode == 1, run.stderr
        assert NEEDS_SERVER in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not data.exists()
    assert without(blocked, "--help", tmp_path=tmp_path).returncode == 0


@pytest.mark.parametrize("blocked", [SERVER_EXTRA, SERVER_EXTRA + ["tunevault.server"]],
                         ids=["server-extra-missing", "server-package-missing"])
def test_a_client_only_install_talks_to_a_server(blocked: list[str], server: RunningServer, tmp_path: Path) -> None:
    connection = ["--address", server.address, "--token", server.admin_token]
    listed = without(blocked, "models", *connection, tmp_path=tmp_path)
    assert listed.returncode == 0 and "tiny-llama" in listed.stdout, listed.stderr
    status = without(blocked, "status", *connection, tmp_path=tmp_path)
    assert status.returncode == 0 and "SERVING" in status.stdout, status.stderr


def test_serve_help_needs_no_server_dependency(tmp_path: Path) -> None:
    run = without(SERVER_EXTRA, "serve", "--help", tmp_path=tmp_path)
    assert run.returncode == 0 and "--models-dir" in run.stdout, run.stderr


def test_audit_of_a_folder_without_a_database_creates_none(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "tunevault.client.cli", "audit", "verify", "--data-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "no database at" in run.stderr
    assert list(tmp_path.iterdir()) == []
