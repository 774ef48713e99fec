"""Shared pieces of the Kubernetes backend tests: a fake cluster (tests/fake_kube_api.py) with a
data volume, and a KubernetesRunner that reaches it through a kubeconfig, as a user's would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fake_kube_api import FakeKube

from sandbox.kubernetes.api import api_client
from sandbox.kubernetes.cluster import Cluster
from sandbox.kubernetes.names import run_key
from sandbox.kubernetes.runner import KubernetesRunner

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = "registry.test/overnight-evaluator:latest"
PREPARE = "registry.test/overnight-prepare:latest"


def stub_data(folder: Path) -> Path:
    """A data dir with the prepared layout (its contents are never read by these jobs)."""
    for part in ("tokenizer", "train", "val", "eval"):
        (folder / part).mkdir(parents=True)
        (folder / part / "placeholder").write_text(part)
    (folder / "manifest.json").write_text("{}")
    return folder


@dataclass
class KubeSetup:
    kube: FakeKube
    runner: KubernetesRunner
    data_dir: Path  # <data volume>/stub
    kubeconfig: Path

    def leftovers(self, run_id: str) -> list[str]:
        return self.kube.leftovers(f"overnight.run={run_key(run_id)}")


def kube_setup(
    tmp_path: Path,
    *,
    gpus: int = 0,
    pull_s: float = 0.0,
    start_timeout_s: float = 20,
    deadline_slack_s: float | None = None,
    **cluster: Any,
) -> KubeSetup:
    kube = FakeKube(
        tmp_path / "cluster",
        gpus=gpus,
        pull_s=pull_s,
        image_paths={"/opt/overnight": REPO_ROOT},
        images={IMAGE, PREPARE},
    ).start()
    data_dir = stub_data(tmp_path / "volume" / "stub")
    kube.add_claim("overnight-data", data_dir.parent)
    kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
    runner = KubernetesRunner(
        api_client(kubeconfig),
        Cluster(start_timeout_s=start_timeout_s, tick_s=0.05, image_registry="registry.test", **cluster),
        deadline_slack_s=deadline_slack_s,
    )
    return KubeSetup(kube, runner, data_dir, kubeconfig)
