"""Helpers for the sandbox and image tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import json
import secrets
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from sandbox.result import ExperimentResult, ExperimentSpec
from sandbox.specs import DEFAULT_IMAGE, LABEL_RUN

REPO_ROOT = Path(__file__).resolve().parent.parent
EVALUATOR_IMAGE = DEFAULT_IMAGE
PREPARE_IMAGE = "overnight-prepare:latest"

# Run ids get a per-session suffix: concurrent test sessions on one engine never clash
# (a run removes containers carrying its own run id before it starts).
SESSION = secrets.token_hex(3)


def rid(name: str) -> str:
    return f"{name}-{SESSION}"


def script(tmp_path: Path, code: str, name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


def spec_for(tmp_path: Path, train_py: Path, data_dir: Path, run_id: str, **extra: Any) -> ExperimentSpec:
    return ExperimentSpec(
        run_id=rid(run_id),
        train_py=train_py,
        run_dir=tmp_path / "run",
        profile=extra.pop("profile", "test"),
        data_dir=data_dir,
        image=EVALUATOR_IMAGE,
        **extra,
    )


def leftovers(client: docker.DockerClient, run_id: str) -> list[str]:
    """Containers and volumes of a run that are still there."""
    label = f"{LABEL_RUN}={run_id}"
    return [c.name for c in client.containers.list(all=True, filters={"label": label})] + [
        v.name for v in client.volumes.list(filters={"label": label})
    ]


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


def host_venv(dest: Path) -> Path:
    """A virtualenv for make that is this interpreter's (no pip install into the shared one)."""
    (dest / "bin").mkdir(parents=True)
    (dest / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (dest / "bin" / "python").chmod(0o755)
    (dest / ".host").touch()  # newer than the copy's pyproject.toml: make installs nothing
    return dest
