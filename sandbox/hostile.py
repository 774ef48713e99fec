"""Reading what a container wrote, as hostile input: regular files only, no symlink followed,
size caps checked before and while reading. Paths are opened relative to a directory the host
made itself, with O_NOFOLLOW at every step that the container could have touched."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import structlog

log = structlog.get_logger("sandbox")

CHUNK = 1 << 20


class HostileFileError(ValueError):
    """A file from a container that the host refuses; one line for a person."""


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def open_regular(directory: Path, name: str, max_bytes: int) -> tuple[int, int]:
    """(fd, size) of `directory/name` if it is a regular file of at most max_bytes."""
    if "/" in name or name in ("", ".", ".."):
        raise HostileFileError(f"bad file name {name!r}")
    dir_fd = _open_dir(directory)
    try:
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            raise HostileFileError(f"no {name}") from None
        if stat.S_ISLNK(st.st_mode):
            raise HostileFileError(f"{name} is a symlink; refused")
        if not stat.S_ISREG(st.st_mode):
            raise HostileFileError(f"{name} is not a regular file; refused")
        if st.st_size > max_bytes:
            raise HostileFileError(f"{name} is {st.st_size} bytes, over the {max_bytes}-byte cap")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            raise HostileFileError(f"cannot open {name}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    st2 = os.fstat(fd)
    if not stat.S_ISREG(st2.st_mode) or (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise HostileFileError(f"{name} changed while it was checked; refused")
    return fd, st2.st_size


def read_regular(directory: Path, name: str, max_bytes: int) -> bytes:
    fd, _ = open_regular(directory, name, max_bytes)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HostileFileError(f"{name} grew over the {max_bytes}-byte cap while read")
    return data


def copy_regular(directory: Path, name: str, dest: Path, max_bytes: int) -> int:
    """Copy `directory/name` to a new file `dest` (which must not exist); returns the size."""
    fd, _ = open_regular(directory, name, max_bytes)
    copied = 0
    with os.fdopen(fd, "rb") as src:
        out_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644)
        with os.fdopen(out_fd, "wb") as dst:
            while chunk := src.read(CHUNK):
                copied += len(chunk)
                if copied > max_bytes:
                    dst.close()
                    dest.unlink()
                    raise HostileFileError(f"{name} grew over the {max_bytes}-byte cap while copied")
                dst.write(chunk)
    return copied


def tree_usage(root: Path, max_entries: int) -> tuple[int, int]:
    """(bytes on disk, entries) under `root`, never following a symlink; stops counting
    entries past max_entries (the caller treats that as over the cap)."""
    used, entries = 0, 0
    stack = [str(root)]
    while stack and entries <= max_entries:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    used += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    if entries > max_entries:
                        break
        except OSError:
            continue
    return used, entries


def discard_tree(path: Path) -> None:
    """Delete a folder a run wrote, without following any symlink in it (rmtree unlinks links)."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path)
    except OSError as exc:
        log.warning("discard_failed", path=str(path), error=str(exc))
