"""Live container logs: a thread follows the container's output and appends it to a file in
the run folder as it comes (so `tail -f` works), up to a size cap."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

TRUNCATED = "\n[overnight: log truncated at {cap} bytes; the rest was dropped]\n"


class LogStreamer:
    def __init__(self, container: Any, path: Path, max_bytes: int) -> None:
        self.container = container
        self.path = path
        self.max_bytes = max_bytes
        self.written = 0
        self.truncated = False
        self._thread = threading.Thread(target=self._run, name=f"logs-{path.name}", daemon=True)

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path.touch()
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            stream = self.container.logs(stream=True, follow=True, stdout=True, stderr=True)
            with self.path.open("ab", buffering=0) as out:
                for chunk in stream:
                    self._write(out, chunk)
        except Exception as exc:  # the engine went away or the container was removed
            with self.path.open("ab") as out:
                out.write(f"\n[overnight: log stream ended: {type(exc).__name__}]\n".encode())

    def _write(self, out: Any, chunk: bytes) -> None:
        if self.truncated:
            return  # keep draining so the engine is not blocked, but drop it
        room = self.max_bytes - self.written
        if len(chunk) > room:
            out.write(chunk[:room] + TRUNCATED.format(cap=self.max_bytes).encode())
            self.written = self.max_bytes
            self.truncated = True
            return
        out.write(chunk)
        self.written += len(chunk)


def last_line(path: Path, max_chars: int = 200) -> str:
    """The last non-empty line of a log, printable characters only, for a one-line reason."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 8192))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for line in reversed(tail.replace("\r", "\n").splitlines()):
        clean = "".join(ch for ch in line if ch.isprintable()).strip()
        if clean and not clean.startswith("[overnight:"):
            return clean[:max_chars]
    return ""
