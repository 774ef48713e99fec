"""What a container leaves in /out (and the score dir) is hostile: the host follows no symlink,
reads regular files only and caps sizes before anything is copied or parsed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sandbox_support import docker_client, images, script, spec_for, stub_data_dir  # noqa: F401

from evaluator.profiles import get_profile
from sandbox.experiment import run_experiment
from sandbox.hostile import HostileFileError, copy_regular, read_regular, tree_usage
from sandbox.limits import Limits


# --- the helpers, on files the test plants itself -----------------------------------------


def test_read_regular_refuses_a_symlink_even_to_a_readable_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "score.json").symlink_to(secret)
    with pytest.raises(HostileFileError, match="symlink"):
        read_regular(tmp_path / "out", "score.json", 1000)


def test_read_regular_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.pt2")
    with pytest.raises(HostileFileError, match="not a regular file"):
        read_regular(tmp_path, "model.pt2", 1000)


def test_size_cap_is_checked_before_reading(tmp_path: Path) -> None:
    with open(tmp_path / "big", "wb") as fh:
        fh.truncate(10 * 2**30)  # sparse: costs no disk
    with pytest.raises(HostileFileError, match="over the 1000-byte cap"):
        copy_regular(tmp_path, "big", tmp_path / "copy", 1000)
    assert not (tmp_path / "copy").exists()


def test_copy_regular_copies_a_plain_file_and_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "model.pt2").write_bytes(b"PK" + b"\0" * 100)
    assert copy_regular(tmp_path, "model.pt2", tmp_path / "copy.pt2", 1000) == 102
    assert (tmp_path / "copy.pt2").read_bytes() == b"PK" + b"\0" * 100
    with pytest.raises(FileExistsError):
        copy_regular(tmp_path, "model.pt2", tmp_path / "copy.pt2", 1000)


def test_a_symlinked_directory_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "model.pt2").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        read_regular(tmp_path / "link", "model.pt2", 10)


def test_tree_usage_does_not_follow_symlinks(tmp_path: Path) -> None:
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "data").write_bytes(os.urandom(2**20))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "big")
    used, entries = tree_usage(tmp_path / "out", 100)
    assert entries == 1 and used < 2**16


# --- end to end: what train.py leaves in /out --------------------------------------------


@pytest.mark.docker
def test_a_symlink_left_as_model_pt2_is_not_followed(
        images, docker_client, stub_data_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("the host's secret")
    train_py = script(tmp_path, f"""
        import os
        os.symlink({str(secret)!r}, "/out/model.pt2")
    """)
    spec = spec_for(tmp_path, train_py, stub_data_dir, "hostile-symlink")
    result = run_experiment(spec)
    assert result.status == "crash"
    assert "symlink" in result.reason
    assert list((spec.run_dir / "artifact").iterdir()) == []
    assert result.eval_exit_code is None  # the eval container never started


@pytest.mark.docker
def test_a_huge_model_pt2_is_not_copied(
        images, docker_client, stub_data_dir: Path, tmp_path: Path) -> None:
    train_py = script(tmp_path, """
        with open("/out/model.pt2", "wb") as fh:
            fh.truncate(64 * 2**30)  # sparse: huge to stat, nothing on disk
    """)
    spec = spec_for(tmp_path, train_py, stub_data_dir, "hostile-huge")
    result = run_experiment(spec)
    assert result.status == "crash"
    assert "over the" in result.reason and "cap" in result.reason
    assert list((spec.run_dir / "artifact").iterdir()) == []


@pytest.mark.docker
def test_a_fifo_left_as_model_pt2_does_not_hang_the_host(
        images, docker_client, stub_data_dir: Path, tmp_path: Path) -> None:
    train_py = script(tmp_path, "import os; os.mkfifo('/out/model.pt2')")
    spec = spec_for(tmp_path, train_py, stub_data_dir, "hostile-fifo")
    result = run_experiment(spec, limits=Limits.for_profile(get_profile("test")))
    assert result.status == "crash" and "not a regular file" in result.reason
