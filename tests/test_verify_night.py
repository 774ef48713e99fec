"""The night ends with its own verification when asked (--verify-runs K, issue 12): the baseline
and the best are run K times each after the last experiment, the lines of `make verify` are said,
and verify.json is written for the morning plot; a stopped night skips it."""

from __future__ import annotations

from pathlib import Path

from controller_fakes import build_loop, make_repo


def test_a_night_with_verify_runs_ends_by_verifying_its_best(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    script = {1: {"set": {"LR": 0.01}, "desc": "LR 0.01"}}
    loop, _, runner, observer = build_loop(repo, "t1", script, max_experiments=1, verify_runs=2)
    loop.run()
    assert (loop.s.tag_dir / "verify.json").is_file()
    verify_specs = [spec for spec in runner.specs if "overnight.verify" in spec.labels]
    assert len(verify_specs) == 4, [str(s.run_dir) for s in runner.specs]  # 2 of the baseline, 2 of the best
    assert any(text.startswith("improvement_bpb: ") for text in observer.messages), observer.messages
    assert any(text.startswith("best_bpb: ") for text in observer.messages), observer.messages


def test_a_night_without_verify_runs_does_not_verify(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    loop, _, runner, _ = build_loop(repo, "t1", {1: {"set": {"LR": 0.01}}}, max_experiments=1)
    loop.run()
    assert not (loop.s.tag_dir / "verify.json").exists()
    assert len(runner.specs) == 2
