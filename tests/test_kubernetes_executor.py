"""The Kubernetes Job executor: its manifests against the Kubernetes schemas (kubernetes-validate, strict),
and its kubectl seam driven through a stand-in `kubectl`.

No cluster can be reached from here, so nothing in this file runs a pod: the manifests are checked
against the API schemas of the chart's oldest and the newest Kubernetes, and the stand-in kubectl
only records what it was asked and replays a worker's event lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunevault.server.scheduler.executor import LocalProcessExecutor, StartUnavailable
from tunevault.server.scheduler.kubernetes import (
    QUEUE_LABEL,
    ClusterSettings,
    KubernetesExecutor,
    job_manifest,
    job_name,
    settings_from_env,
)
from tunevault.server.scheduler.launch import worker_argv

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
KUBE_VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())

SETTINGS = ClusterSettings(namespace="ml", image="registry.local/tunevault:0.1.0", data_claim="tv-tunevault-data")
FULL = ClusterSettings(
    namespace="ml", image="registry.local/tunevault:0.1.0", data_claim="tv-tunevault-data",
    models_claim="shared-models", queue_name="gpu-queue", master_key_secret="tv-tunevault",
    co_locate_with={"app.kubernetes.io/instance": "tv", "app.kubernetes.io/component": "server"},
    node_selector={"nvidia.com/gpu.present": "true"},
    tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
)


def _container(manifest: dict) -> dict:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("settings", [SETTINGS, FULL], ids=["plain", "kueue-and-secrets"])
@pytest.mark.parametrize("gpus", [0, 1, 4])
def test_manifests_validate_against_the_kubernetes_schemas(settings: ClusterSettings, gpus: int) -> None:
    manifest = job_manifest(settings, "job_01jx5kq3w2", gpus)
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_one_pod_per_job_with_its_gpus_the_shared_volume_and_the_local_argv() -> None:
    manifest = job_manifest(SETTINGS, "job_01jx5kq3w2", 4)
    spec = manifest["spec"]
    assert (spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (1, 1, 0)
    assert spec["suspend"] is False and QUEUE_LABEL not in manifest["metadata"]["labels"]
    container = _container(manifest)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    # The same command a local worker runs (torchrun, 4 ranks), its stderr appended to worker.log.
    argv = worker_argv("python", "tunevault.server.worker.train", Path("/data/jobs"), "job_01jx5kq3w2", ranks=4)
    assert container["command"][4:] == argv
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "tv-tunevault-data"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert "CUDA_VISIBLE_DEVICES" not in {e["name"] for e in container["env"]}, "the device plugin picks the GPUs"


def test_a_kueue_queue_suspends_the_job_and_labels_it() -> None:
    manifest = job_manifest(FULL, "job_01jx5kq3w2", 1)
    assert manifest["spec"]["suspend"] is True
    assert manifest["metadata"]["labels"][QUEUE_LABEL] == "gpu-queue"
    pod = manifest["spec"]["template"]["spec"]
    affinity = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert affinity["topologyKey"] == "kubernetes.io/hostname", "a ReadWriteOnce volume: the server's node"
    assert pod["tolerations"] and pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_job_names_are_dns_labels() -> None:
    assert job_name("job_01JX5KQ3W2") == "tunevault-job-01jx5kq3w2"


def test_settings_from_the_environment_name_what_is_missing() -> None:
    with pytest.raises(ValueError, match="TUNEVAULT_K8S_IMAGE"):
        settings_from_env({"TUNEVAULT_K8S_NAMESPACE": "ml", "TUNEVAULT_K8S_DATA_CLAIM": "d"})
    settings = settings_from_env({"TUNEVAULT_K8S_NAMESPACE": "ml", "TUNEVAULT_K8S_IMAGE": "i",
                                  "TUNEVAULT_K8S_DATA_CLAIM": "d", "TUNEVAULT_K8S_QUEUE_NAME": "q",
                                  "TUNEVAULT_K8S_CO_LOCATE_WITH": '{"a": "b"}'})
    assert (settings.queue_name, settings.co_locate_with) == ("q", {"a": "b"})
    required = {"TUNEVAULT_K8S_NAMESPACE": "ml", "TUNEVAULT_K8S_IMAGE": "i", "TUNEVAULT_K8S_DATA_CLAIM": "d"}
    with pytest.raises(ValueError, match="TUNEVAULT_K8S_TOLERATIONS is not valid JSON"):
        settings_from_env({**required, "TUNEVAULT_K8S_TOLERATIONS": "[{key: gpu}]"})


STAND_IN_KUBECTL = """#!/bin/sh
# Records each call; `apply` keeps the manifest; `logs` replays a worker's event lines; the rest succeed.
echo "$*" >> "$RECORD/calls"
case " $* " in
  *" apply "*) cat > "$RECORD/applied.json" ;;
  *" logs "*) printf '%s\\n' '{"type": "step", "message": "step 1", "metrics": {"step": 1}}' ;;
esac
"""


def test_the_executor_applies_follows_and_deletes_through_kubectl(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(STAND_IN_KUBECTL)
    kubectl.chmod(0o755)
    monkeypatch.setenv("RECORD", str(tmp_path))
    (tmp_path / "jobs" / "job_1").mkdir(parents=True)
    executor = KubernetesExecutor(FULL, LocalProcessExecutor("python", tmp_path / "jobs"), kubectl=[str(kubectl)])

    worker = executor.start("job_1", devices=(0, 1))
    lines = list(worker.events)
    assert worker.process.wait() == 0
    assert json.loads(lines[0])["type"] == "step"
    applied = json.loads((tmp_path / "applied.json").read_text())
    assert _container(applied)["resources"]["limits"]["nvidia.com/gpu"] == 2
    worker.terminate()
    calls = (tmp_path / "calls").read_text().splitlines()
    # A previous attempt's Job (same name, kept for its TTL) is deleted first, or apply would be a no-op.
    assert calls[0] == "-n ml delete job tunevault-job-1 --ignore-not-found --cascade=foreground --wait=true"
    assert calls[1] == "apply -f -"
    assert calls[2] == "-n ml logs -f --pod-running-timeout=24h job/tunevault-job-1"
    assert calls[3] == "-n ml wait --for=condition=Complete --timeout=120s job/tunevault-job-1"
    assert calls[4].startswith("-n ml delete job tunevault-job-1 --ignore-not-found")
    assert worker.log_path == tmp_path / "jobs" / "job_1" / "worker.log"


def test_an_api_server_that_refuses_apply_is_a_start_to_retry(tmp_path: Path) -> None:
    """A brief API-server outage must not fail every job it meets for good: the scheduler retries
    StartUnavailable with backoff, counting it against max_attempts."""
    kubectl = tmp_path / "kubectl"
    kubectl.write_text('#!/bin/sh\ncase " $* " in *" apply "*) echo "connection refused" >&2; exit 1 ;; esac\n')
    kubectl.chmod(0o755)
    (tmp_path / "jobs" / "job_1").mkdir(parents=True)
    executor = KubernetesExecutor(FULL, LocalProcessExecutor("python", tmp_path / "jobs"), kubectl=[str(kubectl)])
    with pytest.raises(StartUnavailable, match=r"kubectl apply failed \(exit 1\): connection refused"):
        executor.start("job_1", devices=(0,))
