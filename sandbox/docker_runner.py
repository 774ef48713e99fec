"""The local Docker engine as a runner (sandbox.runner.Runner), through the docker SDK.

One job's life: create its output volume (a tmpfs capped by the kernel in bytes and files,
nosuid/nodev/noexec) and start a keeper container that holds it mounted; create and start the
job's container (sandbox.specs: every flag on one screen); follow its logs into the run folder;
wait with a hard wall-clock cap measured here (container.wait's timeout is only an HTTP timeout);
kill on the cap or a watcher's word; then copy single files out of the volume through the
engine's archive API (a tar stream parsed here: one regular file, its apparent size capped, no
link, no special file, no setuid bit); finally remove the container, the keeper and the volume,
with whatever the job left in it. Never auto_remove: the engine would drop logs and exit state.
"""

from __future__ import annotations

import functools
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
import structlog

from evaluator.hostile import UnsafeFileError, write_capped
from sandbox import cgroup, specs
from sandbox.engine import docker_client, image_id
from sandbox.errors import SandboxError
from sandbox.logs import LogStreamer
from sandbox.runner import JobHandle, JobOutcome, JobSpec, Watcher

log = structlog.get_logger("sandbox")
T = TypeVar("T")

KILL_WAIT_S = 30.0  # after a kill, how long to wait for the engine to report the exit
LOG_DRAIN_S = 10.0  # after the exit, how long the log thread may take to finish writing
STATS_INTERVAL_S = 2.0  # the stats API is slow; sample it less often than the cgroup
# Go's os.FileMode bits the engine reports in an archive stat: anything but permission bits
# (a directory, link, device, pipe, socket, setuid, setgid, sticky, irregular) is refused.
_GO_NOT_PLAIN = ~0o777 & 0xFFFFFFFF
_ENGINE_ERRORS = (docker.errors.APIError, requests.exceptions.ConnectionError, requests.exceptions.Timeout)


def _engine_errors(method: Callable[..., T]) -> Callable[..., T]:
    """Any failure to talk to the engine inside a runner method is a SandboxError (the loop redoes
    the run), never mistaken for something the run did."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise SandboxError(
                f"lost the Docker engine ({type(exc).__name__}: {exc}); the experiment will be run again"
            ) from None

    return wrapper


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


class _RamPeak:
    """Peak RAM of a running container: its cgroup's working set, or the stats API when the
    cgroup is not visible from here (a remote engine)."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._cgroup: Path | None = None
        self._looked = False
        self._last_stats = 0.0

    def sample(self, container: Any) -> None:
        try:
            if not self._looked:
                self._cgroup, self._looked = cgroup.memory_cgroup_dir(container.id), True
            value = cgroup.working_set_bytes(self._cgroup) if self._cgroup else self._from_stats(container)
        except (OSError, ValueError, *_ENGINE_ERRORS):
            return  # the container just ended and its cgroup went away
        self.peak_bytes = max(self.peak_bytes, value)

    def _from_stats(self, container: Any) -> int:
        now = time.monotonic()
        if now - self._last_stats < STATS_INTERVAL_S:
            return 0
        self._last_stats = now
        stats = container.stats(stream=False, one_shot=True).get("memory_stats", {})
        inner = stats.get("stats", {})
        inactive = inner.get("total_inactive_file", inner.get("inactive_file", 0))
        return max(0, int(stats.get("usage", 0)) - int(inactive))


def _kill(container: Any) -> None:
    try:
        container.kill()
    except docker.errors.APIError:
        pass  # already exited


