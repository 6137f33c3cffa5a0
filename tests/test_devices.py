"""Device discovery without torch: --gpus / TUNEVAULT_GPUS, else nvidia-smi -L; and what a worker is given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunevault.server.admin.serve import max_concurrent_jobs
from tunevault.server.scheduler.devices import configured_gpus, parse_gpus, visible_devices
from tunevault.server.scheduler.executor import LocalProcessExecutor
from tunevault.server.scheduler.launch import worker_argv

NVIDIA_SMI_L = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)
GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-cccc)
"""


def test_parse_gpus() -> None:
    assert parse_gpus("1,0") == (0, 1)
    assert parse_gpus("none") == parse_gpus("") == ()
    for bad in ("0,0", "-1", "gpu0"):
        with pytest.raises(ValueError, match="--gpus"):
            parse_gpus(bad)


@pytest.fixture
def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An `nvidia-smi` on PATH that prints what the real one prints for `-L` on a 3-GPU box."""
    binary = tmp_path / "bin" / "nvidia-smi"
    binary.parent.mkdir()
    binary.write_text(f"#!/bin/sh\ncat <<'END'\n{NVIDIA_SMI_L}END\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{binary.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("TUNEVAULT_GPUS", raising=False)


def test_the_flag_wins_then_the_environment_then_nvidia_smi(fake_nvidia_smi: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert configured_gpus(None) == (0, 1, 2)
    assert configured_gpus("auto") == (0, 1, 2)
    monkeypatch.setenv("TUNEVAULT_GPUS", "none")
    assert configured_gpus(None) == ()
    assert configured_gpus("1") == (1,)


def test_a_failing_nvidia_smi_is_an_error_not_a_cpu_box(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A driver not loaded yet must not turn a GPU box into a CPU box that fails every GPU job."""
    binary = tmp_path / "nvidia-smi"
    binary.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate' >&2\nexit 9\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("TUNEVAULT_GPUS", raising=False)
    with pytest.raises(ValueError, match="nvidia-smi is installed but failed.*--gpus"):
        configured_gpus(None)
    assert configured_gpus("none") == ()


def test_without_nvidia_smi_a_box_has_no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TUNEVAULT_GPUS", raising=False)
    assert configured_gpus(None) == ()


def test_one_worker_per_gpu_unless_told() -> None:
    assert max_concurrent_jobs(None, (0, 1, 2, 3)) == 4
    assert max_concurrent_jobs(None, ()) == 1
    assert max_concurrent_jobs(2, (0, 1, 2, 3)) == 2


def test_a_worker_sees_only_its_devices_and_a_cpu_box_sets_nothing(tmp_path: Path) -> None:
    gpu_box = LocalProcessExecutor("python", tmp_path, gpu_box=True)
    assert gpu_box.device_env((2, 3)) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert gpu_box.device_env(()) == {"CUDA_VISIBLE_DEVICES": ""}  # a CPU job on a GPU box sees no GPU
    assert LocalProcessExecutor("python", tmp_path).device_env(()) == {}
    assert visible_devices((0,)) == "0"


def test_a_multi_gpu_job_runs_one_rank_per_device() -> None:
    argv = worker_argv("python", "tunevault.server.worker.train", Path("/jobs"), "job_1", ranks=2)
    assert argv[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


@pytest.mark.parametrize(("flags", "named"), [(["--gpus", "0,x"], "--gpus"),
                                              (["--executor", "kubernetes"], "TUNEVAULT_K8S_NAMESPACE")])
def test_serve_refuses_a_bad_device_or_cluster_setting_naming_it(tmp_path: Path, flags: list[str], named: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEVAULT_K8S_")}
    run = subprocess.run([sys.executable, "-m", "tunevault.client.cli", "serve", "--data-dir", str(tmp_path), *flags],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and named in run.stderr and "Traceback" not in run.stderr, run.stderr
