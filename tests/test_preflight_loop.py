"""The loop and the CPU preflight (issue 13): what a preflight leaves in a run's folder stays there."""

from __future__ import annotations

from pathlib import Path

from controller_fakes import build_loop, make_repo


def test_the_log_of_a_passed_preflight_stays_in_the_run_folder(tmp_path: Path) -> None:
    """A preflight that lets a proposal through leaves its log; the run that follows keeps it
    (the folder is not taken for an interrupted run's and set aside)."""
    from controller.ledger import Ledger

    repo = make_repo(tmp_path / "repo")
    loop, _, runner, _ = build_loop(
        repo, "t1", {1: {"set": {"LR": 0.01}, "desc": "LR 0.01"}}, max_experiments=1, preflight=True
    )

    def preflight(spec):  # type: ignore[no-untyped-def]
        (spec.run_dir / "preflight.log").write_text("preflight: ok\n")
        return None  # passed: go to a slot

    loop.d.preflight = preflight
    loop.run()
    row = Ledger(loop.s.tag_dir).by_number()[1]
    run_dir = Ledger(loop.s.tag_dir).row_run_dir(1, row)
    assert (run_dir / "preflight.log").read_text() == "preflight: ok\n"
    assert (run_dir / "run.json").is_file()
    assert not (loop.s.tag_dir / "interrupted").exists()
