"""Outputs come back from a cluster as hostile input: the fetch program (run in a trusted fetch
pod, here run locally on the same kind of folder) refuses what the Docker backend refuses, and
the host keeps a file only when the whole transfer arrived intact and within the cap."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluator.hostile import UnsafeFileError
from sandbox.errors import SandboxError
from sandbox.kubernetes.fetch import Receiver, fetch_command


def fetch(folder: Path, name: str, cap: int) -> subprocess.CompletedProcess[bytes]:
    command = fetch_command(str(folder), name, cap)
    return subprocess.run([sys.executable, *command[1:]], check=False, capture_output=True, timeout=60)


def receive(stream: bytes, dest: Path, cap: int, pieces: int = 7) -> int:
    receiver = Receiver(dest, "model.pt2", cap)
    try:
        step = max(1, len(stream) // pieces)
        for start in range(0, len(stream), step):
            receiver.feed(stream[start : start + step])
        return receiver.finish()
    except BaseException:
        receiver.abort()
        raise


def good_stream(data: bytes) -> bytes:
    return b"OK %d\n" % len(data) + data + b"END " + hashlib.sha256(data).hexdigest().encode() + b"\n"


def test_a_regular_file_comes_back_byte_for_byte(tmp_path: Path) -> None:
    data = os.urandom(3 * 2**20 + 17)
    (tmp_path / "model.pt2").write_bytes(data)
    done = fetch(tmp_path, "model.pt2", 2**24)
    assert done.returncode == 0 and done.stdout == good_stream(data)
    dest = tmp_path / "copy"
    assert receive(done.stdout, dest, 2**24) == len(data) and dest.read_bytes() == data


@pytest.mark.parametrize(
    "make, refusal",
    [
        (lambda d: os.symlink("/etc/passwd", d / "model.pt2"), "is a symlink"),
        (lambda d: os.mkfifo(d / "model.pt2"), "not a regular file"),
        (lambda d: (d / "model.pt2").mkdir(), "not a regular file"),
        (lambda d: ((d / "model.pt2").write_bytes(b"x"), os.chmod(d / "model.pt2", 0o2755)), "setgid"),
        (lambda d: os.truncate(os.open(d / "model.pt2", os.O_CREAT | os.O_WRONLY), 2**40), "over the"),
        (lambda d: None, "no model.pt2"),
    ],
)
def test_what_the_docker_backend_refuses_the_fetch_program_refuses(tmp_path: Path, make, refusal) -> None:
    make(tmp_path)
    done = fetch(tmp_path, "model.pt2", 2**30)
    assert done.returncode == 3 and done.stdout.startswith(b"REFUSED ")
    with pytest.raises(UnsafeFileError, match=refusal):
        receive(done.stdout, tmp_path / "copy", 2**30)
    assert not (tmp_path / "copy").exists()


@pytest.mark.parametrize("name", ["../model.pt2", "a/b", ".", ""])
def test_a_name_with_a_path_in_it_is_refused(tmp_path: Path, name: str) -> None:
    done = fetch(tmp_path, name, 100)
    assert done.returncode == 3 and b"bad file name" in done.stdout


@pytest.mark.parametrize(
    "stream, problem",
    [
        (good_stream(b"abc")[:-10], "cut or damaged"),  # the trailer cut short
        (good_stream(b"abc")[:6], "cut or damaged"),  # the content cut short
        (good_stream(b"abc").replace(b"abc", b"abd", 1), "cut or damaged"),  # a flipped byte
        (good_stream(b"abc") + b"more", "more bytes than announced"),
        (b"", "nothing usable"),
        (b"HELLO 3\nabc", "unexpected header"),
        (b"x" * 5000, "no header"),
    ],
)
def test_a_damaged_transfer_leaves_no_file_and_is_the_backends_problem(
    tmp_path: Path, stream: bytes, problem: str
) -> None:
    with pytest.raises(SandboxError, match=problem):
        receive(stream, tmp_path / "copy", 100)
    assert not (tmp_path / "copy").exists()


def test_the_host_cap_holds_whatever_the_stream_announces(tmp_path: Path) -> None:
    with pytest.raises(UnsafeFileError, match="over the 10-byte cap"):
        receive(good_stream(b"x" * 11), tmp_path / "copy", 10)
    assert not (tmp_path / "copy").exists()


def test_an_existing_destination_is_never_overwritten_or_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep")
    (tmp_path / "copy").symlink_to(target)
    with pytest.raises(FileExistsError):
        receive(good_stream(b"abc"), tmp_path / "copy", 100)
    assert target.read_text() == "keep"
