"""The bare runner trains the seed and scores it as plain processes; a train.py that never
submits gets a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluator.unigram import unigram_bpb
from sandbox.bare import run_bare
from sandbox.result import ExperimentResult, ExperimentSpec


@pytest.fixture(scope="session")
def bare_seed_run(test_data_dir: Path, seed_train_py: Path, tmp_path_factory) -> ExperimentResult:
    run_dir = tmp_path_factory.mktemp("bare-seed")
    spec = ExperimentSpec(
        run_id="bare-seed", train_py=seed_train_py, run_dir=run_dir, profile="test", data_dir=test_data_dir
    )
    return run_bare(spec)


@pytest.mark.slow  # trains and scores the seed (about a minute on 2 busy cores)
def test_seed_trains_and_scores_below_a_unigram_model(bare_seed_run, test_data_dir):
    assert bare_seed_run.status == "ok", bare_seed_run.reason
    score = bare_seed_run.score
    assert score.probe is not None and score.probe.passed
    assert score.tokens > 0 and score.bytes > score.tokens
    unigram = unigram_bpb(test_data_dir, "test")
    assert bare_seed_run.val_bpb < unigram - 0.2, (bare_seed_run.val_bpb, unigram)
    log = (bare_seed_run.run_dir / "train.log").read_text()
    assert "num_steps:        12" in log and "submitted:" in log


def test_train_py_without_submit_is_a_clear_crash(tmp_path, test_data_dir):
    script = tmp_path / "train.py"
    script.write_text("print('training, but forgetting to submit')\n")
    spec = ExperimentSpec(
        run_id="no-submit", train_py=script, run_dir=tmp_path / "run", profile="test", data_dir=test_data_dir
    )
    result = run_bare(spec)
    assert result.status == "crash"
    assert "without calling submit(model)" in result.reason
    assert result.score is None and result.eval_exit_code is None


def test_crashing_train_py_reports_its_exit_code(tmp_path, test_data_dir):
    script = tmp_path / "train.py"
    script.write_text("raise SystemExit(7)\n")
    spec = ExperimentSpec(
        run_id="exit-7", train_py=script, run_dir=tmp_path / "run", profile="test", data_dir=test_data_dir
    )
    result = run_bare(spec)
    assert result.status == "crash" and "code 7" in result.reason
