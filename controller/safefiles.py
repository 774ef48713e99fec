"""File reading and writing the controller can trust: atomic writes (temp + fsync + rename + fsync of
the folder) for its own records, and capped, no-symlink reads for anything a run produced (logs,
scores), which is hostile input (DESIGN.md threat model, point 10)."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path

from pydantic import BaseModel

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class UnsafeFileError(OSError):
    """A file a run left behind is not a regular file, is a symlink, or is too big."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` so that a reader (or a restart after kill -9) sees the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_model(path: Path, model: BaseModel) -> None:
    atomic_write_text(path, model.model_dump_json(indent=2) + "\n")


def _open_regular(path: Path) -> int:
    """An fd for `path` opened without following a final symlink; it must be a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            raise UnsafeFileError(f"{path} is a symlink; refusing to read it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFileError(f"{path} is not a regular file; refusing to read it")
    return fd


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The whole file, refusing symlinks, non-regular files and anything above max_bytes."""
    fd = _open_regular(Path(path))
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise UnsafeFileError(f"{path} is {size} bytes, above the {max_bytes} byte cap")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


def clean_text(text: str) -> str:
    """Printable text for a person or a prompt: control characters (escape sequences) removed."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def read_tail(path: Path, max_bytes: int = 8192) -> str:
    """The last max_bytes of a log as clean text (whole lines only); '' when the file is missing."""
    try:
        fd = _open_regular(Path(path))
    except FileNotFoundError:
        return ""
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        os.lseek(fd, start, os.SEEK_SET)
        data = os.read(fd, max_bytes)
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace")
    if start > 0 and "\n" in text:
        text = text.split("\n", 1)[1]
    return clean_text(text)
