"""`python -m sandbox.experiment` (make experiment): one run, a readable summary, and one-line
errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sandbox_support import REPO_ROOT, script

pytestmark = pytest.mark.docker


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sandbox.experiment", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def test_missing_data_is_a_one_line_error_saying_what_to_do(images, tmp_path: Path) -> None:
    done = _cli("--profile", "test", "--data-dir", str(tmp_path / "nothing"), "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "is not a prepared data dir" in done.stderr and "make prepare" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_profile_and_missing_train_py_are_one_line_errors(images, stub_data_dir: Path, tmp_path: Path) -> None:
    done = _cli("--profile", "huge", "--data-dir", str(stub_data_dir))
    assert done.returncode == 2 and "unknown profile 'huge'" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    done = _cli("--train", str(tmp_path / "none.py"), "--data-dir", str(stub_data_dir))
    assert done.returncode == 2 and "is not a file" in done.stderr


def test_a_run_prints_status_timings_memory_and_log_paths(images, stub_data_dir: Path, tmp_path: Path) -> None:
    train_py = script(tmp_path, "print('no model today')")
    done = _cli(
        "--train",
        str(train_py),
        "--profile",
        "test",
        "--data-dir",
        str(stub_data_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
    )
    assert done.returncode == 1  # ran, but did not score
    out = done.stdout
    assert "status" in out and "crash" in out and "no model.pt2" in out
    for row in ("val_bpb", "peak ram", "train", "eval", "logs"):
        assert row in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "train.log" in out and "eval.log" in out
    assert (run_dir / "result.json").exists()
    assert "no model today" in (run_dir / "train.log").read_text()
