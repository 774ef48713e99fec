"""The host's side of a fetch: the byte stream the fetch program (sandbox.kubernetes.podfetch)
wrote in the fetch pod arrives here in pieces and becomes ONE new file, or nothing.

The file is hostile input: written to a new `dest` (O_EXCL, no link followed), never more than
max_bytes whatever the stream claims, and kept only when its length and sha256 match the trailer
(a broken transfer is the backend's problem: SandboxError; a refusal is the file's: UnsafeFileError).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from evaluator.hostile import UnsafeFileError
from sandbox.errors import SandboxError

PROGRAM = (Path(__file__).with_name("podfetch.py")).read_text()
HEADER_MAX = 1024
TRAILER_LEN = len(b"END ") + 64 + 1


def fetch_command(directory: str, name: str, max_bytes: int) -> list[str]:
    """What the runner execs in the fetch pod."""
    return ["python", "-I", "-S", "-c", PROGRAM, directory, name, str(max_bytes)]


class Receiver:
    """Feed it the stream piece by piece, then call finish(); dest exists only after a good finish."""

    def __init__(self, dest: Path, name: str, max_bytes: int) -> None:
        self.dest = dest
        self.name = name
        self.max_bytes = max_bytes
        self._head = b""
        self._size: int | None = None
        self._left = 0
        self._tail = b""
        self._digest = hashlib.sha256()
        self._out: int | None = None

    def feed(self, data: bytes) -> None:
        if self._size is None:
            self._head += data
            if b"\n" not in self._head:
                if len(self._head) > HEADER_MAX:
                    self._fail(SandboxError(f"fetch of {self.name}: no header from the fetch pod"))
                return
            line, _, data = self._head.partition(b"\n")
            self._header(line)
        if self._left > 0 and data:
            part, data = data[: self._left], data[self._left :]
            assert self._out is not None
            os.write(self._out, part)
            self._digest.update(part)
            self._left -= len(part)
        self._tail += data
        if len(self._tail) > TRAILER_LEN:
            self._fail(SandboxError(f"fetch of {self.name}: more bytes than announced"))

    def _header(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if text.startswith("REFUSED "):
            reason = "".join(ch for ch in text[8:] if ch.isprintable())[:300]
            raise UnsafeFileError(reason)
        word, _, number = text.partition(" ")
        if word != "OK" or not number.isdigit():
            self._fail(SandboxError(f"fetch of {self.name}: unexpected header from the fetch pod"))
        size = int(number)
        if size > self.max_bytes:
            raise UnsafeFileError(f"{self.name} is {size} bytes, over the {self.max_bytes}-byte cap")
        self._size = self._left = size
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._out = os.open(self.dest, flags, 0o644)

    def finish(self) -> int:
        """The size of the file written, once the stream is complete and checked."""
        if self._size is None:
            self._fail(SandboxError(f"fetch of {self.name}: the fetch pod sent nothing usable"))
        expected = b"END " + self._digest.hexdigest().encode() + b"\n"
        if self._left or self._tail != expected:
            self._fail(SandboxError(f"fetch of {self.name}: the transfer was cut or damaged"))
        assert self._out is not None and self._size is not None
        os.close(self._out)
        self._out = None
        return self._size

    def abort(self) -> None:
        if self._out is not None:
            os.close(self._out)
            self._out = None
            self.dest.unlink(missing_ok=True)

    def _fail(self, error: Exception) -> None:
        self.abort()
        raise error
