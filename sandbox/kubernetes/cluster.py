"""What the Kubernetes backend needs to know about the cluster, taken from the controller's
settings once (controller.settings: backend, kube_*, image_registry, storage_class,
gpu_resource_name). Pure data: the manifests are built from a JobSpec and this, nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_NAMESPACE = "overnight"
DEFAULT_DATA_VOLUME = "overnight-data"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
PREPARE_IMAGE = "overnight-prepare:latest"


@dataclass(frozen=True)
class Cluster:
    namespace: str = DEFAULT_NAMESPACE
    image_registry: str | None = None  # e.g. "registry.example.com/team": images are pulled from there
    storage_class: str | None = None  # class of the per-job output volumes (None: the cluster's default)
    gpu_resource_name: str = DEFAULT_GPU_RESOURCE
    data_volume: str = DEFAULT_DATA_VOLUME  # PVC holding prepared data dirs, one folder per data dir name
    runtime_class: str | None = None  # e.g. "gvisor": a RuntimeClass for every sandbox pod
    cpus: float = 8.0  # CPU limit of a job that has no cpuset
    start_timeout_s: float = 600.0  # submit -> container running (scheduling + image pull); past it: error
    ttl_after_finished_s: int = 3600  # finished Jobs go by themselves after a controller crash
    tick_s: float = 0.25  # how often wait() looks at its watchers and the clock

    def image(self, local_name: str) -> str:
        """Where the cluster pulls a local image name from (the name itself without a registry)."""
        if self.image_registry is None or local_name.startswith(f"{self.image_registry}/"):
            return local_name
        return f"{self.image_registry.rstrip('/')}/{local_name}"

    @classmethod
    def from_settings(cls, settings: Any) -> Cluster:
        return cls(
            namespace=settings.kube_namespace,
            image_registry=settings.image_registry,
            storage_class=settings.storage_class,
            gpu_resource_name=settings.gpu_resource_name,
            data_volume=settings.kube_data_volume,
            runtime_class=settings.kube_runtime_class,
            cpus=settings.kube_cpus,
            start_timeout_s=settings.kube_start_timeout_s,
        )
