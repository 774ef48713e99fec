"""kill -9 at any point of an experiment, then resume: no row lost or written twice, the branch
matches the ledger. The loop runs in a subprocess that blocks at a chosen phase and is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from controller_fakes import HANG_ENV, MARKER_ENV, REPO_ROOT, build_loop, check_consistent, make_repo

from controller.ledger import Ledger

SCRIPT = {
    1: {"set": {"LR": 0.01}, "desc": "LR up (kept)"},
    2: {"set": {"LR": 1.0}, "desc": "LR way up (discarded)"},
    3: {"append": "CRASH = 1", "desc": "crashes"},
}
MAX = 4

# (phase, experiment): every step between two writes, for a kept, a discarded and the baseline run.
KILL_POINTS = [
    ("agent-edited", 1),
    ("checking", 1),
    ("committed", 1),
    ("ref", 1),
    ("training", 1),
    ("in-run", 1),
    ("recorded", 1),
    ("appended", 1),
    ("decided", 1),
    ("committed", 2),
    ("in-run", 2),
    ("recorded", 2),
    ("appended", 2),
    ("decided", 2),
    ("in-run", 0),
    ("appended", 0),
    ("agent-edited", 4),
    ("in-run", 4),  # experiment 4 is the fix attempt of the crash at 3
]


def run_until_hang(repo: Path, tag: str, phase: str, n: int, tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    marker = tmp_path / f"hung-{phase}-{n}"
    env = {**os.environ, HANG_ENV: f"{phase}:{n}", MARKER_ENV: str(marker), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "tests" / "controller_fakes.py"),
            "--repo",
            str(repo),
            "--tag",
            tag,
            "--script",
            str(script),
            "--max-experiments",
            str(MAX),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the loop ended before reaching {phase}:{n}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the loop never reached {phase}:{n}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stderr.close()


@pytest.mark.parametrize(("phase", "n"), KILL_POINTS, ids=[f"{p}-{n}" for p, n in KILL_POINTS])
def test_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path: Path, phase: str, n: int) -> None:
    repo = make_repo(tmp_path / "repo")
    run_until_hang(repo, "t1", phase, n, tmp_path)
    before = Ledger(repo / "runs" / "t1").rows()
    assert len(before) in (n, n + 1)  # the kill came before or after this experiment's row

    loop, agent, runner, observer = build_loop(repo, "t1", SCRIPT, max_experiments=MAX)
    summary = loop.run()
    assert summary.reason == "max-experiments"
    rows = check_consistent(repo, "t1")
    assert len(rows) == MAX + 1
    assert rows[: len(before)] == before  # what was recorded stays as it was
    assert [r.status for r in rows] == ["keep", "keep", "discard", "crash", "crash"]
    assert [r.description for r in rows][:4] == ["baseline", "LR up (kept)", "LR way up (discarded)", "crashes"]
    if len(before) == n:  # the experiment in flight was finished or redone by the resumed loop
        assert any(s.run_id == f"t1-{n:04d}" for s in runner.specs) or phase == "recorded"
    if phase == "in-run":  # the half-finished run folder was kept aside, not mixed into the new one
        assert list((repo / "runs" / "t1" / "interrupted").iterdir())


def test_a_run_recorded_before_the_kill_is_not_run_again(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    run_until_hang(repo, "t1", "recorded", 1, tmp_path)
    loop, agent, runner, _ = build_loop(repo, "t1", SCRIPT, max_experiments=1)
    loop.run()
    assert runner.specs == [] and agent.calls == 0  # run.json existed: only the row was appended
    assert [r.description for r in check_consistent(repo, "t1")] == ["baseline", "LR up (kept)"]


def test_a_fix_chain_survives_a_kill(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    run_until_hang(repo, "t1", "proposing", 4, tmp_path)  # after the crash row of 3, before asking to fix
    loop, agent, _, _ = build_loop(repo, "t1", SCRIPT, max_experiments=MAX)
    loop.run()
    assert agent.contexts[0].experiment == 4
    assert agent.contexts[0].fix_attempt is not None and agent.contexts[0].fix_attempt.n == 3
