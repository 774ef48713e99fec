"""`python -m controller ...`: the commands a person types, their output and their one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from controller_fakes import (
    MARKER_ENV,
    REPO_ROOT,
    FakeRunner,
    build_loop,
    check_consistent,
    cli_with_fakes,
    make_data_dir,
    make_repo,
)

from controller import git as g
from controller.cli import main, resume_command
from controller.ledger import Ledger
from controller.replay import ReplayError, describe, replay
from controller.settings import load_settings

SCRIPT = {
    1: {"set": {"LR": 0.01}, "desc": "LR up"},
    2: {"set": {"LR": 1.0}, "desc": "LR way up"},
    3: {"append": "CRASH = 1", "desc": "crashes"},
}


@pytest.fixture
def night(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repo with a finished 4-experiment night under runs/t1 (fake agent and runner)."""
    for name in list(os.environ):
        if name.startswith("OVERNIGHT_") or name == "ANTHROPIC_API_KEY":
            monkeypatch.delenv(name)
    repo = make_repo(tmp_path / "repo")
    loop, *_ = build_loop(repo, "t1", SCRIPT, max_experiments=3, max_fix_attempts=0)
    loop.run()
    monkeypatch.chdir(repo)
    return repo


def test_status_prints_the_ledger_as_a_table(night: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "t1: 4 experiments, 2 keep, 1 discard, 1 crash" in out
    rows = Ledger(night / "runs" / "t1").rows()
    for row in rows:
        assert row.commit in out and row.description in out
    assert f"{rows[1].val_bpb:.6f} *" in out  # the best is marked


def test_logs_by_number_and_by_commit(night: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["logs", "3"]) == 0
    out = capsys.readouterr().out
    assert "t1 #3" in out and "crash" in out and "RuntimeError: boom" in out and "eval.log" in out
    commit = Ledger(night / "runs" / "t1").rows()[1].commit
    assert main(["logs", commit, "--which", "train"]) == 0
    out = capsys.readouterr().out
    assert "LR up" in out and "done" in out and "eval.log" not in out


def test_report_writes_progress_png(night: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report"]) == 0
    png = night / "runs" / "t1" / "progress.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "4 experiments (2 kept, 1 discarded, 1 failed)" in capsys.readouterr().out


def test_errors_are_one_line_without_traceback(night: Path, capsys: pytest.CaptureFixture) -> None:
    cases = [
        (["overnight", "--profile", "tpu"], "error: bad setting --profile / OVERNIGHT_PROFILE: unknown profile 'tpu'"),
        (
            ["overnight", "--tag", "t2", "--data-dir", "nowhere"],
            "error: no prepared data in nowhere: run `make prepare",
        ),
        (["logs", "9"], "error: tag t1 has experiments 0..3; there is no 9"),
        (["logs", "abcdef0"], "error: no run of commit abcdef0"),
        (["status", "--tag", "nope"], "error: no ledger for tag nope"),
        (["replay", "abcdef0"], "error: no run of commit abcdef0"),
        (["overnight", "--tag", "t1", "--profile", "cpu"], "error: tag t1 was started with profile test, not cpu"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(expected), (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err


def test_status_without_any_run_says_how_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 2
    assert "start a night with `make overnight`" in capsys.readouterr().err


def test_resume_command_pins_the_tag_and_keeps_the_flags() -> None:
    s = load_settings(tag="nov23", profile="test")
    assert resume_command(s, ["--profile", "test", "--hours", "8"]) == [
        "make overnight TAG=nov23 ARGS='--profile test --hours 8'",
        "python -m controller overnight --tag nov23 --profile test --hours 8",
    ]
    assert resume_command(s, ["--tag=old"]) == [
        "make overnight TAG=nov23",
        "python -m controller overnight --tag nov23",
    ]


def test_overnight_command_runs_a_night_and_draws_the_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for name in list(os.environ):
        if name.startswith("OVERNIGHT_") or name == "ANTHROPIC_API_KEY":
            monkeypatch.delenv(name)
    repo = make_repo(tmp_path / "repo")
    make_data_dir(repo / "data" / "test")
    monkeypatch.chdir(repo)
    code = cli_with_fakes(["overnight", "--tag", "t5", "--profile", "test", "--max-experiments", "2"], SCRIPT)
    out = capsys.readouterr().out
    assert code == 0
    assert "overnight t5: program default, profile test (chosen explicitly), data data/test" in out
    assert "agent: search, the offline optuna agent (no ANTHROPIC_API_KEY set" in out
    assert "reached --max-experiments: 3 experiments, best val_bpb" in out
    assert "#1   " in out and "LR up" in out
    assert len(check_consistent(repo, "t5")) == 3
    assert (repo / "runs" / "t5" / "progress.png").stat().st_size > 0
    log = (repo / "runs" / "t5" / "controller.log.jsonl").read_text().splitlines()
    import json

    events = [json.loads(line)["event"] for line in log]
    assert events[0] == "night_start" and events.count("experiment") == 3 and events[-1] == "night_end"


def _night_in_a_subprocess(repo: Path, tmp_path: Path, run_seconds: float) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / "started"
    code = (
        "import sys; sys.path.insert(0, 'tests'); from controller_fakes import cli_with_fakes; "
        f"sys.exit(cli_with_fakes(['overnight', '--tag', 't6', '--profile', 'test', '--repo', {str(repo)!r}, "
        f"'--runs-dir', {str(repo / 'runs')!r}, '--worktrees-dir', {str(repo / 'worktrees')!r}, "
        f"'--data-dir', {str(repo / 'data' / 'test')!r}], {{}}, {run_seconds}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_") and k != "ANTHROPIC_API_KEY"}
    env.update({MARKER_ENV: str(marker), "PYTHONPATH": str(REPO_ROOT)})
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, marker


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_ctrl_c_finishes_the_experiment_in_flight_and_says_how_to_resume(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    make_data_dir(repo / "data" / "test")
    proc, marker = _night_in_a_subprocess(repo, tmp_path, run_seconds=1.5)
    _wait_for(Path(f"{marker}-1"), proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "finishing the experiment in flight" in out
    assert "stopped by Ctrl-C: 2 experiments" in out
    assert "make overnight TAG=t6" in out and "python -m controller overnight --tag t6 --profile test" in out
    assert len(check_consistent(repo, "t6")) == 2


def test_a_second_ctrl_c_stops_at_once_and_the_run_is_redone_on_resume(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    make_data_dir(repo / "data" / "test")
    proc, marker = _night_in_a_subprocess(repo, tmp_path, run_seconds=30)
    _wait_for(Path(f"{marker}-0"), proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "stopped; the experiment in flight will be redone on resume" in out
    assert Ledger(repo / "runs" / "t6").rows() == []
    loop, _, runner, _ = build_loop(repo, "t6", {}, max_experiments=0, data_dir=repo / "data" / "test")
    loop.run()
    assert [s.run_id for s in runner.specs] == ["t6-0000"] and len(check_consistent(repo, "t6")) == 1


def test_sigterm_stops_at_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    make_data_dir(repo / "data" / "test")
    proc, marker = _night_in_a_subprocess(repo, tmp_path, run_seconds=30)
    _wait_for(Path(f"{marker}-0"), proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Resume with:" in out


# -- replay with the fake runner (the real containers are in test_controller_e2e.py) -------


def test_replay_of_a_discarded_commit_gives_the_same_score(night: Path) -> None:
    settings = load_settings(repo=night, runs_dir=night / "runs")
    discarded = Ledger(night / "runs" / "t1").rows()[2]
    assert discarded.status == "discard"
    runner = FakeRunner()
    outcome = replay(settings, discarded.commit, runner, image_id="sha256:fake")
    assert outcome.step_budget and outcome.equal is True and outcome.ok
    assert outcome.replay.replayed_val_bpb == outcome.record.val_bpb
    spec = runner.specs[0]
    assert spec.run_dir.parent == (night / "runs" / "t1" / "replays").resolve()
    assert spec.profile == "test" and spec.seed == 0 and spec.data_dir == (night / "data").resolve()
    assert b"LR = 1.0" in (spec.run_dir / "train.py").read_bytes()
    assert (spec.run_dir / "replay.json").exists()
    text = "\n".join(describe(outcome))
    assert "recorded  val_bpb" in text and "same score: the step budget makes the run deterministic" in text


def test_replay_refuses_another_image_or_other_data(night: Path) -> None:
    settings = load_settings(repo=night, runs_dir=night / "runs")
    commit = Ledger(night / "runs" / "t1").rows()[1].commit
    with pytest.raises(ReplayError, match=r"ran in sha256:fake: rebuild or retag that image"):
        replay(settings, commit, FakeRunner(), image_id="sha256:other")
    manifest = night / "data" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"toy"', '"other"'))
    with pytest.raises(ReplayError, match="is not the data .* ran on"):
        replay(settings, commit, FakeRunner(), image_id="sha256:fake")


def test_replay_under_a_time_budget_reports_the_difference_and_the_noise(night: Path) -> None:
    settings = load_settings(repo=night, runs_dir=night / "runs")
    rows = Ledger(night / "runs" / "t1").rows()
    ledger = Ledger(night / "runs" / "t1")
    for n in range(len(rows)):  # pretend the night ran on the time-budgeted cpu profile
        record = ledger.read_record(n, g.experiment_refs(night, "t1")[n])
        ledger.write_record(record.model_copy(update={"profile": "cpu"}))

    class NoisyRunner(FakeRunner):
        bump = 0.0

        def __call__(self, spec):
            result = super().__call__(spec)
            NoisyRunner.bump += 0.001
            result.score.val_bpb += NoisyRunner.bump
            return result

    first = replay(settings, rows[2].commit, NoisyRunner(), image_id="sha256:fake")
    assert not first.step_budget and first.equal is None and first.noise is None
    assert "no noise measured for tag t1 yet" in "\n".join(describe(first))
    assert f"SHA={rows[0].commit}" in "\n".join(describe(first))
    replay(settings, rows[0].commit, NoisyRunner(), image_id="sha256:fake")  # a repeat of the baseline
    again = replay(settings, rows[2].commit, NoisyRunner(), image_id="sha256:fake")
    assert again.noise is not None and again.noise_runs == 2
    assert "noise of tag t1: std" in "\n".join(describe(again))
