"""Data on the cluster: `python -m sandbox.kubernetes.prepare` runs the prepare image as a Job
that writes the data volume, then checks it by its manifest hash in a read-only pod, as
`make prepare` does locally (against the fake cluster, whose pods are real local processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from k8s_support import IMAGE, kube_setup

from evaluator.manifest import manifest_sha256
from sandbox.errors import SandboxError
from sandbox.kubernetes.prepare import prepare_on_cluster


def test_prepare_writes_the_data_volume_and_returns_the_manifest_identity(tmp_path: Path) -> None:
    setup = kube_setup(tmp_path)
    said: list[str] = []
    try:
        identity = prepare_on_cluster(
            setup.runner,
            profile="test",
            data_name="test",
            dataset="stdlib",
            image=IMAGE,
            say=said.append,
            log_path=tmp_path / "prepare.log",
        )
        prepared = setup.data_dir.parent / "test"
        assert identity == manifest_sha256(prepared)
        assert "prepared" in (tmp_path / "prepare.log").read_text()
        # the second time the data checks out and is left as it is
        again = prepare_on_cluster(
            setup.runner,
            profile="test",
            data_name="test",
            dataset="stdlib",
            image=IMAGE,
            say=said.append,
            log_path=tmp_path / "prepare2.log",
        )
        assert again == identity and "already on volume" in said[-1]
        assert not (tmp_path / "prepare2.log").exists()
        # nothing of the preparation stays: no Job, no pod, no egress exception
        assert setup.kube.list("jobs") == [] and setup.kube.list("pods") == []
        assert [p["metadata"]["name"] for p in setup.kube.list("networkpolicies")] == ["overnight-deny-all"]
    finally:
        setup.kube.stop()


def test_damaged_data_on_the_volume_is_found_by_its_manifest(tmp_path: Path) -> None:
    setup = kube_setup(tmp_path)
    try:
        prepare_on_cluster(
            setup.runner,
            profile="test",
            data_name="test",
            dataset="stdlib",
            image=IMAGE,
            say=lambda _: None,
            log_path=tmp_path / "p.log",
        )
        shard = min((setup.data_dir.parent / "test" / "val").iterdir())
        shard.write_bytes(shard.read_bytes()[:-2] + b"\0\0")
        with pytest.raises(SandboxError, match="does not match its manifest hash"):
            setup.runner.data_manifest("test", IMAGE)
    finally:
        setup.kube.stop()


def test_data_that_was_never_prepared_says_to_prepare_it(tmp_path: Path) -> None:
    setup = kube_setup(tmp_path)
    try:
        with pytest.raises(SandboxError, match="sandbox.kubernetes.prepare"):
            setup.runner.data_manifest("gpu", IMAGE)
    finally:
        setup.kube.stop()


def test_a_failed_preparation_is_one_line_with_its_last_log_line(tmp_path: Path) -> None:
    setup = kube_setup(tmp_path)
    try:
        with pytest.raises(SandboxError, match="preparation failed .exit 2.*"):
            prepare_on_cluster(
                setup.runner,
                profile="test",
                data_name="test",
                dataset="no-such-dataset",
                image=IMAGE,
                say=lambda _: None,
                log_path=tmp_path / "p.log",
            )
        assert setup.kube.list("jobs") == [] and setup.kube.list("pods") == []
    finally:
        setup.kube.stop()
