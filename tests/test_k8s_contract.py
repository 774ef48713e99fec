"""The runner contract (tests/runner_contract.py) on the Kubernetes backend: the real
`kubernetes` client against the fake API server on loopback (tests/fake_kube_api.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_kube_api import FakeKube
from runner_contract import *  # noqa: F403  (the contract's tests run here, on this backend)
from runner_contract import Backend

from sandbox.kubernetes.api import api_client
from sandbox.kubernetes.cluster import Cluster
from sandbox.kubernetes.names import run_key
from sandbox.kubernetes.runner import KubernetesRunner

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = "registry.test/overnight-evaluator:latest"


def stub_data(folder: Path) -> Path:
    """A data dir with the prepared layout (its contents are never read by these jobs)."""
    for part in ("tokenizer", "train", "val"):
        (folder / part).mkdir(parents=True)
        (folder / part / "placeholder").write_text(part)
    (folder / "manifest.json").write_text("{}")
    return folder


@pytest.fixture
def fake_kube(tmp_path: Path) -> Iterator[FakeKube]:
    kube = FakeKube(tmp_path / "cluster", image_paths={"/opt/overnight": REPO_ROOT},
                    images={IMAGE}).start()
    yield kube
    kube.stop()


@pytest.fixture
def backend(fake_kube: FakeKube, tmp_path: Path) -> Iterator[Backend]:
    data_dir = stub_data(tmp_path / "volume" / "stub")
    fake_kube.add_claim("overnight-data", data_dir.parent)
    runner = KubernetesRunner(api_client(fake_kube.kubeconfig(tmp_path / "kubeconfig")),
                              Cluster(start_timeout_s=20, tick_s=0.05))
    work = tmp_path / "host"
    work.mkdir()
    backend = Backend(name="kubernetes", runner=runner, image=IMAGE, data_dir=data_dir,
                      leftovers=lambda rid: fake_kube.leftovers(f"overnight.run={run_key(rid)}"),
                      work=work)
    yield backend
    for handle in backend.handles:
        runner.cancel(handle)
