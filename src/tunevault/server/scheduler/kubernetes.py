"""Workers as Kubernetes Jobs: the batch/v1 manifest of one job's pod, and a thin `kubectl` seam to run it.

The same seam as LocalProcessExecutor (start, start_validation, a WorkerProcess whose stdout is the
event stream), so the scheduler does not know where a worker runs. One pod per job: it requests the
job's GPUs from the device plugin (the pod sees them as its own devices, so no CUDA_VISIBLE_DEVICES),
mounts the appliance's volume at the same path, and runs the argv launch.py builds for a local worker
(torchrun for N > 1 GPUs). With a Kueue LocalQueue named, the Job is created suspended and labelled
`kueue.x-k8s.io/queue-name`; Kueue admits it against its ClusterQueue's GPU quota and unsuspends it.

No Kubernetes client library (no new dependency): the executor pipes the manifest to `kubectl
apply -f -` and follows the pod with `kubectl logs -f`. Nothing here has run against a real cluster;
the manifests are checked against the Kubernetes schemas (kubernetes-validate, strict) in the tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunevault.server.scheduler.executor import LocalProcessExecutor, StartUnavailable, WorkerProcess
from tunevault.server.scheduler.launch import worker_argv

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_ID_LABEL = "tunevault.io/job-id"
UID = 10001  # the image's user (Dockerfile TUNEVAULT_UID)
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
# stderr to the job's log on the shared volume (as a local worker's), stdout stays the event stream.
STDERR_TO_LOG = 'exec "$@" 2>>"$TUNEVAULT_WORKER_LOG"'


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how worker pods run; the Helm chart fills these in when clusterExecutor is enabled."""

    namespace: str
    image: str
    data_claim: str  # the appliance's PVC: datasets, jobs/<id> (spec, checkpoints, artifacts), models
    data_mount: Path = Path("/data")
    models_claim: str | None = None  # a separate, read-only model store, when the chart has one
    models_mount: Path = Path("/models")
    models_sub_path: str = ""
    python: str = "python"
    gpu_resource: str = "nvidia.com/gpu"
    queue_name: str | None = None  # a Kueue LocalQueue: created suspended, admitted by Kueue
    master_key_secret: str | None = None  # the Secret holding the master key: the worker reads sealed data
    master_key_secret_key: str = "master-key"
    # The data volume is ReadWriteOnce (SQLite must not sit on a network file system), so worker pods
    # must share the server's node: a required pod affinity to these labels (empty: no affinity).
    co_locate_with: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    cpu_per_gpu: int = 1
    memory_per_gpu_gi: int = 24
    shm_per_gpu_gi: int = 8
    ttl_seconds_after_finished: int = 3600
    termination_grace_seconds: int = 120  # SIGTERM -> checkpoint -> exit, as for a local worker


def job_name(job_id: str) -> str:
    """A DNS-1123 name for the job's Kubernetes Job ("job_01ab" -> "tunevault-job-01ab")."""
    return "tunevault-" + re.sub(r"[^a-z0-9-]", "-", job_id.lower()).strip("-")[:53]


def job_manifest(settings: ClusterSettings, job_id: str, gpus: int) -> dict[str, Any]:
    """The batch/v1 Job that trains `job_id` on `gpus` GPUs (0: CPU) in one pod."""
    labels = {"app.kubernetes.io/name": "tunevault", "app.kubernetes.io/component": "training-worker",
              JOB_ID_LABEL: job_id}
    if settings.queue_name:
        labels[QUEUE_LABEL] = settings.queue_name
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(job_id), "namespace": settings.namespace, "labels": labels},
        "spec": {
            # tunevault's own retry policy (max_attempts, backoff, resume) decides on a retry, not the Job's.
            "backoffLimit": 0, "completions": 1, "parallelism": 1,
            "suspend": bool(settings.queue_name),  # Kueue unsuspends it once admitted
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": _pod_spec(settings, job_id, gpus)},
        },
    }


def _pod_spec(settings: ClusterSettings, job_id: str, gpus: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # a worker never talks to the API server
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(settings, job_id, gpus)],
        "volumes": _volumes(settings, gpus),
    }
    if settings.co_locate_with:
        spec["affinity"] = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": dict(settings.co_locate_with)},
             "topologyKey": "kubernetes.io/hostname"}]}}
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations and gpus > 0:
        spec["tolerations"] = [dict(t) for t in settings.tolerations]
    return spec


