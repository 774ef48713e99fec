"""structlog setup: what a machine reads. One JSON object per line in
`runs/<tag>/controller.log.jsonl`; the console (controller/status.py) is for people."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from pathlib import Path

import structlog
import structlog.tracebacks
from structlog.typing import EventDict

LOG_NAME = "controller.log.jsonl"


class LineFile:
    """The log, one whole line per write. A line that cannot be written (a full disk) is dropped,
    never half-written and never raised into the loop; the first failure is said on stderr."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.failing = False

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        size = os.fstat(self.fd).st_size
        try:
            if os.write(self.fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.failing = False
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, size)  # no torn line
            if not self.failing:
                self.failing = True
                print(
                    f"warning: cannot write {self.name} ({exc.strerror}); log lines are dropped until it can",
                    file=sys.stderr,
                    flush=True,
                )

    def flush(self) -> None:
        pass

    def close(self) -> None:
        os.close(self.fd)


_open_files: list[LineFile] = []


# Tracebacks as JSON, WITHOUT the frames' local variables: structlog's default dict_tracebacks
# shows them, and a frame of an HTTP client holds the request, headers (an API key) included.
TRACEBACKS = structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))


def _processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        TRACEBACKS,
        structlog.processors.JSONRenderer(default=str),
    ]


def configure_logging(tag_dir: Path) -> Path:
    """Send every structlog event (the controller's, the agents', the sandbox's) to the tag's
    JSON log, appending. Returns the log's path."""
    tag_dir.mkdir(parents=True, exist_ok=True)
    path = tag_dir / LOG_NAME
    close_logging()
    f = LineFile(path)
    _open_files.append(f)
    structlog.configure(
        processors=_processors(),
        # structlog types `file` as TextIO but its WriteLogger only calls write() and flush()
        logger_factory=structlog.WriteLoggerFactory(file=f),  # type: ignore[arg-type]
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    return path


def configure_quiet() -> None:
    """For commands that only read (status, logs, report): structured events are dropped."""
    close_logging()
    structlog.configure(
        processors=[_drop],
        logger_factory=structlog.ReturnLoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        cache_logger_on_first_use=False,
    )


def _drop(logger: object, method: str, event: EventDict) -> EventDict:
    raise structlog.DropEvent


def close_logging() -> None:
    while _open_files:
        _open_files.pop().close()
