"""Confirmation runs alongside the best, through the real loop (fake runner, scripted agent, real
git): a no-op whose first run landed low because the machine got faster is confirmed against a
run of the best made next to it, and discarded; the evidence is recorded; a controller killed
while that run is in flight resumes it without running anything twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from controller_fakes import FakeRunner, build_loop, check_consistent, make_repo

from controller.ledger import Ledger
from sandbox.result import ExperimentSpec

NO_OP = {"set": {"WIDTH": 65}, "desc": "a change that does not move the score"}
BETTER = {"set": {"LR": 0.01}, "desc": "LR 0.001 -> 0.01"}
CALIBRATION = [0.0, 0.001, -0.001]  # the baseline's three runs: run-to-run noise of 0.001
FASTER = -0.006  # every later run: the machine got faster (6 sigma, a drift seen on a shared VM)


def drift(spec: ExperimentSpec, runs: int) -> float:
    return CALIBRATION[runs - 1] if runs <= len(CALIBRATION) else FASTER + 0.0002 * (runs % 2)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def night(repo: Path, script: dict, experiments: int, runner: FakeRunner):  # type: ignore[no-untyped-def]
    return build_loop(repo, "t1", script, max_experiments=experiments, runner=runner, profile="cpu")


def test_a_drifted_no_op_is_confirmed_alongside_the_best_and_discarded(repo: Path) -> None:
    runner = FakeRunner(shift=drift)
    loop, *_ = night(repo, {1: NO_OP, 2: BETTER}, 2, runner)
    loop.run()
    rows = check_consistent(repo, "t1")
    assert [(r.status, r.runs) for r in rows] == [("keep", 3), ("discard", 1), ("keep", 1)]
    baseline_py = (repo / "runs" / "t1" / f"0000-{rows[0].commit}" / "train.py").read_bytes()
    labels = [(s.labels["overnight.experiment"], s.labels["overnight.replicate"]) for s in runner.specs]
    assert sorted(labels[:3]) == [("0", "0"), ("0", "1"), ("0", "2")] and labels[3:5] == [("1", "0"), ("1", "1")]
    alongside = runner.specs[4]
    assert Path(alongside.train_py).read_bytes() == baseline_py  # the best ran, not the candidate
    assert Path(alongside.run_dir).name == f"0001-{rows[0].commit}-r1"
    assert alongside.run_id == "t1-0001-r1"
    assert alongside.seed not in {s.seed for s in runner.specs[:4]}  # a fresh seed
    record = Ledger(repo / "runs" / "t1").read_record(1, rows[1].commit)
    assert record is not None and record.decision is not None
    assert [r.of_commit is not None for r in record.replicates] == [False, True]
    assert record.replicates[1].of_commit and record.replicates[1].of_commit.startswith(rows[0].commit)
    assert record.decision.alongside and abs(record.decision.delta) < 0.001  # the drift cancelled
    assert record.val_bpb == pytest.approx(record.replicates[0].val_bpb)  # its own runs only
    assert rows[1].delta.endswith("1a1")
    assert rows[2].status == "keep" and rows[2].val_bpb < rows[0].val_bpb  # a real gain is still kept


def test_a_controller_killed_during_the_run_alongside_resumes_it(repo: Path) -> None:
    loop, *_ = night(repo, {1: NO_OP}, 1, FakeRunner(shift=drift, interrupt_at=(1, 1)))
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    ledger = Ledger(repo / "runs" / "t1")
    journal = ledger.read_journal()
    assert journal is not None and [(p.n, p.wanted, list(p.alongside)) for p in journal.pending] == [(1, 2, [1])]
    runner = FakeRunner(shift=lambda spec, runs: FASTER)
    loop, *_ = night(repo, {1: NO_OP}, 1, runner)
    loop.run()
    rows = check_consistent(repo, "t1")
    assert [(r.status, r.runs) for r in rows] == [("keep", 3), ("discard", 1)]
    assert [(s.labels["overnight.experiment"], s.labels["overnight.replicate"]) for s in runner.specs] == [("1", "1")]
    record = ledger.read_record(1, rows[1].commit)
    assert record is not None and [r.k for r in record.replicates] == [0, 1]
