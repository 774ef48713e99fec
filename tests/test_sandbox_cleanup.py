"""No container outlives its run, whatever happened; leftovers of a crash are found by label."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sandbox_support import REPO_ROOT, leftovers, rid, script, spec_for

from evaluator.profiles import get_profile
from sandbox import specs
from sandbox.cleanup import remove_orphans
from sandbox.docker_runner import DockerRunner
from sandbox.experiment import run_experiment
from sandbox.limits import Limits
from sandbox.runner import JobSpec

pytestmark = pytest.mark.docker


@pytest.mark.parametrize(
    "name, code, status",
    [
        ("clean-exit", "print('done')", "crash"),  # exits 0 without a model
        ("clean-fail", "raise RuntimeError('boom')", "crash"),
        ("clean-hang", "import time; time.sleep(300)", "timeout"),
    ],
)
def test_no_container_is_left_behind_after_a_run(
    images, docker_client, stub_data_dir: Path, tmp_path: Path, name: str, code: str, status: str
) -> None:
    spec = spec_for(tmp_path, script(tmp_path, code), stub_data_dir, name)
    result = run_experiment(
        spec, limits=Limits.for_profile(get_profile("test"), train_budget_s=2.0, train_allowance_s=1.0)
    )
    assert result.status == status
    assert leftovers(docker_client, spec.run_id) == []
    all_names = [c.name for c in docker_client.containers.list(all=True)]
    assert specs.container_name(spec.run_id, "train") not in all_names


def test_a_failed_run_says_why_in_one_line(images, docker_client, stub_data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(tmp_path, script(tmp_path, "raise RuntimeError('boom')"), stub_data_dir, "why")
    result = run_experiment(spec)
    assert result.reason == "train.py exited with code 1: RuntimeError: boom"


def _leave_one_behind(client, run_id: str, tmp_path: Path):
    """A job a crashed controller left: its container, keeper and volume, all running."""
    job = JobSpec(
        run_id=run_id,
        role="train",
        image="overnight-evaluator:latest",
        command=("sleep", "300"),
        environment=specs.environment(None),
        data_dir=tmp_path,
        data_parts=(),
        inputs={},
        output_dir="/out",
        output_max_bytes=2**20,
        output_max_files=10,
        cap_s=300,
        memory_gb=0.5,
    )
    handle = DockerRunner(client).submit(job)
    return handle.native


def test_remove_orphans_finds_leftovers_by_label(images, docker_client, tmp_path: Path) -> None:
    a, b = rid("orphan-a"), rid("orphan-b")
    _leave_one_behind(docker_client, a, tmp_path)
    _leave_one_behind(docker_client, b, tmp_path)
    assert sorted(remove_orphans(a)) == sorted(
        [f"overnight-{a}-train", f"overnight-{a}-train-keeper", f"overnight-{a}-train-out"]
    )
    assert leftovers(docker_client, a) == []
    assert sorted(leftovers(docker_client, b)) == sorted(
        [f"overnight-{b}-train", f"overnight-{b}-train-keeper", f"overnight-{b}-train-out"]
    )
    remove_orphans(b)
    assert leftovers(docker_client, b) == []


def test_a_run_starts_by_removing_its_own_stale_containers(
    images, docker_client, stub_data_dir: Path, tmp_path: Path
) -> None:
    stale = _leave_one_behind(docker_client, rid("restarted"), tmp_path)  # holds the name
    spec = spec_for(tmp_path, script(tmp_path, "print('again')"), stub_data_dir, "restarted")
    result = run_experiment(spec)
    assert result.train_exit_code == 0
    assert stale.id not in [c.id for c in docker_client.containers.list(all=True)]


def test_cleanup_command_line(images, docker_client, tmp_path: Path) -> None:
    name = rid("orphan-cli")
    _leave_one_behind(docker_client, name, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "sandbox.cleanup", name], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.strip().startswith("removed 3 container(s) and volume(s): ")
    assert leftovers(docker_client, name) == []
