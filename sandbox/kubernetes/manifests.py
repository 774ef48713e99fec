"""Every Kubernetes object the sandbox creates, built from a JobSpec and the cluster settings by
pure functions (plain dicts in the API's own JSON), so the lockdown reads on one screen:
`pod_security`, `container_security` and `locked_pod` below. Nothing is read from the cluster.

One job is a ConfigMap with its host input files (train.py), a PersistentVolumeClaim for its one
writable folder (size request = output_max_bytes, in `storage_class`), and a Job with one pod:
- no service account token, no service links, DNS pointed at nothing, the deny-all
  NetworkPolicy of the namespace (no traffic in or out);
- non-root (1000:1000), read-only root, all capabilities dropped, no privilege escalation,
  seccomp RuntimeDefault, an optional RuntimeClass (gVisor);
- emptyDir /tmp and HOME with size limits, a memory-backed /dev/shm;
- memory, CPU and ephemeral-storage limits, exactly one GPU (`gpu_resource_name`) when the job has
  a GPU, and NVIDIA_VISIBLE_DEVICES=void when it has none;
- the data parts read-only (subPaths of the data volume), the output volume read-write;
- backoffLimit 0, restartPolicy Never, activeDeadlineSeconds = cap_s + the start allowance
  (the API server's backstop; the host kills at cap_s after the start), ttlSecondsAfterFinished.
An input fetched from another job of the same run (the eval job's model artifact) is that job's
output volume, mounted read-only, that one file only.

Helper pods (the fetch pod that reads a finished job's output volume read-only, the data check
and the data preparation) get the same lockdown; only preparation may reach the network.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from sandbox import specs
from sandbox.kubernetes import names
from sandbox.kubernetes.cluster import PREPARE_IMAGE, Cluster
from sandbox.runner import JobSpec

UID = GID = 1000
TMP_SIZE = "4Gi"
HOME_SIZE = "2Gi"
SHM_SIZE = "2Gi"  # counts against the memory limit (memory-backed)
EPHEMERAL_LIMIT = "7Gi"  # /tmp + HOME + the container's logs: over it the kubelet evicts the pod
HELPER_MEMORY = "512Mi"
FETCH_POD_DEADLINE_S = 3600  # a fetch pod ends by itself even if nobody deletes it
PREPARE_DEADLINE_S = 12 * 3600
PREPARE_MEMORY_GB = 16.0
DENY_ALL_POLICY = "overnight-deny-all"
PREPARE_EGRESS_POLICY = "overnight-prepare-egress"
DATA_MOUNT = specs.DATA
NO_DNS = {"nameservers": ["127.0.0.1"], "searches": [], "options": []}  # lookups fail at once
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class ManifestError(ValueError):
    """A job that cannot be expressed on a cluster; one line saying what to change."""


@dataclass(frozen=True)
class FileInput:
    """A host file handed to the job read-only, carried in the job's ConfigMap (at most 1 MiB)."""

    content: bytes


@dataclass(frozen=True)
class VolumeInput:
    """A file another job of the same run wrote, served read-only from that job's output volume."""

    claim: str
    name: str


Input = FileInput | VolumeInput

