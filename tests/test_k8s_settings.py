"""The Kubernetes backend's settings: defaults that need nothing, and a one-line error naming
the setting for a value the cluster would refuse."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.settings import SettingsError, load_settings
from sandbox.kubernetes.cluster import Cluster


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for key in list(os.environ):
        if key.startswith("OVERNIGHT_"):
            monkeypatch.delenv(key)


def test_the_defaults_are_the_docker_backend_and_a_namespace_of_its_own() -> None:
    settings = load_settings(profile="cpu")
    assert settings.backend == "docker"
    cluster = Cluster.from_settings(settings)
    assert (cluster.namespace, cluster.gpu_resource_name, cluster.data_volume) == (
        "overnight",
        "nvidia.com/gpu",
        "overnight-data",
    )
    assert cluster.storage_class is None and cluster.runtime_class is None
    assert cluster.image("overnight-evaluator:latest") == "overnight-evaluator:latest"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERNIGHT_BACKEND", "kubernetes")
    monkeypatch.setenv("OVERNIGHT_IMAGE_REGISTRY", "registry.example.com:5000/team/")
    monkeypatch.setenv("OVERNIGHT_GPU_RESOURCE_NAME", "nvidia.com/mig-1g.10gb")
    settings = load_settings(profile="cpu")
    cluster = Cluster.from_settings(settings)
    assert settings.backend == "kubernetes"
    assert cluster.image("overnight-evaluator:latest") == "registry.example.com:5000/team/overnight-evaluator:latest"
    assert cluster.gpu_resource_name == "nvidia.com/mig-1g.10gb"


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("backend", "slurm", "--backend / OVERNIGHT_BACKEND: Input should be 'docker' or 'kubernetes'"),
        (
            "kube_namespace",
            "Research_1",
            "--kube-namespace / OVERNIGHT_KUBE_NAMESPACE: 'Research_1' must be a namespace name",
        ),
        ("image_registry", "https://registry.example.com", "no scheme"),
        ("gpu_resource_name", "gpu", "not an extended resource name like nvidia.com/gpu"),
        ("storage_class", "Fast SSD", "must be a Kubernetes name"),
        ("kube_cpus", "0", "--kube-cpus / OVERNIGHT_KUBE_CPUS"),
    ],
)
def test_a_value_the_cluster_would_refuse_is_one_line(setting: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_settings(profile="cpu", **{setting: value})
    assert "\n" not in str(info.value)
