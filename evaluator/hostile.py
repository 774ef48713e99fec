"""Hostile input: files and strings that agent code, a model or an LLM wrote.

One module for the whole project (evaluator, sandbox, controller), torch-free, with one error
type. Threat model points 10 and 14 (docs/architecture.md): whatever agent code writes is hostile
to the host. Files: only regular files are read, no symlink is followed at the last component
(or at any component below a trusted root), special files (FIFOs, devices, sockets) are refused
without blocking, sizes are capped on the apparent size before and while reading, and the file
must not change between the check and the open. Strings: control characters, terminal escapes,
bidirectional overrides, NUL and lone surrogates are dropped before a string reaches a terminal,
git, a TSV line or JSON.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import unicodedata
from pathlib import Path

CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFileError(ValueError):
    """A file that is refused (a symlink, not a regular file, too big, changed while read);
    the message is one line for a person."""


# ---------------------------------------------------------------------------------------------
# Files


def _describe_open_error(name: str, exc: OSError) -> UnsafeFileError:
    if exc.errno == errno.ELOOP:
        return UnsafeFileError(f"{name} is a symlink; refused")
    if exc.errno == errno.ENOENT:
        return UnsafeFileError(f"no {name}")
    return UnsafeFileError(f"cannot open {name}: {exc.strerror}")


def open_regular(path: Path | str, max_bytes: int | None = None, *, dir_fd: int | None = None) -> tuple[int, int]:
    """(fd, size) of the regular file `path` (relative to `dir_fd` when given), opened without
    following a symlink at its last component and without blocking on a FIFO; refused when it is
    anything but a regular file or its apparent size is over `max_bytes`. The caller closes fd."""
    name = os.fspath(path)
    shown = os.path.basename(name) or name
    try:
        before = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        raise UnsafeFileError(f"no {shown}") from None
    except OSError as exc:
        raise _describe_open_error(shown, exc) from None
    if stat.S_ISLNK(before.st_mode):
        raise UnsafeFileError(f"{shown} is a symlink; refused")
    if not stat.S_ISREG(before.st_mode):
        raise UnsafeFileError(f"{shown} is not a regular file; refused")
    if max_bytes is not None and before.st_size > max_bytes:
        raise UnsafeFileError(f"{shown} is {before.st_size} bytes, over the {max_bytes}-byte cap")
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _describe_open_error(shown, exc) from None
    after = os.fstat(fd)
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise UnsafeFileError(f"{shown} changed while it was checked; refused")
    if max_bytes is not None and after.st_size > max_bytes:
        os.close(fd)
        raise UnsafeFileError(f"{shown} is {after.st_size} bytes, over the {max_bytes}-byte cap")
    return fd, after.st_size


def read_regular(path: Path | str, max_bytes: int, *, dir_fd: int | None = None) -> bytes:
    """The whole regular file, at most max_bytes (a file that grows past the cap while read is refused)."""
    fd, _ = open_regular(path, max_bytes, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFileError(f"{os.path.basename(os.fspath(path))} grew over the {max_bytes}-byte cap while read")
    return data


def read_tail(path: Path | str, max_bytes: int, *, dir_fd: int | None = None) -> tuple[bytes, int]:
    """(the last max_bytes of a regular file, its full size)."""
    fd, size = open_regular(path, None, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        fh.seek(max(0, size - max_bytes))
        return fh.read(max_bytes), size


def copy_regular(src: Path | str, dest: Path, max_bytes: int, *, dir_fd: int | None = None) -> int:
    """Copy a regular file to a new file `dest` (which must not exist); returns the size copied.
    Holes are read as zeros, so a sparse file counts at its apparent size against the cap."""
    fd, _ = open_regular(src, max_bytes, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        return write_capped(iter(lambda: fh.read(CHUNK), b""), dest, max_bytes, os.path.basename(os.fspath(src)))


def write_capped(chunks, dest: Path, max_bytes: int, what: str) -> int:  # type: ignore[no-untyped-def]
    """Write an iterable of byte chunks to a new file `dest`, refusing (and removing it) past max_bytes."""
    out_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    written = 0
    try:
        with os.fdopen(out_fd, "wb") as out:
            for chunk in chunks:
                written += len(chunk)
                if written > max_bytes:
                    raise UnsafeFileError(f"{what} is over the {max_bytes}-byte cap")
                out.write(chunk)
    except BaseException:
        Path(dest).unlink(missing_ok=True)
        raise
    return written


def open_dir_under(root: Path, target: Path) -> int:
    """An fd of folder `target`, which must lie inside the trusted folder `root`, reached one
    component at a time without following any symlink below `root`. The caller closes it."""
    if ".." in Path(target).parts:
        raise UnsafeFileError("a folder with '..' in its path is refused")
    abs_root = Path(os.path.abspath(root))
    abs_target = Path(os.path.abspath(target))
    try:
        rel = abs_target.relative_to(abs_root)
    except ValueError:
        raise UnsafeFileError("that folder is outside the folder it must be in; refused") from None
    try:
        fd = os.open(abs_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeFileError(f"folder unavailable: {exc.strerror}") from None
    for part in rel.parts:
        try:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            reason = "is a symlink or not a folder" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
            raise UnsafeFileError(f"folder component {clean_line(part, 60)!r} {reason}; refused") from None
        os.close(fd)
        fd = nxt
    return fd


# ---------------------------------------------------------------------------------------------
# Strings

# C0 and C1 controls (tab and newline are handled by the callers), DEL.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Bidirectional embeddings, overrides and isolates, marks, zero-width characters, BOM.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\u061c]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")


def clean_text(text: object) -> str:
    """Text safe for a terminal, a log, git and JSON, keeping its lines: escape sequences,
    control characters (but newline and tab), bidi controls and lone surrogates removed."""
    value = text if isinstance(text, str) else str(text)
    value = value.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    value = _ANSI.sub("", value)
    value = _SURROGATES.sub("\ufffd", value)
    value = _CONTROLS.sub("", value)
    value = _INVISIBLE.sub("", value)
    return unicodedata.normalize("NFC", value)


def clean_line(text: object, cap: int = 200, empty: str = "") -> str:
    """One line of at most `cap` characters (tabs and newlines become spaces, runs of spaces
    collapse); `empty` when nothing printable is left."""
    line = " ".join(clean_text(text).split())
    if len(line) > cap:
        line = line[: max(1, cap - 1)].rstrip() + "…"
    return line or empty
