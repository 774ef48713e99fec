"""Shared fixtures: a prepared data directory for the `test` profile and the seed train.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def seed_train_py() -> Path:
    return REPO_ROOT / "programs" / "default" / "train.py"


@pytest.fixture(scope="session")
def test_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `test` profile prepared from the stdlib dataset, once per session."""
    out = tmp_path_factory.mktemp("data") / "test"
    subprocess.run(
        [sys.executable, "-m", "evaluator.prepare", "--profile", "test", "--dataset", "stdlib", "--out", str(out)],
        cwd=REPO_ROOT,
        check=True,
    )
    return out
