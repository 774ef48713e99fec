"""What a user sees of a night with several experiments in flight (issue 13): the live view has a
line for the agent and one per slot; `make status` while the night runs says which experiment each
slot trains and what is in flight, and after a crash that the in-flight experiments are finished on
resume. Text that came from the agent is shown without its escape sequences."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller_fakes import HANG_ENV, MARKER_ENV, REPO_ROOT, make_repo
from rich.console import Console

from controller.ledger import LedgerRow
from controller.records import SlotState
from controller.status import ConsoleObserver


def _observer() -> ConsoleObserver:
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    rows = [LedgerRow("abc1234", 2.5, 1.0, "keep", "baseline", n=0, runs=3)]
    return ConsoleObserver(console, "t1", rows, deadline=None, max_experiments=10)


def test_the_live_view_has_a_line_for_the_agent_and_one_per_slot() -> None:
    observer = _observer()
    observer.phase(3, "proposing")
    observer.slot(SlotState(index=0, label="slot 0 (CPUs 0)", n=1, what="lower LR"))
    observer.slot(SlotState(index=1, label="slot 1 (CPUs 1)", n=2, what="confirmation run 2: deeper"))
    observer.phase(4, "preflight")
    lines = observer.view().plain.splitlines()
    assert lines[0].startswith("t1 · last #0 keep 2.500000"), lines
    assert lines[1].startswith("  agent: ") and "#3" in lines[1], lines
    assert lines[2].startswith("  slot 0 (CPUs 0): #1 lower LR"), lines
    assert lines[3].startswith("  slot 1 (CPUs 1): #2 confirmation run 2: deeper"), lines
    assert lines[4].startswith("  preflight: #4"), lines
    # The run ends: the slot goes idle, the agent's proposal is committed, the preflight is over.
    observer.slot(SlotState(index=0, label="slot 0 (CPUs 0)"))
    observer.phase(3, "committed")
    observer.phase(4, "training")
    lines = observer.view().plain.splitlines()
    assert lines[1] == "  agent: waiting for a free slot"
    assert lines[2] == "  slot 0 (CPUs 0): idle"
    assert not any("preflight" in line for line in lines)


def test_agent_text_in_the_live_view_loses_its_escape_sequences() -> None:
    observer = _observer()
    observer.slot(SlotState(index=0, label="slot 0", n=5, what="\x1b[2J\x1b[32mkeep\x1b[0m\nforged line"))
    text = observer.view().plain
    assert "\x1b" not in text
    assert "forged line" in text and "\nforged line" not in text  # one line per slot, whatever it says


def _controller_status(repo: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "controller", "status", "--runs-dir", str(repo / "runs"), "--tag", "t1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_status_of_a_running_night_shows_each_slot_and_after_a_crash_what_resume_finishes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    script = {1: {"set": {"LR": 0.01}, "desc": "LR 0.01"}, 2: {"set": {"DEPTH": 8}, "desc": "DEPTH 8"}}
    (tmp_path / "script.json").write_text(json.dumps(script))
    marker = tmp_path / "hung"
    env = {**os.environ, HANG_ENV: "in-run:1,in-run:2", MARKER_ENV: str(marker), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "tests" / "controller_fakes.py"),
            "--repo",
            str(repo),
            "--tag",
            "t1",
            "--script",
            str(tmp_path / "script.json"),
            "--max-experiments",
            "4",
            "--slots",
            "2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        end = time.monotonic() + 60
        while not all(Path(f"{marker}-in-run-{n}").exists() for n in (1, 2)):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < end, "the two runs never started"
            time.sleep(0.05)
        running = _controller_status(repo)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stderr.close()
    assert f"running (controller pid {proc.pid})" in running, running
    assert "slot 0 (CPUs 0): #1 LR 0.01" in running, running
    assert "slot 1 (CPUs 1): #2 DEPTH 8" in running, running
    assert "in flight #1" in running and "in flight #2" in running, running
    after = _controller_status(repo)
    assert "not running; 2 experiment(s) in flight will be finished on resume" in after, after
    assert "slot 0" not in after  # a dead night's slots.json is not shown as live