# ---------------------------------------------------------------------------------------------
# the lockdown, on one screen


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": GID,
        "fsGroup": GID,  # the output volume is writable by the job's user
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": GID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def locked_pod(
    cluster: Cluster,
    *,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    labels: dict[str, str],
    gpu: bool,
    deadline_s: int | None = None,
    network: bool = False,
) -> dict[str, Any]:
    """The pod spec every sandbox pod gets (and its template metadata)."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
        "hostname": "sandbox",
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": 5,
        "containers": [container],
        "volumes": volumes,
    }
    if not network:
        spec["dnsPolicy"] = "None"
        spec["dnsConfig"] = NO_DNS
    if cluster.runtime_class is not None:
        spec["runtimeClassName"] = cluster.runtime_class
    if gpu:  # GPU nodes are often tainted; the request itself is in the container's limits
        spec["tolerations"] = [{"key": cluster.gpu_resource_name, "operator": "Exists", "effect": "NoSchedule"}]
    if deadline_s is not None:
        spec["activeDeadlineSeconds"] = deadline_s
    return {"metadata": {"labels": labels}, "spec": spec}


def base_volumes() -> list[dict[str, Any]]:
    return [
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
        {"name": "home", "emptyDir": {"sizeLimit": HOME_SIZE}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
    ]


def base_mounts(home: str) -> list[dict[str, Any]]:
    return [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "home", "mountPath": home},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]


def locked_container(
    *,
    name: str,
    image: str,
    command: list[str],
    env: Mapping[str, str],
    mounts: list[dict[str, Any]],
    memory: str,
    cpus: float,
    gpu_resource: str | None,
) -> dict[str, Any]:
    limits: dict[str, str] = {"memory": memory, "cpu": _cpu(cpus), "ephemeral-storage": EPHEMERAL_LIMIT}
    if gpu_resource is not None:
        limits[gpu_resource] = "1"  # exactly one GPU; the device plugin picks which
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent" if "@sha256:" in image else "Always",
        "command": list(command),
        "env": [{"name": key, "value": value} for key, value in sorted(env.items())],
        "workingDir": "/tmp",
        "resources": {"limits": limits, "requests": {"memory": memory, "cpu": _cpu(cpus)}},
        "securityContext": container_security(),
        "volumeMounts": mounts,
        "stdin": False,
        "tty": False,
    }


# ---------------------------------------------------------------------------------------------
# one job: config map, output volume, Job


def labels_of(job: JobSpec, pod: str | None = None) -> dict[str, str]:
    labels = {}
    for key, value in job.labels.items():
        if not names.valid_label_key(key):
            raise ManifestError(f"label key {key!r} is not a valid Kubernetes label key")
        labels[key] = names.label_value(value)
    labels.update(
        {names.LABEL_RUN: names.run_key(job.run_id), names.LABEL_ROLE: job.role, names.LABEL_MANAGED: names.MANAGED_BY}
    )
    if pod is not None:
        labels[names.LABEL_POD] = pod
    return labels


def job_selector(job: JobSpec, pod: str = "job") -> str:
    """Selects the pods of one job (pod="job") or its helper pods (pod="fetch")."""
    return names.selector(
        {names.LABEL_RUN: names.run_key(job.run_id), names.LABEL_ROLE: job.role, names.LABEL_POD: pod}
    )


def _metadata(name: str, namespace: str, labels: dict[str, str], run_id: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels, "annotations": {names.ANNOTATION_RUN_ID: run_id}}


def output_claim_name(job: JobSpec) -> str:
    return names.object_name(job.run_id, job.role, "out")


def job_name(job: JobSpec) -> str:
    return names.object_name(job.run_id, job.role)


def config_map_name(job: JobSpec) -> str:
    return names.object_name(job.run_id, job.role, "in")


def output_claim(job: JobSpec, cluster: Cluster) -> dict[str, Any]:
    """The job's one writable folder: a volume of output_max_bytes (the storage class enforces
    the size; see docs/kubernetes.md for classes that do)."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": _bytes(job.output_max_bytes)}},
        "volumeMode": "Filesystem",
    }
    if cluster.storage_class is not None:
        spec["storageClassName"] = cluster.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(output_claim_name(job), cluster.namespace, labels_of(job), job.run_id),
        "spec": spec,
    }


def _config_key(container_path: str) -> str:
    key = PurePosixPath(container_path).name
    if not _CONFIG_KEY.match(key):
        raise ManifestError(f"input {container_path!r}: its file name must be letters, digits, '-', '_' or '.'")
    return key


def inputs_config_map(job: JobSpec, cluster: Cluster, inputs: Mapping[str, Input]) -> dict[str, Any] | None:
    files = {path: item for path, item in inputs.items() if isinstance(item, FileInput)}
    if not files:
        return None
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for path, item in sorted(files.items()):
        key = _config_key(path)
        if key in data or key in binary:
            raise ManifestError(f"two inputs of {job.run_id} are both named {key!r}")
        try:
            data[key] = item.content.decode("utf-8")
        except UnicodeDecodeError:
            binary[key] = base64.b64encode(item.content).decode("ascii")
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config_map_name(job), cluster.namespace, labels_of(job), job.run_id),
        "immutable": True,
    }
    if data:
        body["data"] = data
    if binary:
        body["binaryData"] = binary
    return body


def _data_mounts(job: JobSpec) -> list[dict[str, Any]]:
    folder = job.data_dir.name
    return [
        {"name": "data", "mountPath": f"{DATA_MOUNT}/{part}", "subPath": f"{folder}/{part}", "readOnly": True}
        for part in job.data_parts
    ]


def _input_mounts(job: JobSpec, inputs: Mapping[str, Input]) -> tuple[list[dict], list[dict]]:
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    claims: dict[str, str] = {}
    for path, item in sorted(inputs.items()):
        if not path.startswith("/"):
            raise ManifestError(f"input path {path!r} must be absolute")
        if isinstance(item, FileInput):
            mounts.append({"name": "inputs", "mountPath": path, "subPath": _config_key(path), "readOnly": True})
            continue
        volume = claims.setdefault(item.claim, f"from-{len(claims)}")
        mounts.append({"name": volume, "mountPath": path, "subPath": item.name, "readOnly": True})
    if any(isinstance(item, FileInput) for item in inputs.values()):
        keys = sorted(_config_key(p) for p, i in inputs.items() if isinstance(i, FileInput))
        volumes.append(
            {
                "name": "inputs",
                "configMap": {
                    "name": config_map_name(job),
                    "defaultMode": 0o444,
                    "items": [{"key": key, "path": key} for key in keys],
                },
            }
        )
    for claim, volume in claims.items():
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    return mounts, volumes


