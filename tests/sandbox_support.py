"""Shared pieces of the sandbox and image tests: the images (built once per session through
images/build.py, cached), a minimal data dir for runs that never reach scoring, and helpers.

Test modules import the fixtures they use from here by name."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.cleanup import orphans
from sandbox.result import ExperimentResult, ExperimentSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
EVALUATOR_IMAGE = "overnight-evaluator:latest"
PREPARE_IMAGE = "overnight-prepare:latest"

_built = False
# Run ids get a per-session suffix: concurrent test sessions on one engine never clash
# (a run removes containers carrying its own run id before it starts).
SESSION = secrets.token_hex(3)


def rid(name: str) -> str:
    return f"{name}-{SESSION}"


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    client = docker.from_env()
    client.ping()
    return client


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> str:
    """Build (or confirm, from the cache) every image once per session; the evaluator image's tag."""
    global _built
    if not _built:
        done = subprocess.run([sys.executable, str(REPO_ROOT / "images" / "build.py")],
                              cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"images/build.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        _built = True
    return EVALUATOR_IMAGE


@pytest.fixture(scope="session")
def stub_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with the right layout but no real data: for runs that never get scored."""
    root = tmp_path_factory.mktemp("stub-data")
    for split in ("tokenizer", "train", "val"):
        (root / split).mkdir()
    (root / "manifest.json").write_text("{}\n")
    (root / "train" / "shard_00000.bin").write_bytes(b"TRAIN" * 10)
    (root / "val" / "shard_00000.bin").write_bytes(b"VALIDATION-SECRET" * 10)
    return root


def script(tmp_path: Path, code: str, name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


def spec_for(tmp_path: Path, train_py: Path, data_dir: Path, run_id: str, **extra: Any) -> ExperimentSpec:
    return ExperimentSpec(run_id=rid(run_id), train_py=train_py, run_dir=tmp_path / "run",
                          profile=extra.pop("profile", "test"), data_dir=data_dir,
                          image=EVALUATOR_IMAGE, **extra)


def leftovers(client: docker.DockerClient, run_id: str) -> list[str]:
    return [c.name for c in orphans(client, run_id)]


def in_background(fn: Callable[[], ExperimentResult]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # surfaced by the test that joins
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