class DockerRunner:
    name = "docker"
    data_on_host = True

    def __init__(self, client: docker.DockerClient | None = None, tick_s: float = 0.25) -> None:
        self._client = client
        self.tick_s = tick_s

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client()
        return self._client

    @_engine_errors
    def image_id(self, ref: str) -> str:
        """The content id (sha256:...) of `ref`: both jobs of a run start from exactly this image,
        even if the tag moves meanwhile."""
        return image_id(self.client, ref)

    # -- submit --------------------------------------------------------------------------------

    @_engine_errors
    def submit(self, job: JobSpec, watchers: Sequence[Watcher] = ()) -> JobHandle:
        handle = JobHandle(spec=job, watchers=list(watchers))
        try:
            self.client.volumes.create(**specs.output_volume(job))
            keeper = self.client.containers.create(**specs.keeper_config(job))
            handle.extra["keeper"] = keeper
            keeper.start()
            container = self.client.containers.create(**specs.container_config(job))
            handle.native = container
            started: list[Watcher] = []
            handle.extra["started_watchers"] = started
            for watcher in handle.watchers:
                watcher.before_start()
                started.append(watcher)
            container.start()
        except docker.errors.ImageNotFound:
            self._cancel_quietly(handle)
            raise SandboxError(f"image {job.image} not found: run `make images`") from None
        except _ENGINE_ERRORS as exc:
            self._cancel_quietly(handle)
            detail = getattr(exc, "explanation", None) or exc
            raise SandboxError(f"cannot start the {job.role} job of {job.run_id}: {detail}") from None
        except BaseException:
            self._cancel_quietly(handle)
            raise
        handle.started_monotonic = time.monotonic()
        log.info("job.started", run_id=job.run_id, role=job.role, cap_s=job.cap_s)
        return handle

    # -- logs ----------------------------------------------------------------------------------

    @_engine_errors
    def stream_logs(self, handle: JobHandle, path: Path, max_bytes: int) -> None:
        streamer = LogStreamer(handle.native, path, max_bytes)
        handle.extra["streamer"] = streamer
        streamer.start()

    # -- wait ----------------------------------------------------------------------------------

    @_engine_errors
    def wait(self, handle: JobHandle) -> JobOutcome:
        container, job = handle.native, handle.spec
        assert container is not None and handle.started_monotonic is not None, "submit first"
        outcome = JobOutcome()
        ram = _RamPeak()
        t0 = handle.started_monotonic
        deadline = t0 + job.cap_s
        waiter = _Waiter(container)
        waiter.start()
        while not waiter.done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.timed_out = True
                log.warning("job.timeout", run_id=job.run_id, role=job.role, cap_s=job.cap_s)
                _kill(container)
                break
            if waiter.done.wait(min(self.tick_s, remaining)):
                break
            ram.sample(container)
            reason = next((r for w in handle.watchers if (r := w.check(handle))), None)
            if reason is not None:
                outcome.killed_for = reason
                log.warning("job.killed", run_id=job.run_id, role=job.role, reason=reason)
                _kill(container)
                break
        waiter.done.wait(KILL_WAIT_S)
        if waiter.error is not None and not outcome.timed_out and outcome.killed_for is None:
            raise SandboxError(
                f"lost the Docker engine while {container.name} ran ({waiter.error}); the experiment will be run again"
            )
        outcome.seconds = (waiter.ended_at or time.monotonic()) - t0
        streamer: LogStreamer | None = handle.extra.get("streamer")
        if streamer is not None:
            streamer.join(LOG_DRAIN_S)
            outcome.log_truncated = streamer.truncated
        try:
            container.reload()
        except _ENGINE_ERRORS as exc:
            raise SandboxError(
                f"lost the Docker engine after {container.name} ran ({exc}); the experiment will be run again"
            ) from None
        state = container.attrs.get("State", {})
        outcome.exit_code = state.get("ExitCode", waiter.status_code)
        outcome.oom_killed = bool(state.get("OOMKilled"))
        outcome.peak_memory_bytes = ram.peak_bytes
        log.info(
            "job.ended",
            run_id=job.run_id,
            role=job.role,
            exit_code=outcome.exit_code,
            seconds=round(outcome.seconds, 2),
            oom=outcome.oom_killed,
            timed_out=outcome.timed_out,
            killed_for=outcome.killed_for,
        )
        return outcome

    # -- outputs -------------------------------------------------------------------------------

    @_engine_errors
    def fetch_output(self, handle: JobHandle, name: str, dest: Path, max_bytes: int) -> int:
        """Copy `<output_dir>/<name>` to the new host file `dest`; UnsafeFileError when it is
        missing, not a plain regular file, or over max_bytes (apparent size)."""
        if "/" in name or name in ("", ".", ".."):
            raise UnsafeFileError(f"bad file name {name!r}")
        keeper = handle.extra.get("keeper")
        if keeper is None:
            raise UnsafeFileError(f"no {name}: the job's output folder is gone")
        path = f"{handle.spec.output_dir}/{name}"
        try:
            chunks, info = keeper.get_archive(path, chunk_size=1 << 20)
        except docker.errors.NotFound:
            raise UnsafeFileError(f"no {name}") from None
        except _ENGINE_ERRORS as exc:
            raise SandboxError(f"lost the Docker engine while copying {name} out ({exc})") from None
        try:
            mode, size = int(info.get("mode", 0)), int(info.get("size", 0))
            if info.get("linkTarget") or mode & (1 << 27):
                raise UnsafeFileError(f"{name} is a symlink; refused")
            if mode & _GO_NOT_PLAIN:
                raise UnsafeFileError(
                    f"{name} is not a plain regular file (a folder, device, pipe, "
                    "socket or setuid/setgid file); refused"
                )
            if size > max_bytes:
                raise UnsafeFileError(f"{name} is {size} bytes (apparent size), over the {max_bytes}-byte cap")
            return _extract_one(chunks, name, dest, max_bytes)
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()

    # -- removal -------------------------------------------------------------------------------

    @_engine_errors
    def cancel(self, handle: JobHandle) -> None:
        """Kill and remove the job's container, its keeper and its output volume (idempotent)."""
        for watcher in handle.extra.pop("started_watchers", []):
            try:
                watcher.finish()
            except Exception as exc:  # a watcher's bookkeeping never blocks removal
                log.warning("watcher.finish_failed", error=f"{type(exc).__name__}: {exc}")
        job = handle.spec
        for name in (specs.container_name(job.run_id, job.role), specs.container_name(job.run_id, job.role, "keeper")):
            self._remove_container(name)
        streamer: LogStreamer | None = handle.extra.get("streamer")
        if streamer is not None:
            streamer.join(LOG_DRAIN_S)
        handle.extra.pop("keeper", None)
        self._remove_volume(specs.volume_name(job.run_id, job.role))

    @_engine_errors
    def cleanup(self, run_id: str | None = None) -> list[str]:
        """Remove every container and volume the sandbox made (or one run's), found by label."""
        label = specs.LABEL_RUN if run_id is None else f"{specs.LABEL_RUN}={run_id}"
        removed: list[str] = []
        try:
            containers = self.client.containers.list(all=True, filters={"label": label})
            for container in containers:
                if self._remove_container(container.name):
                    removed.append(container.name)
            for volume in self.client.volumes.list(filters={"label": label}):
                if self._remove_volume(volume.name):
                    removed.append(volume.name)
        except _ENGINE_ERRORS as exc:
            raise SandboxError(f"cannot clean up containers ({exc}): is the Docker engine running?") from None
        return removed

    @_engine_errors
    def cleanup_tag(self, tag: str) -> list[str]:
        """Everything of the runs that carry the controller's label overnight.tag=<tag>."""
        label = f"{specs.LABEL_TAG}={tag}"
        try:
            labels = [c.labels for c in self.client.containers.list(all=True, filters={"label": label})]
            labels += [v.attrs.get("Labels") or {} for v in self.client.volumes.list(filters={"label": label})]
        except _ENGINE_ERRORS as exc:
            raise SandboxError(f"cannot clean up containers ({exc}): is the Docker engine running?") from None
        run_ids = sorted({found[specs.LABEL_RUN] for found in labels if specs.LABEL_RUN in found})
        return [name for run_id in run_ids for name in self.cleanup(run_id)]

    def _cancel_quietly(self, handle: JobHandle) -> None:
        """Cancel on the way out of a failure that is already being raised (cleanup by label catches
        whatever this cannot remove now)."""
        try:
            self.cancel(handle)
        except Exception as exc:
            log.warning("job.cancel_failed", run_id=handle.spec.run_id, error=f"{type(exc).__name__}: {exc}")

    def _remove_container(self, name: str) -> bool:
        try:
            self.client.containers.get(name).remove(force=True, v=True)
            return True
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # the engine is already removing it
                return False
            raise SandboxError(f"cannot remove container {name}: {exc.explanation or exc}") from None
        except _ENGINE_ERRORS as exc:
            raise SandboxError(f"cannot remove container {name} ({exc}): is the Docker engine running?") from None

    def _remove_volume(self, name: str) -> bool:
        for attempt in range(20):  # a volume stays "in use" for a moment after its containers go
            try:
                self.client.volumes.get(name).remove(force=True)
                return True
            except docker.errors.NotFound:
                return False
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and attempt < 19:
                    time.sleep(0.1)
                    continue
                raise SandboxError(f"cannot remove volume {name}: {exc.explanation or exc}") from None
            except _ENGINE_ERRORS as exc:
                raise SandboxError(f"cannot remove volume {name} ({exc}): is the Docker engine running?") from None
        return False