def job_environment(job: JobSpec) -> dict[str, str]:
    env = dict(job.environment)
    if job.gpu is None:
        env["NVIDIA_VISIBLE_DEVICES"] = "void"  # no GPU even with a CUDA image's "all"
    else:
        env.pop("NVIDIA_VISIBLE_DEVICES", None)  # the device plugin names the one GPU it gave
    return env


def deadline_s(job: JobSpec, cluster: Cluster, slack_s: float | None = None) -> int:
    """activeDeadlineSeconds: the host's cap plus the start allowance (scheduling, image pull),
    counted by the API server from the Job's start."""
    return math.ceil(job.cap_s + (cluster.start_timeout_s if slack_s is None else slack_s))


def job_manifest(
    job: JobSpec, cluster: Cluster, inputs: Mapping[str, Input], slack_s: float | None = None
) -> dict[str, Any]:
    if job.image.startswith("sha256:"):
        raise ManifestError(
            "a cluster cannot pull an image by its local content id: give the "
            "registry reference (settings image_registry)"
        )
    input_mounts, input_volumes = _input_mounts(job, inputs)
    home = job.environment.get("HOME", specs.HOME)
    mounts = [*base_mounts(home), *_data_mounts(job), *input_mounts, {"name": "out", "mountPath": job.output_dir}]
    volumes = [
        *base_volumes(),
        {"name": "data", "persistentVolumeClaim": {"claimName": cluster.data_volume, "readOnly": True}},
        *input_volumes,
        {"name": "out", "persistentVolumeClaim": {"claimName": output_claim_name(job)}},
    ]
    container = locked_container(
        name=job.role,
        image=job.image,
        command=list(job.command),
        env=job_environment(job),
        mounts=mounts,
        memory=_memory(job.memory_gb),
        cpus=_cpus_of(job, cluster),
        gpu_resource=cluster.gpu_resource_name if job.gpu is not None else None,
    )
    template = locked_pod(
        cluster, container=container, volumes=volumes, labels=labels_of(job, "job"), gpu=job.gpu is not None
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job_name(job), cluster.namespace, labels_of(job), job.run_id),
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": deadline_s(job, cluster, slack_s),
            "ttlSecondsAfterFinished": cluster.ttl_after_finished_s,
            "template": template,
        },
    }


def job_objects(
    job: JobSpec, cluster: Cluster, inputs: Mapping[str, Input], slack_s: float | None = None
) -> list[dict[str, Any]]:
    """What submit creates for one job, in order: ConfigMap (if any), output volume, Job."""
    config_map = inputs_config_map(job, cluster, inputs)
    return [
        *([config_map] if config_map else []),
        output_claim(job, cluster),
        job_manifest(job, cluster, inputs, slack_s),
    ]


# ---------------------------------------------------------------------------------------------
# helper pods


def fetch_pod_name(job: JobSpec) -> str:
    return names.object_name(job.run_id, job.role, "fetch")


def fetch_pod(job: JobSpec, cluster: Cluster) -> dict[str, Any]:
    """A trusted pod that mounts a finished job's output volume read-only and idles until the
    runner execs the fetch program (sandbox.kubernetes.podfetch) in it."""
    container = locked_container(
        name="fetch",
        image=job.image,
        command=["python", "-I", "-S", "-c", f"import time; time.sleep({FETCH_POD_DEADLINE_S})"],
        env={"HOME": specs.HOME, "PATH": specs.PATH, "NVIDIA_VISIBLE_DEVICES": "void"},
        mounts=[*base_mounts(specs.HOME), {"name": "out", "mountPath": job.output_dir, "readOnly": True}],
        memory=HELPER_MEMORY,
        cpus=1,
        gpu_resource=None,
    )
    pod = locked_pod(
        cluster,
        container=container,
        labels=labels_of(job, "fetch"),
        gpu=False,
        deadline_s=FETCH_POD_DEADLINE_S,
        volumes=[
            *base_volumes(),
            {"name": "out", "persistentVolumeClaim": {"claimName": output_claim_name(job), "readOnly": True}},
        ],
    )
    pod["metadata"] = _metadata(fetch_pod_name(job), cluster.namespace, labels_of(job, "fetch"), job.run_id)
    return {"apiVersion": "v1", "kind": "Pod", **pod}


