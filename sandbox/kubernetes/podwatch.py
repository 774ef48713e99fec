"""Watching the pod of one Job: a thread lists the pods by label, then follows the API's watch
stream, and keeps what the runner's wait() needs (the latest pod, when it was first seen
running, when it ended or vanished). A broken connection is retried a few times, then reported:
the run cannot be trusted any more and is redone."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog

from sandbox.kubernetes.api import TIMEOUT, message_of, status_of

log = structlog.get_logger("sandbox")

WATCH_S = 30  # one watch request lasts this long on the server, then it is renewed
RETRIES = 3
RETRY_S = 1.0
# Waiting reasons that will not fix themselves: the job cannot start.
FATAL_WAITING = {"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"}


@dataclass
class PodView:
    """What is known of the job's pod at one moment."""

    pod: Any = None  # kubernetes.client.V1Pod, the latest seen
    started_at: float | None = None  # monotonic, when first seen running (or already ended)
    ended_at: float | None = None  # monotonic, when first seen ended or gone
    gone: bool = False  # it existed and was deleted
    error: str | None = None  # the API connection broke for good

    def state(self) -> Any:
        statuses = (self.pod.status.container_statuses or []) if self.pod and self.pod.status else []
        return statuses[0].state if statuses else None

    def terminated(self) -> Any:
        state = self.state()
        return state.terminated if state is not None else None

    def waiting(self) -> tuple[str, str] | None:
        state = self.state()
        if state is None or state.waiting is None:
            return None
        return state.waiting.reason or "", state.waiting.message or ""

    def unschedulable(self) -> str | None:
        if self.pod is None or self.pod.status is None:
            return None
        for condition in self.pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return condition.message or condition.reason or "unschedulable"
        return None

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


class PodWatch(threading.Thread):
    def __init__(self, core: Any, namespace: str, selector: str) -> None:
        super().__init__(name=f"watch-{selector}", daemon=True)
        self.core = core
        self.namespace = namespace
        self.selector = selector
        self.changed = threading.Condition()
        self._view = PodView()
        self._stop = threading.Event()

    def view(self) -> PodView:
        with self.changed:
            return PodView(**vars(self._view))

    def stop(self) -> None:
        self._stop.set()

    def wait_change(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)

    def run(self) -> None:
        from kubernetes import watch

        failures = 0
        while not self._stop.is_set():
            try:
                listed = self.core.list_namespaced_pod(
                    self.namespace, label_selector=self.selector, _request_timeout=TIMEOUT
                )
                for pod in listed.items:
                    self._apply("ADDED", pod)
                stream = watch.Watch().stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=WATCH_S,
                    _request_timeout=(TIMEOUT[0], WATCH_S + 15),
                )
                for event in stream:
                    failures = 0
                    self._apply(event["type"], event["object"])
                    if self._stop.is_set():
                        break
                failures = 0
            except Exception as exc:
                if self._stop.is_set():
                    return
                if status_of(exc) == 410:  # the watch's start is too old: list again
                    continue
                failures += 1
                log.warning("pod_watch.error", selector=self.selector, error=message_of(exc), attempt=failures)
                if failures >= RETRIES:
                    with self.changed:
                        self._view.error = message_of(exc)
                        self.changed.notify_all()
                    return
                self._stop.wait(RETRY_S)

    def _apply(self, kind: str, pod: Any) -> None:
        now = time.monotonic()
        with self.changed:
            view = self._view
            view.pod = pod
            state = view.state()
            if state is not None and (state.running or state.terminated):
                view.started_at = view.started_at or now
            phase = pod.status.phase if pod.status else None
            if kind == "DELETED" or (state is not None and state.terminated) or phase in ("Succeeded", "Failed"):
                view.ended_at = view.ended_at or now
            view.gone = view.gone or kind == "DELETED"
            self.changed.notify_all()
