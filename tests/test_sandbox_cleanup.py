"""No container outlives its run, whatever happened; leftovers of a crash are found by label."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sandbox_support import docker_client, images, script, spec_for, stub_data_dir  # noqa: F401
from sandbox_support import REPO_ROOT, leftovers, rid

from evaluator.profiles import get_profile
from sandbox import specs
from sandbox.cleanup import remove_orphans
from sandbox.experiment import run_experiment
from sandbox.limits import Limits

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("name, code, status", [
    ("clean-exit", "print('done')", "crash"),  # exits 0 without a model
    ("clean-fail", "raise RuntimeError('boom')", "crash"),
    ("clean-hang", "import time; time.sleep(300)", "timeout"),
])
def test_no_container_is_left_behind_after_a_run(
        images, docker_client, stub_data_dir: Path, tmp_path: Path, name: str, code: str,
        status: str) -> None:
    spec = spec_for(tmp_path, script(tmp_path, code), stub_data_dir, name)
    result = run_experiment(spec, limits=Limits.for_profile(get_profile("test"), train_cap_s=3.0))
    assert result.status == status
    assert leftovers(docker_client, spec.run_id) == []
    all_names = [c.name for c in docker_client.containers.list(all=True)]
    assert specs.container_name(spec.run_id, "train") not in all_names


def test_a_failed_run_says_why_in_one_line(images, docker_client, stub_data_dir: Path,
                                           tmp_path: Path) -> None:
    spec = spec_for(tmp_path, script(tmp_path, "raise RuntimeError('boom')"), stub_data_dir, "why")
    result = run_experiment(spec)
    assert result.reason == "train.py exited with code 1: RuntimeError: boom"


def _leave_one_behind(client, run_id: str, tmp_path: Path):
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "train.py").write_text("pass\n")
    config = specs.locked_down(image="overnight-evaluator:latest", run_id=run_id, role="train",
                               command=["sleep", "300"], environment=specs.environment(None),
                               mounts=[], memory_gb=0.5, gpu=None, labels={})
    container = client.containers.create(**config)
    container.start()
    return container


def test_remove_orphans_finds_leftovers_by_label(images, docker_client, tmp_path: Path) -> None:
    a, b = rid("orphan-a"), rid("orphan-b")
    _leave_one_behind(docker_client, a, tmp_path)
    _leave_one_behind(docker_client, b, tmp_path)
    assert remove_orphans(a) == [f"overnight-{a}-train"]
    assert leftovers(docker_client, a) == []
    assert leftovers(docker_client, b) == [f"overnight-{b}-train"]
    remove_orphans(b)
    assert leftovers(docker_client, b) == []


def test_a_run_starts_by_removing_its_own_stale_containers(
        images, docker_client, stub_data_dir: Path, tmp_path: Path) -> None:
    stale = _leave_one_behind(docker_client, rid("restarted"), tmp_path)  # holds the name
    spec = spec_for(tmp_path, script(tmp_path, "print('again')"), stub_data_dir, "restarted")
    result = run_experiment(spec)
    assert result.train_exit_code == 0
    assert stale.id not in [c.id for c in docker_client.containers.list(all=True)]


def test_cleanup_command_line(images, docker_client, tmp_path: Path) -> None:
    name = rid("orphan-cli")
    _leave_one_behind(docker_client, name, tmp_path)
    done = subprocess.run([sys.executable, "-m", "sandbox.cleanup", name], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"removed 1 container(s): overnight-{name}-train"
    assert leftovers(docker_client, name) == []
