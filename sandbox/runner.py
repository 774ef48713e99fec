"""The runner interface: how the jobs of one experiment are run, whatever runs them.

One experiment is two jobs, train then eval; `sandbox.experiment` orchestrates them and owns
every decision (caps, what is fetched, what a status means). A backend only runs jobs, through
five verbs:

    submit(job, watchers)          create and start the job (its writable output folder too);
                                   the watchers get their before_start just before it starts
    stream_logs(handle, path, cap) follow the job's output live into `path`, up to `cap` bytes
    wait(handle)                   until the job exits, its hard cap passes or a watcher objects
                                   (then kill it)
    fetch_output(handle, name, dest, max_bytes)
                                   copy ONE regular file from the job's output folder to the host
                                   file `dest`, as hostile input (no link followed, size capped,
                                   special files and setuid bits refused)
    cancel(handle)                 kill the job and remove everything it had (idempotent)

plus `cleanup(run_id)` for what a crashed controller left behind, found by label, and
`image_id(ref)`, the identity of the image a run used (recorded; replay refuses another).

Backends: `sandbox.docker_runner.DockerRunner` (the local engine) and, for clusters, a
Kubernetes backend. The output folder of a job is size-limited by the backend's kernel-side
mechanism (a size-capped tmpfs volume for Docker, a size-limited volume for Kubernetes); the host
never walks it. Nothing the job wrote stays anywhere once `cancel` returns, except the files
fetched and the logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Role = Literal["train", "eval"]


@dataclass(frozen=True)
class JobSpec:
    """Everything a backend needs to run one job. Built by sandbox.specs, nowhere else."""

    run_id: str  # unique per experiment, docker-name safe; names and labels everything of the job
    role: Role
    image: str  # the image content id (Docker) or a registry reference (clusters)
    command: tuple[str, ...]
    environment: Mapping[str, str]  # the complete environment; nothing comes from the host's
    data_dir: Path  # the prepared data directory (host path for Docker)
    data_parts: tuple[str, ...]  # entries of the data dir the job sees read-only (evaluator.layout names)
    # container path -> host file, mounted read-only (train.py; for eval, the artifact fetched from
    # the train job). A backend that cannot mount host files (a cluster) may serve an input that
    # was fetched from the same run's train job from that job's output volume, read-only.
    inputs: Mapping[str, Path]
    output_dir: str  # the job's one writable folder (container path); the backend caps its size
    output_max_bytes: int
    output_max_files: int
    cap_s: float  # hard wall clock, measured by the host from the job's start; killed there
    memory_gb: float  # RAM limit (container memory, no swap)
    gpu: int | None = None  # the one GPU the job may use
    cpuset: str | None = None  # pinned CPUs, e.g. "0-1" (CPU slots)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class JobOutcome:
    exit_code: int | None = None
    seconds: float = 0.0  # wall clock from start to exit (or kill), measured by the host
    timed_out: bool = False  # killed at cap_s
    killed_for: str | None = None  # a watcher's reason (VRAM over its cap, ...)
    oom_killed: bool = False
    log_truncated: bool = False
    peak_memory_bytes: int = 0  # peak RAM of the job when the backend can see it, else 0


class Watcher(Protocol):
    """Looks at a running job every tick; a reason string kills it (e.g. the NVML watchdog)."""

    def before_start(self) -> None: ...

    def check(self, handle: JobHandle) -> str | None: ...

    def finish(self) -> None: ...


@dataclass
class JobHandle:
    """What submit returns; opaque to the orchestrator except for the spec and start time."""

    spec: JobSpec
    native: Any = None  # the backend's own object (a container, a pod name)
    started_monotonic: float | None = None
    watchers: Sequence[Watcher] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # backend state (log streamer, keeper, ...)


class Runner(Protocol):
    """A backend that runs jobs. Every method raises sandbox.errors.SandboxError for a problem of
    the backend itself (engine or API unreachable, image missing): never for what the job did."""

    name: str
    # True when jobs mount JobSpec.data_dir from this machine (so it is checked here first); a
    # cluster's data lies on its own volume, checked there when the night starts.
    data_on_host: bool

    def image_id(self, ref: str) -> str: ...  # what exactly runs: a content id where the backend has one

    def submit(self, job: JobSpec, watchers: Sequence[Watcher] = ()) -> JobHandle: ...

    def stream_logs(self, handle: JobHandle, path: Path, max_bytes: int) -> None: ...

    def wait(self, handle: JobHandle) -> JobOutcome: ...

    def fetch_output(self, handle: JobHandle, name: str, dest: Path, max_bytes: int) -> int: ...

    def cancel(self, handle: JobHandle) -> None: ...

    def cleanup(self, run_id: str | None = None) -> list[str]: ...
