"""One container's life, start to removal: create, start, stream logs, watch, wait with a hard
wall-clock cap measured here (container.wait's timeout is only an HTTP timeout), kill, inspect,
remove. Never auto_remove: the engine would drop the logs and the exit state with it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors
import structlog

from sandbox.errors import SandboxError
from sandbox.logs import LogStreamer

log = structlog.get_logger("sandbox")

KILL_WAIT_S = 30.0  # after a kill, how long to wait for the engine to report the exit
LOG_DRAIN_S = 10.0  # after the exit, how long the log thread may take to finish writing


class Watcher(Protocol):
    """Something that looks at a running container every tick; a reason string kills it."""

    def before_start(self) -> None: ...

    def check(self, container: Any) -> str | None: ...

    def finish(self) -> None: ...


@dataclass
class Outcome:
    exit_code: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    killed_for: str | None = None  # a watcher's reason
    oom_killed: bool = False
    log_truncated: bool = False


class _Waiter(threading.Thread):
    """Blocks on the engine's wait in its own thread; records when the exit was seen."""

    def __init__(self, container: Any) -> None:
        super().__init__(name=f"wait-{container.name}", daemon=True)
        self.container = container
        self.done = threading.Event()
        self.ended_at: float | None = None
        self.status_code: int | None = None
        self.error: str | None = None  # the engine connection broke: the exit seen is not to be trusted

    def run(self) -> None:
        try:
            self.status_code = int(self.container.wait()["StatusCode"])
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ended_at = time.monotonic()
            self.done.set()


def _kill(container: Any) -> None:
    try:
        container.kill()
    except docker.errors.APIError:
        pass  # already exited


def remove(container: Any) -> None:
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    except Exception as exc:  # APIError, or the engine unreachable: cleanup by label removes it later
        log.warning("container.remove_failed", name=container.name, error=str(exc))


def run(client: docker.DockerClient, config: dict[str, Any], *, cap_s: float, log_path: Path,
        log_max_bytes: int, watchers: list[Watcher], tick_s: float = 0.25) -> Outcome:
    """Run one container from `config` (sandbox.specs) to its end and remove it."""
    outcome = Outcome()
    container = client.containers.create(**config)
    streamer = LogStreamer(container, log_path, log_max_bytes)
    started_watchers: list[Watcher] = []
    try:
        for watcher in watchers:
            watcher.before_start()
            started_watchers.append(watcher)
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot start {container.name}: {exc.explanation or exc}") from None
        t0 = time.monotonic()
        deadline = t0 + cap_s
        log.info("container.started", name=container.name, cap_s=cap_s)
        streamer.start()
        waiter = _Waiter(container)
        waiter.start()
        while not waiter.done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.timed_out = True
                log.warning("container.timeout", name=container.name, cap_s=cap_s)
                _kill(container)
                break
            if waiter.done.wait(min(tick_s, remaining)):
                break
            reason = next((r for w in watchers if (r := w.check(container))), None)
            if reason is not None:
                outcome.killed_for = reason
                log.warning("container.killed", name=container.name, reason=reason)
                _kill(container)
                break
        waiter.done.wait(KILL_WAIT_S)
        if waiter.error is not None and not outcome.timed_out and outcome.killed_for is None:
            raise SandboxError(f"lost the Docker engine while {container.name} ran ({waiter.error}); "
                               "the experiment will be run again")
        outcome.seconds = (waiter.ended_at or time.monotonic()) - t0
        streamer.join(LOG_DRAIN_S)
        outcome.log_truncated = streamer.truncated
        container.reload()
        state = container.attrs.get("State", {})
        outcome.exit_code = state.get("ExitCode", waiter.status_code)
        outcome.oom_killed = bool(state.get("OOMKilled"))
        log.info("container.ended", name=container.name, exit_code=outcome.exit_code,
                 seconds=round(outcome.seconds, 2), oom=outcome.oom_killed,
                 timed_out=outcome.timed_out, killed_for=outcome.killed_for)
        return outcome
    finally:
        for watcher in started_watchers:
            watcher.finish()
        remove(container)
        streamer.join(LOG_DRAIN_S)
