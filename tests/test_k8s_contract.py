"""The runner contract (tests/runner_contract.py) on the Kubernetes backend: the real
`kubernetes` client against the fake API server on loopback (tests/fake_kube_api.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_support import IMAGE, kube_setup
from runner_contract import *  # noqa: F403 -- the contract's tests run here, on this backend
from runner_contract import Backend


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    setup = kube_setup(tmp_path)
    work = tmp_path / "host"
    work.mkdir()
    backend = Backend(
        name="kubernetes",
        runner=setup.runner,
        image=IMAGE,
        data_dir=setup.data_dir,
        leftovers=setup.leftovers,
        work=work,
    )
    yield backend
    for handle in backend.handles:
        setup.runner.cancel(handle)
    setup.kube.stop()