class _ChunkReader:
    """A file-like object over an iterator of byte chunks (tarfile's stream mode reads from it)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def _extract_one(chunks: Iterator[bytes], name: str, dest: Path, max_bytes: int) -> int:
    """The single regular-file member `name` of a tar stream, written to `dest` under the cap."""
    try:
        with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|") as tar:  # type: ignore[call-overload]
            member = tar.next()
            if member is None or member.name != name:
                raise UnsafeFileError(f"the engine's archive of {name} does not hold it")
            if not member.isreg() or member.mode & (stat.S_ISUID | stat.S_ISGID):
                raise UnsafeFileError(f"{name} is not a plain regular file; refused")
            if member.size > max_bytes:
                raise UnsafeFileError(f"{name} is {member.size} bytes, over the {max_bytes}-byte cap")
            source = tar.extractfile(member)
            assert source is not None
            written = write_capped(iter(lambda: source.read(1 << 20), b""), dest, max_bytes, name)
            if written != member.size:
                Path(dest).unlink(missing_ok=True)
                raise UnsafeFileError(f"{name} was cut short while copied ({written} of {member.size} bytes)")
            if tar.next() is not None:
                Path(dest).unlink(missing_ok=True)
                raise UnsafeFileError(f"the engine's archive of {name} holds more than that file")
            return written
    except tarfile.TarError as exc:
        raise UnsafeFileError(f"{name} could not be read from the engine's archive ({exc})") from None
