"""One whole experiment through the Kubernetes runner, the way the orchestrator runs it: the
seed train.py trains (test profile) in the train Job, its model comes back checked, the real
evaluator scores it in the eval Job from the train job's volume, and the score comes back.
The fake cluster's pods are real local processes, so this is the real train.py and the real
evaluator, behind the real `kubernetes` client; nothing of the run stays on the cluster."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from k8s_support import IMAGE, kube_setup

from evaluator import layout
from evaluator.profiles import get_profile
from evaluator.records import ScoreRecord
from sandbox import specs
from sandbox.limits import Limits


@pytest.mark.slow
def test_a_seed_experiment_trains_scores_and_leaves_nothing(
    tmp_path: Path, test_data_dir: Path, seed_train_py: Path
) -> None:
    setup = kube_setup(tmp_path / "k8s")
    setup.kube.add_claim("overnight-test-data", test_data_dir.parent)
    runner = setup.runner
    runner.cluster = dataclasses.replace(runner.cluster, data_volume="overnight-test-data")
    # Generous caps: this checks the plumbing, and a shared CI machine can be slow to compile.
    limits = Limits.for_profile(get_profile("test"), train_allowance_s=880, eval_cap_s=600)  # caps for a busy machine
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    common: dict = {
        "run_id": "night-0001",
        "image": IMAGE,
        "data_dir": test_data_dir,
        "profile": "test",
        "gpu": None,
        "memory_gb": 4.0,
        "limits": limits,
        "labels": {"overnight.tag": "night"},
    }
    try:
        train = runner.submit(specs.train_job(seed=0, train_py=seed_train_py, **common))
        runner.stream_logs(train, run_dir / "train.log", limits.log_max_bytes)
        trained = runner.wait(train)
        assert trained.exit_code == 0, (run_dir / "train.log").read_text()[-2000:]
        (run_dir / "artifact").mkdir()
        artifact = run_dir / "artifact" / layout.ARTIFACT_NAME
        assert runner.fetch_output(train, layout.ARTIFACT_NAME, artifact, limits.artifact_max_bytes) > 0

        evaluation = runner.submit(specs.eval_job(artifact=artifact, **common))
        runner.cancel(train)
        runner.stream_logs(evaluation, run_dir / "eval.log", limits.log_max_bytes)
        scored = runner.wait(evaluation)
        assert scored.exit_code == 0, (run_dir / "eval.log").read_text()[-2000:]
        runner.fetch_output(evaluation, layout.SCORE_NAME, run_dir / layout.SCORE_NAME, limits.score_max_bytes)
        score = ScoreRecord.model_validate_json((run_dir / layout.SCORE_NAME).read_text())
        assert score.status == "ok" and score.val_bpb is not None and 0 < score.val_bpb < 20
        runner.cancel(evaluation)
        assert setup.leftovers("night-0001") == []
        assert setup.kube.processes == {}
    finally:
        setup.kube.stop()
