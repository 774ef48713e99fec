"""What a job leaves in its output folder never reaches the host except the one file asked for,
copied as hostile input: a regular file, its apparent size capped, no link, no special file, no
setuid bit. The folder itself is a tmpfs volume the kernel caps, removed with the job."""

from __future__ import annotations

import time
from pathlib import Path

import docker
import pytest
from sandbox_support import leftovers, rid, script, spec_for

from evaluator.hostile import UnsafeFileError
from evaluator.profiles import get_profile
from sandbox import specs
from sandbox.docker_runner import DockerRunner
from sandbox.experiment import run_experiment
from sandbox.limits import Limits, MiB

pytestmark = pytest.mark.docker
LIMITS = Limits.for_profile(get_profile("test"), out_max_bytes=16 * MiB, out_max_files=200)


def run_job(docker_client: docker.DockerClient, images: str, stub_data_dir: Path, tmp_path: Path, code: str, name: str):  # type: ignore[no-untyped-def]
    """Run `code` as a train job; return the runner and handle, the job ended but not cancelled."""
    runner = DockerRunner(docker_client)
    job = specs.train_job(
        run_id=rid(name),
        image=images,
        profile="test",
        seed=0,
        gpu=None,
        memory_gb=1.0,
        data_dir=stub_data_dir.resolve(),
        train_py=script(tmp_path, code),
        limits=LIMITS,
        labels={},
    )
    handle = runner.submit(job)
    runner.stream_logs(handle, tmp_path / "train.log", 1 * MiB)
    outcome = runner.wait(handle)
    return runner, handle, outcome


HOSTILE_OUT = """
import os, shutil, stat
open("/out/model.pt2", "wb").write(b"PK" + b"0" * 100)
os.symlink("/etc/shadow", "/out/link")
os.mkfifo("/out/fifo")
shutil.copyfile("/bin/bash", "/out/setuid"); os.chmod("/out/setuid", 0o6755)
open("/out/sparse", "wb").truncate(1 << 40)
os.mkdir("/out/dir")
os.chdir("/out/dir")
for i in range(150):
    os.mkdir("d"); os.chdir("d")
print("made everything", flush=True)
"""


@pytest.fixture(scope="module")
def hostile_job(images, docker_client, stub_data_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("hostile")
    runner, handle, outcome = run_job(docker_client, images, stub_data_dir, tmp, HOSTILE_OUT, "hostile-out")
    yield runner, handle, outcome, tmp
    runner.cancel(handle)


def test_the_one_regular_file_asked_for_is_copied(hostile_job) -> None:
    runner, handle, outcome, tmp = hostile_job
    assert outcome.exit_code == 0, (tmp / "train.log").read_text()
    assert runner.fetch_output(handle, "model.pt2", tmp / "model.pt2", 1000) == 102
    assert (tmp / "model.pt2").read_bytes() == b"PK" + b"0" * 100


@pytest.mark.parametrize(
    "name, reason",
    [
        ("link", "symlink"),
        ("fifo", "not a plain regular file"),
        ("setuid", "not a plain regular file"),
        ("dir", "not a plain regular file"),
        ("sparse", "apparent size"),
        ("missing", "no missing"),
        ("../../etc/passwd", "bad file name"),
    ],
)
def test_anything_else_is_refused_and_nothing_is_written(hostile_job, name: str, reason: str) -> None:
    runner, handle, _, tmp = hostile_job
    dest = tmp / f"copy-{abs(hash(name))}"
    with pytest.raises(UnsafeFileError, match=reason):
        runner.fetch_output(handle, name, dest, 1 << 30)
    assert not dest.exists()


def test_the_output_folder_is_capped_by_the_kernel_in_bytes_and_files(
    images, docker_client, stub_data_dir, tmp_path
) -> None:
    code = """
import os
try:
    with open("/out/fill", "wb") as fh:
        while True:
            fh.write(b"x" * (1 << 20))
except OSError as exc:
    print("bytes:", exc.strerror, os.path.getsize("/out/fill"), flush=True)
n = 0
try:
    while True:
        open(f"/out/f{n}", "w").close(); n += 1
except OSError as exc:
    print("files:", exc.strerror, n, flush=True)
"""
    runner, handle, outcome = run_job(docker_client, images, stub_data_dir, tmp_path, code, "hostile-cap")
    runner.cancel(handle)
    log = (tmp_path / "train.log").read_text()
    assert f"bytes: No space left on device {LIMITS.out_max_bytes}" in log
    assert "files: No space left on device" in log
    files = int(log.split("files: No space left on device")[1].split()[0])
    assert files < LIMITS.out_max_files
    assert leftovers(docker_client, handle.spec.run_id) == []  # volume and keeper gone with the job


def test_a_deep_tree_over_the_caps_neither_hides_nor_crashes_cleanup(
    images, docker_client, stub_data_dir, tmp_path
) -> None:
    code = """
import os
os.chdir("/out")
depth = 0
try:
    while True:
        os.mkdir("level-with-a-long-name-%05d" % depth); os.chdir("level-with-a-long-name-%05d" % depth); depth += 1
except OSError as exc:
    print("depth", depth, exc.strerror, flush=True)
"""
    limits = Limits.for_profile(get_profile("test"), out_max_files=5000)
    runner = DockerRunner(docker_client)
    job = specs.train_job(
        run_id=rid("hostile-deep"),
        image=images,
        profile="test",
        seed=0,
        gpu=None,
        memory_gb=1.0,
        data_dir=stub_data_dir.resolve(),
        train_py=script(tmp_path, code),
        limits=limits,
        labels={},
    )
    handle = runner.submit(job)
    runner.stream_logs(handle, tmp_path / "train.log", MiB)
    runner.wait(handle)
    t0 = time.monotonic()
    runner.cancel(handle)  # no Python recursion: the engine drops the tmpfs
    assert time.monotonic() - t0 < 30
    depth = int((tmp_path / "train.log").read_text().split("depth ")[1].split()[0])
    assert depth > 150  # far deeper than PATH_MAX (4096) allows to name by path
    assert leftovers(docker_client, job.run_id) == []


def test_an_experiment_whose_model_is_a_sparse_file_is_a_crash(images, docker_client, stub_data_dir, tmp_path) -> None:
    train_py = script(tmp_path, "open('/out/model.pt2', 'wb').truncate(64 * 2**30)\n")
    spec = spec_for(tmp_path, train_py, stub_data_dir, "hostile-sparse")
    result = run_experiment(spec, limits=LIMITS)
    assert result.status == "crash" and "apparent size" in result.reason
    assert not (spec.run_dir / "model.pt2").exists() and result.eval_exit_code is None


def test_an_experiment_whose_model_is_a_fifo_does_not_hang_the_host(
    images, docker_client, stub_data_dir, tmp_path
) -> None:
    train_py = script(tmp_path, "import os; os.mkfifo('/out/model.pt2')\n")
    spec = spec_for(tmp_path, train_py, stub_data_dir, "hostile-fifo")
    result = run_experiment(spec, limits=LIMITS)
    assert result.status == "crash" and "not a plain regular file" in result.reason