def _container(settings: ClusterSettings, job_id: str, gpus: int) -> dict[str, Any]:
    jobs_dir = settings.data_mount / "jobs"
    argv = worker_argv(settings.python, "tunevault.server.worker.train", jobs_dir, job_id, ranks=max(1, gpus))
    env = {**OFFLINE_ENV, "TUNEVAULT_WORKER_LOG": str(jobs_dir / job_id / "worker.log"), "HOME": "/home/tunevault"}
    if settings.master_key_secret:
        env["TUNEVAULT_MASTER_KEY_FILE"] = "/etc/tunevault/secrets/master-key"
    share = max(1, gpus)
    resources: dict[str, Any] = {
        "requests": {"cpu": str(settings.cpu_per_gpu * share), "memory": f"{settings.memory_per_gpu_gi * share}Gi"},
        "limits": {"memory": f"{settings.memory_per_gpu_gi * share}Gi"},
    }
    if gpus > 0:
        resources["limits"][settings.gpu_resource] = gpus
    mounts = [{"name": "data", "mountPath": str(settings.data_mount)}, {"name": "dshm", "mountPath": "/dev/shm"},
              {"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": "/home/tunevault"}]
    if settings.models_claim:
        mounts.append({"name": "models", "mountPath": str(settings.models_mount), "readOnly": True,
                       **({"subPath": settings.models_sub_path} if settings.models_sub_path else {})})
    if settings.master_key_secret:
        mounts.append({"name": "secrets", "mountPath": "/etc/tunevault/secrets", "readOnly": True})
    return {
        "name": "worker", "image": settings.image, "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", STDERR_TO_LOG, "worker", *argv],
        "workingDir": str(jobs_dir / job_id),
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": resources, "volumeMounts": mounts,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "allowPrivilegeEscalation": False,
                            "privileged": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }


def _volumes(settings: ClusterSettings, gpus: int) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": settings.data_claim}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{settings.shm_per_gpu_gi * max(1, gpus)}Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "8Gi"}},
        {"name": "home", "emptyDir": {"sizeLimit": "8Gi"}},
    ]
    if settings.models_claim:
        claim = {"claimName": settings.models_claim, "readOnly": True}
        volumes.append({"name": "models", "persistentVolumeClaim": claim})
    if settings.master_key_secret:
        items = [{"key": settings.master_key_secret_key, "path": "master-key"}]
        volumes.append({"name": "secrets",
                        "secret": {"secretName": settings.master_key_secret, "defaultMode": 0o440, "items": items}})
    return volumes


@dataclass
class KubernetesWorker(WorkerProcess):
    """A worker pod followed through `kubectl logs -f`; stopping it deletes its Job (the pod gets SIGTERM,
    checkpoints within its grace period, and exits), not just the local follower."""

    kubectl: tuple[str, ...] = ("kubectl",)
    namespace: str = "default"

    def terminate(self) -> None:
        delete_job(self.kubectl, self.namespace, self.job_id, ["--wait=false"])

    def kill(self) -> None:
        delete_job(self.kubectl, self.namespace, self.job_id, ["--wait=false", "--grace-period=0", "--force"])
        super().kill()


def delete_job(kubectl: Sequence[str], namespace: str, job_id: str, flags: list[str]) -> None:
    """Deletes a job's Kubernetes Job and its pod (SIGTERM, then the pod's grace); absent is fine."""
    subprocess.run([*kubectl, "-n", namespace, "delete", "job", job_name(job_id),
                    "--ignore-not-found", "--cascade=foreground", *flags],
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)


