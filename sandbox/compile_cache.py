"""The night's warm compile cache: torch.compile's caches, written once by trusted code and handed
to every train job as a read-only copy.

A cold torch.compile of the seed costs its first step 45-90 s on an H100 (an estimate) and ~25 s
of a tiny model on 2 CPU cores (measured), every run, because each train job starts on a fresh
tmpfs. Sharing one writable cache folder between the train jobs of a night would fix that and
break threat points 6 and 12: experiment n could leave anything there (weights, a half-trained
model, precomputed results) for experiment n+1 to read, carrying compute across runs. So:

- One writer, and it is trusted. `warm_compile_cache` runs the night's seed train.py (the user's
  own `programs/<name>/train.py`, never a file the agent edited) once, as a train job locked down
  like any other (sandbox.specs.warmup_job), told that its deadline has passed so it compiles its
  first step, exports and exits. Its trusted container command then packs what torch.compile
  cached (sandbox.specs.COMPILE_CACHE_DIR) into one tar in /out, which the host copies out as
  hostile bytes (one regular file, size capped at MAX_CACHE_BYTES) and never opens.
- Readers get a copy. A train job given the file (ExperimentSpec.compile_cache) has it mounted
  read-only and unpacked by its trusted container command into its own tmpfs before train.py
  starts: the agent may change its copy at will; the copy goes with the container. (A cache
  folder mounted read-only in place does not work: Inductor writes lock files even on a hit.)
- Every run of the night gets the same file, the baseline included, so the comparison stays
  fair; the file holds compiled kernels of the seed, no weights and nothing from validation data.
- Never given to an eval job (sandbox.specs.eval_job takes no cache), removed at the end of the
  night (`remove_compile_cache`); the warm-up job's containers and volume carry the night's
  labels, so cleanup by label finds them after a crash.

Docker backend only: a cluster backend cannot mount a host file of this size (its jobs compile
cold, as before).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict

from evaluator.hostile import UnsafeFileError
from evaluator.profiles import UnknownProfileError, get_profile
from sandbox import specs
from sandbox.errors import SandboxError
from sandbox.limits import GiB, Limits
from sandbox.logs import last_line
from sandbox.rundir import check_data_dir, prepare_run_dir
from sandbox.runner import Runner

log = structlog.get_logger("sandbox")

CACHE_FILE = specs.COMPILE_CACHE_NAME  # in the night's folder (runs/<tag>/)
WARMUP_DIR = "compile-cache-warmup"  # the warm-up job's run folder (train.py, train.log)
MAX_CACHE_BYTES = 1 * GiB  # apparent size; each train job unpacks it into its tmpfs (its RAM)
RUNNERS = ("docker",)  # backends that can mount the cache file into a job


class CacheWarmup(BaseModel):
    """What came of warming: `path` is the file to give every train job of the night, or None."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["ok", "empty", "failed", "unsupported"]
    path: Path | None = None
    bytes: int = 0
    sha256: str | None = None  # of the file every run of the night gets (for the records)
    seconds: float = 0.0  # wall clock of the warm-up job (start-up, a cold compile, export)
    reason: str | None = None  # one line for a person when there is no cache


def cache_file(tag_dir: Path) -> Path:
    return Path(tag_dir) / CACHE_FILE


def warm_compile_cache(
    *,
    seed_train_py: Path,
    tag_dir: Path,
    run_id: str,
    profile: str,
    data_dir: Path,
    image: str = specs.DEFAULT_IMAGE,
    gpu: int | None = None,
    memory_gb: float = 8.0,
    labels: dict[str, str] | None = None,
    cpuset: str | None = None,
    runner: Runner | None = None,
) -> CacheWarmup:
    """Run the trusted seed once and keep its compile cache at `cache_file(tag_dir)`. Never raises
    for what the seed did (no cache then: every run compiles cold, as without this); raises
    SandboxError for a setup or backend problem, like run_experiment."""
    if runner is None:
        from sandbox.experiment import default_runner

        runner = default_runner()
    if runner.name not in RUNNERS:
        return CacheWarmup(status="unsupported", reason=f"the {runner.name} backend cannot mount the cache")
    try:
        limits = Limits.for_profile(get_profile(profile))
    except UnknownProfileError as exc:
        raise SandboxError(str(exc)) from None
    final = cache_file(tag_dir)
    remove_compile_cache(tag_dir)
    paths = prepare_run_dir(Path(tag_dir) / WARMUP_DIR, seed_train_py, limits.train_py_max_bytes)
    job = specs.warmup_job(
        run_id=run_id,
        image=runner.image_id(image),
        profile=profile,
        gpu=gpu,
        memory_gb=memory_gb,
        data_dir=check_data_dir(data_dir),
        seed_train_py=paths.train_py,
        limits=limits,
        labels=labels or {},
        cpuset=cpuset,
    )
    runner.cleanup(run_id)
    log.info("compile_cache.warming", run_id=run_id, profile=profile, gpu=gpu)
    handle = runner.submit(job)
    try:
        runner.stream_logs(handle, paths.train_log, limits.log_max_bytes)
        outcome = runner.wait(handle)
        if outcome.exit_code != 0 or outcome.timed_out or outcome.oom_killed or outcome.killed_for:
            why = (
                "killed at its cap"
                if outcome.timed_out
                else "killed by its memory limit"
                if outcome.oom_killed
                else f"exit {outcome.exit_code}: {last_line(paths.train_log)[:200]}"
            )
            return CacheWarmup(status="failed", seconds=outcome.seconds, reason=f"the seed's warm-up failed ({why})")
        partial = final.with_name(f".{CACHE_FILE}.partial")
        partial.unlink(missing_ok=True)
        try:
            size = runner.fetch_output(handle, CACHE_FILE, partial, MAX_CACHE_BYTES)
        except UnsafeFileError as exc:
            partial.unlink(missing_ok=True)
            if str(exc) == f"no {CACHE_FILE}":
                return CacheWarmup(
                    status="empty",
                    seconds=outcome.seconds,
                    reason="the seed compiled nothing here (it compiles on CUDA only)",
                )
            return CacheWarmup(status="failed", seconds=outcome.seconds, reason=f"the cache was refused: {exc}")
        os.replace(partial, final)
        final.chmod(0o644)
    finally:
        runner.cancel(handle)
        runner.cleanup(run_id)
    log.info("compile_cache.ready", run_id=run_id, bytes=size, seconds=round(outcome.seconds, 1))
    return CacheWarmup(status="ok", path=final, bytes=size, sha256=_sha256(final), seconds=outcome.seconds)


def check_cache_file(path: Path) -> Path:
    """The cache a run was given, as the host path to mount; SandboxError when it is gone."""
    path = Path(path).absolute()
    if path.is_symlink() or not path.is_file():
        raise SandboxError(
            f"the night's compile cache {path} is missing: warm it again "
            "(sandbox.compile_cache.warm_compile_cache) or run without it"
        )
    return path


def remove_compile_cache(tag_dir: Path) -> bool:
    """Remove the night's cache (at the end of the night, or before warming again)."""
    removed = False
    for path in (cache_file(tag_dir), cache_file(tag_dir).with_name(f".{CACHE_FILE}.partial")):
        if path.is_symlink() or path.exists():
            path.unlink()
            removed = True
    return removed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