def network_policy(cluster: Cluster) -> dict[str, Any]:
    """Every pod of the namespace: no traffic in, none out (no rules = nothing allowed)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": DENY_ALL_POLICY,
            "namespace": cluster.namespace,
            "labels": {names.LABEL_MANAGED: names.MANAGED_BY},
        },
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }


def prepare_egress_policy(cluster: Cluster) -> dict[str, Any]:
    """The one exception, while data preparation runs: its pod may download the dataset."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": PREPARE_EGRESS_POLICY,
            "namespace": cluster.namespace,
            "labels": {names.LABEL_MANAGED: names.MANAGED_BY},
        },
        "spec": {
            "podSelector": {"matchLabels": {names.LABEL_POD: "prepare"}},
            "policyTypes": ["Egress"],
            "egress": [{}],
        },
    }


def _data_labels(data_name: str, pod: str) -> dict[str, str]:
    return {
        names.LABEL_RUN: names.run_key(f"data-{data_name}"),
        names.LABEL_ROLE: pod,
        names.LABEL_POD: pod,
        names.LABEL_MANAGED: names.MANAGED_BY,
    }


VERIFY_PROGRAM = """\
import sys
from evaluator.manifest import ManifestError, verify_manifest
try:
    print("manifest_sha256:", verify_manifest(sys.argv[1], sys.argv[2:]), flush=True)
except ManifestError as exc:
    print("error:", exc, flush=True)
    sys.exit(2)
"""


def verify_pod(cluster: Cluster, *, image: str, data_name: str, name: str) -> dict[str, Any]:
    """Checks a data dir on the data volume against its manifest (read-only) and prints
    `manifest_sha256: <hex>`, the data identity runs record."""
    labels = _data_labels(data_name, "verify")
    container = locked_container(
        name="verify",
        image=image,
        command=["python", "-c", VERIFY_PROGRAM, f"{DATA_MOUNT}/{data_name}", "train", "val", "eval"],
        env=specs.environment(None),
        mounts=[*base_mounts(specs.HOME), {"name": "data", "mountPath": DATA_MOUNT, "readOnly": True}],
        memory=HELPER_MEMORY,
        cpus=1,
        gpu_resource=None,
    )
    pod = locked_pod(
        cluster,
        container=container,
        labels=labels,
        gpu=False,
        deadline_s=FETCH_POD_DEADLINE_S,
        volumes=[
            *base_volumes(),
            {"name": "data", "persistentVolumeClaim": {"claimName": cluster.data_volume, "readOnly": True}},
        ],
    )
    pod["metadata"] = {"name": name, "namespace": cluster.namespace, "labels": labels}
    return {"apiVersion": "v1", "kind": "Pod", **pod}


def prepare_job(
    cluster: Cluster, *, profile: str, data_name: str, dataset: str | None, force: bool, name: str
) -> dict[str, Any]:
    """`make prepare` on the cluster: the prepare image writes <data volume>/<data_name>."""
    labels = _data_labels(data_name, "prepare")
    command = [
        "python",
        "-m",
        "evaluator.prepare",
        "--profile",
        profile,
        *(["--dataset", dataset] if dataset else []),
        "--out",
        f"{DATA_MOUNT}/{data_name}",
        *(["--force"] if force else []),
    ]
    env = {**specs.environment(None), "HOME": "/tmp", "OVERNIGHT_CACHE_DIR": f"{DATA_MOUNT}/.cache"}
    container = locked_container(
        name="prepare",
        image=cluster.image(PREPARE_IMAGE),
        command=command,
        env=env,
        mounts=[*base_mounts(specs.HOME), {"name": "data", "mountPath": DATA_MOUNT}],
        memory=_memory(PREPARE_MEMORY_GB),
        cpus=cluster.cpus,
        gpu_resource=None,
    )
    template = locked_pod(
        cluster,
        container=container,
        labels=labels,
        gpu=False,
        network=True,
        volumes=[*base_volumes(), {"name": "data", "persistentVolumeClaim": {"claimName": cluster.data_volume}}],
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": cluster.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": PREPARE_DEADLINE_S,
            "ttlSecondsAfterFinished": cluster.ttl_after_finished_s,
            "template": template,
        },
    }


# ---------------------------------------------------------------------------------------------
# quantities


def _memory(gb: float) -> str:
    return f"{max(1, math.ceil(gb * 1024))}Mi"


def _bytes(n: int) -> str:
    mib = math.ceil(n / 2**20)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{max(1, mib)}Mi"


def _cpu(cpus: float) -> str:
    milli = max(1, round(cpus * 1000))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def _cpus_of(job: JobSpec, cluster: Cluster) -> float:
    if job.cpuset is None:
        return cluster.cpus
    count = 0
    for part in job.cpuset.split(","):
        low, _, high = part.partition("-")
        count += (int(high) - int(low) + 1) if high else 1
    return float(count)
