"""structlog setup: what a machine reads. One JSON object per line in
`runs/<tag>/controller.log.jsonl`; the console (controller/status.py) is for people."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TextIO

import structlog

LOG_NAME = "controller.log.jsonl"
_open_files: list[TextIO] = []


def _processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.dict_tracebacks,
        structlog.processors.JSONRenderer(default=str),
    ]


def configure_logging(tag_dir: Path) -> Path:
    """Send every structlog event (the controller's, the agents', the sandbox's) to the tag's
    JSON log, appending. Returns the log's path."""
    tag_dir.mkdir(parents=True, exist_ok=True)
    path = tag_dir / LOG_NAME
    close_logging()
    f = open(path, "a", encoding="utf-8", buffering=1)
    _open_files.append(f)
    structlog.configure(
        processors=_processors(),
        logger_factory=structlog.WriteLoggerFactory(file=f),
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


def _drop(logger: object, method: str, event: dict) -> dict:
    raise structlog.DropEvent


def close_logging() -> None:
    while _open_files:
        _open_files.pop().close()
