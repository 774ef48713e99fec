"""End to end with the real engine: the seed train.py trains in its container on the `test`
profile, its model is scored in the eval container, and under the step budget the val_bpb
equals the bare runner's exactly."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from sandbox_support import EVALUATOR_IMAGE, leftovers, rid

from evaluator.records import ScoreRecord
from sandbox.bare import run_bare
from sandbox.experiment import run_experiment
from sandbox.result import ExperimentResult, ExperimentSpec

pytestmark = pytest.mark.docker


class ConfigRecorder(threading.Thread):
    """Reads back each container of a run from the engine while it is alive."""

    def __init__(self, client: docker.DockerClient, run_id: str) -> None:
        super().__init__(daemon=True)
        self.client, self.run_id = client, run_id
        self.seen: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for c in self.client.containers.list(
                    filters={"label": [f"overnight.run={self.run_id}", "overnight.part=job"]}
                ):
                    self.seen.setdefault(c.labels["overnight.role"], c.attrs)
            except docker.errors.NotFound:
                pass
            time.sleep(0.05)


@pytest.fixture(scope="module")
def sandboxed(
    images, docker_client, test_data_dir: Path, seed_train_py: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExperimentResult, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    spec = ExperimentSpec(
        run_id=rid("e2e-seed"),
        train_py=seed_train_py,
        run_dir=run_dir,
        profile="test",
        data_dir=test_data_dir,
        image=EVALUATOR_IMAGE,
        seed=0,
    )
    recorder = ConfigRecorder(docker_client, spec.run_id)
    recorder.start()
    try:
        result = run_experiment(spec)
    finally:
        recorder.stop.set()
        recorder.join(5)
    return result, recorder.seen


def test_seed_train_py_trains_and_is_scored_in_containers(sandboxed) -> None:
    result, _ = sandboxed
    assert result.status == "ok", result.reason
    assert result.train_exit_code == 0 and result.eval_exit_code == 0
    assert result.score is not None and result.score.profile == "test"
    assert result.score.probe is not None and result.score.probe.passed
    assert 0.5 < result.val_bpb < 20
    assert result.image_id and result.image_id.startswith("sha256:")
    assert result.memory_kind == "ram" and result.peak_memory_gb > 0.05
    assert result.train_seconds > 0 and result.eval_seconds > 0


def test_run_folder_holds_logs_score_and_the_script_that_ran(sandboxed, seed_train_py: Path) -> None:
    result, _ = sandboxed
    run_dir = result.run_dir
    assert "submitted: /out/model.pt2" in (run_dir / "train.log").read_text()
    assert (run_dir / "eval.log").exists()
    assert ScoreRecord.model_validate_json((run_dir / "score.json").read_text()) == result.score
    assert (run_dir / "train.py").read_bytes() == seed_train_py.read_bytes()
    assert (run_dir / "model.pt2").stat().st_size > 0
    assert "detail.log" not in (run_dir / "eval.log").read_text()  # eval.log: fixed lines only
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "eval-detail.log",
        "eval.log",
        "model.pt2",
        "rowloss.bin",
        "score.json",
        "train.log",
        "train.py",
    ]


def test_both_containers_were_locked_down_and_removed(sandboxed, docker_client) -> None:
    _, seen = sandboxed
    assert set(seen) == {"train", "eval"}
    for role, attrs in seen.items():
        host = attrs["HostConfig"]
        assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True, role
        assert host["CapDrop"] == ["ALL"] and attrs["Config"]["User"] == "1000:1000", role
    train_targets = {m["Destination"] for m in seen["train"]["Mounts"]}
    eval_targets = {m["Destination"] for m in seen["eval"]["Mounts"]}
    assert "/data/val" not in train_targets and "/data/eval" not in train_targets
    assert "/work/train.py" in train_targets
    assert "/data/train" not in eval_targets and "/work/train.py" not in eval_targets
    assert "/data/val" not in eval_targets and "/data/eval" in eval_targets  # the private sample only
    assert "/out" not in eval_targets
    assert leftovers(docker_client, seen["train"]["Config"]["Labels"]["overnight.run"]) == []


def test_val_bpb_equals_the_bare_runners_exactly(
    sandboxed, test_data_dir: Path, seed_train_py: Path, tmp_path: Path
) -> None:
    result, _ = sandboxed
    bare = run_bare(
        ExperimentSpec(
            run_id=rid("e2e-bare"),
            train_py=seed_train_py,
            run_dir=tmp_path / "bare",
            profile="test",
            data_dir=test_data_dir,
            seed=0,
        )
    )
    assert bare.status == "ok", bare.reason
    assert result.val_bpb == bare.val_bpb  # bit for bit: same steps, same seed, same torch
    assert result.score.tokens == bare.score.tokens and result.score.bytes == bare.score.bytes
