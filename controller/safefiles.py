"""The controller's own records, written atomically (temp + fsync + rename + fsync of the folder),
and reads of what a run produced (logs, records), which go through evaluator.hostile: capped,
no symlink followed, regular files only (docs/architecture.md, threat model point 10)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel

from evaluator import hostile
from evaluator.hostile import UnsafeFileError, clean_text

__all__ = [
    "UnsafeFileError",
    "atomic_write_bytes",
    "atomic_write_model",
    "atomic_write_text",
    "clean_text",
    "fsync_dir",
    "read_regular",
    "read_tail",
]


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


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The whole file, refusing symlinks, non-regular files and anything above max_bytes.
    A missing file is FileNotFoundError (the caller decides what absence means)."""
    if not os.path.lexists(path):
        raise FileNotFoundError(str(path))
    return hostile.read_regular(path, max_bytes)


def read_tail(path: Path, max_bytes: int = 8192) -> str:
    """The last max_bytes of a log as clean text (whole lines only); '' when the file is missing."""
    try:
        data, size = hostile.read_tail(path, max_bytes)
    except UnsafeFileError as exc:
        if not os.path.lexists(path):
            return ""
        return f"[{exc}]"
    text = data.decode("utf-8", errors="replace")
    if size > len(data) and "\n" in text:
        text = text.split("\n", 1)[1]
    return clean_text(text)
