"""`make ... BACKEND=kubernetes`: the make targets hand the backend to the controller, prepare the
data on the cluster instead of with compose, and do not look for data on this machine. Read from
`make -n` (what make would run; nothing runs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from controller_fakes import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def dry_run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    venv = tmp_path / "venv"
    venv.mkdir(exist_ok=True)
    for stamp in (".host", ".dev"):
        (venv / stamp).touch()  # newer than pyproject.toml: make would install nothing
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", *args, f"VENV={venv}"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_overnight_on_a_cluster_passes_the_backend_and_needs_no_local_data(tmp_path: Path) -> None:
    out = dry_run(tmp_path, "overnight", "BACKEND=kubernetes", "PROFILE=gpu", "TAG=nov23")
    assert "-m controller overnight --backend kubernetes --tag nov23" in out
    assert "manifest.json" not in out and "prepare" not in out
    local = dry_run(tmp_path, "overnight", "PROFILE=cpu")
    assert "test -f data/$p/manifest.json" in local and "--backend" not in local


def test_the_backend_setting_of_the_environment_counts_too(tmp_path: Path) -> None:
    out = dry_run(tmp_path, "overnight", "PROFILE=gpu", env={"OVERNIGHT_BACKEND": "kubernetes"})
    assert "--backend kubernetes" in out and "manifest.json" not in out


def test_prepare_on_a_cluster_runs_the_prepare_job_not_compose(tmp_path: Path) -> None:
    out = dry_run(tmp_path, "prepare", "BACKEND=kubernetes", "PROFILE=gpu", "DATASET=climbmix")
    assert "-m sandbox.kubernetes.prepare --profile gpu --dataset climbmix" in out
    assert "compose" not in out and "images/build.py" not in out
    local = dry_run(tmp_path, "prepare", "PROFILE=cpu")
    assert "run --rm prepare" in local and "sandbox.kubernetes.prepare" not in local


def test_replay_passes_the_backend(tmp_path: Path) -> None:
    assert "-m controller replay abc1234 --backend kubernetes" in dry_run(
        tmp_path, "replay", "SHA=abc1234", "BACKEND=kubernetes"
    )