class KubernetesExecutor:
    """Trains each job in a pod of its own; validation (no GPU) stays a local process beside the server."""

    def __init__(self, settings: ClusterSettings, local: LocalProcessExecutor,
                 kubectl: Sequence[str] = ("kubectl",)) -> None:
        self.settings = settings
        self.local = local
        self.kubectl = tuple(kubectl)

    def start(self, job_id: str, devices: tuple[int, ...] = ()) -> WorkerProcess:
        """Applies the job's manifest, then follows its pod. In a cluster `devices` is a budget, not
        device indexes: the pod asks for that many GPUs and the device plugin picks which."""
        manifest = job_manifest(self.settings, job_id, gpus=len(devices))
        # A retry, resume or recovery reuses the job's name: the previous attempt's Job (kept for its
        # TTL) would make `apply` a no-op and `logs -f` replay the old pod, so it goes first.
        delete_job(self.kubectl, self.settings.namespace, job_id, ["--wait=true"])
        try:
            subprocess.run([*self.kubectl, "apply", "-f", "-"], input=json.dumps(manifest), text=True,
                           capture_output=True, timeout=120, check=True)
        except subprocess.CalledProcessError as error:
            raise StartUnavailable(f"kubectl apply failed (exit {error.returncode}): "
                                   f"{(error.stderr or '').strip()[-300:]}") from None
        except subprocess.TimeoutExpired:
            raise StartUnavailable("kubectl apply did not answer within 120 s") from None
        job_dir = self.local.jobs_dir / job_id
        with (job_dir / "follow.log").open("ab") as log:
            # The pod may wait in Kueue's queue or for a node; logs -f waits for it to run, then streams
            # its stdout (the events) until it exits; `wait` turns the Job's outcome into an exit status.
            follow = subprocess.Popen(
                ["/bin/sh", "-c", '"$@" logs -f --pod-running-timeout=24h "job/$JOB" && '
                                  '"$@" wait --for=condition=Complete --timeout=120s "job/$JOB"',
                 "follow", *self.kubectl, "-n", self.settings.namespace],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
                env={**os.environ, "JOB": job_name(job_id)}, start_new_session=True,
            )
        # The pod appends its stderr to worker.log on the shared volume, where failure() reads it.
        return KubernetesWorker(job_id=job_id, process=follow, log_path=job_dir / "worker.log",
                                kubectl=self.kubectl, namespace=self.settings.namespace)

    def start_validation(self, job_id: str) -> WorkerProcess:
        return self.local.start_validation(job_id)

    @property
    def jobs_dir(self) -> Path:
        return self.local.jobs_dir


# The chart's clusterExecutor values reach the server as these variables.
ENV_PREFIX = "TUNEVAULT_K8S_"


def settings_from_env(environ: Mapping[str, str]) -> ClusterSettings:
    """ClusterSettings from TUNEVAULT_K8S_* (NAMESPACE, IMAGE and DATA_CLAIM are required)."""
    def get(name: str, default: str = "") -> str:
        return environ.get(ENV_PREFIX + name, default)

    missing = [ENV_PREFIX + n for n in ("NAMESPACE", "IMAGE", "DATA_CLAIM") if not get(n)]
    if missing:
        raise ValueError(f"the kubernetes executor needs {', '.join(missing)}")
    return ClusterSettings(
        namespace=get("NAMESPACE"), image=get("IMAGE"), data_claim=get("DATA_CLAIM"),
        data_mount=Path(get("DATA_MOUNT", "/data")), models_claim=get("MODELS_CLAIM") or None,
        models_mount=Path(get("MODELS_MOUNT", "/models")), models_sub_path=get("MODELS_SUB_PATH"),
        python=get("PYTHON", "python"),
        gpu_resource=get("GPU_RESOURCE", "nvidia.com/gpu"), queue_name=get("QUEUE_NAME") or None,
        master_key_secret=get("MASTER_KEY_SECRET") or None,
        master_key_secret_key=get("MASTER_KEY_SECRET_KEY", "master-key"),
        co_locate_with=_json_setting(environ, "CO_LOCATE_WITH", "{}"),
        node_selector=_json_setting(environ, "NODE_SELECTOR", "{}"),
        tolerations=tuple(_json_setting(environ, "TOLERATIONS", "[]")),
    )


def _json_setting(environ: Mapping[str, str], name: str, default: str) -> Any:
    """A JSON-valued TUNEVAULT_K8S_* setting; a malformed one is named, with where it broke."""
    try:
        return json.loads(environ.get(ENV_PREFIX + name, default))
    except json.JSONDecodeError as error:
        raise ValueError(f"{ENV_PREFIX}{name} is not valid JSON (line {error.lineno} column {error.colno})") from None
