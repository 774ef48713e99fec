"""A job's log, live: a thread waits for the job's container to start, follows its log through
the API (`follow=true`) and appends it to the run's log file as it comes, up to a size cap, with
the same truncation marker as the Docker backend."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from sandbox.kubernetes.api import TIMEOUT, message_of
from sandbox.logs import TRUNCATED

POLL_S = 0.25
RETRIES = 3
SILENT_MAX_S = 24 * 3600  # a log may stay silent this long (a tuple of numbers is required)


class LogFollower(threading.Thread):
    def __init__(
        self, core: Any, namespace: str, selector: str, path: Path, max_bytes: int, done: threading.Event
    ) -> None:
        super().__init__(name=f"logs-{path.name}", daemon=True)
        self.core = core
        self.namespace = namespace
        self.selector = selector
        self.path = path
        self.max_bytes = max_bytes
        self.done = done  # set once the job has ended (or is cancelled) and the log is complete
        self.written = 0
        self.truncated = False

    def begin(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path.touch()
        self.start()

    def run(self) -> None:
        with self.path.open("ab", buffering=0) as out:
            try:
                pod = self._started_pod()
                if pod is None:
                    return
                # The stream ends when the container ends or its pod is deleted (cancel).
                response = self.core.read_namespaced_pod_log(
                    pod,
                    self.namespace,
                    follow=True,
                    _preload_content=False,
                    _request_timeout=(TIMEOUT[0], SILENT_MAX_S),
                )
                for chunk in response.stream(1 << 16):
                    self._write(out, chunk)
            except Exception as exc:  # the API went away, or cancel cut the stream
                if not self.done.is_set():
                    out.write(f"\n[overnight: log stream ended: {type(exc).__name__}]\n".encode())

    def _started_pod(self) -> str | None:
        """The name of the job's pod once its container runs (or ran); None if the job ended
        without one."""
        failures = 0
        while True:
            try:
                pods = self.core.list_namespaced_pod(
                    self.namespace, label_selector=self.selector, _request_timeout=TIMEOUT
                ).items
                failures = 0
            except Exception as exc:
                failures += 1
                if failures >= RETRIES:
                    raise RuntimeError(message_of(exc)) from None
                pods = []
            for pod in pods:
                statuses = pod.status.container_statuses if pod.status else None
                if statuses and (statuses[0].state.running or statuses[0].state.terminated):
                    return str(pod.metadata.name)
            if self.done.is_set():
                return None
            time.sleep(POLL_S)

    def _write(self, out: Any, chunk: bytes) -> None:
        if self.truncated:
            return  # keep draining the stream, drop the rest
        room = self.max_bytes - self.written
        if len(chunk) > room:
            out.write(chunk[:room] + TRUNCATED.format(cap=self.max_bytes).encode())
            self.written = self.max_bytes
            self.truncated = True
            return
        out.write(chunk)
        self.written += len(chunk)
