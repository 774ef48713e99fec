"""The CPU preflight of a proposal, as a runner for the controller's loop (LoopDeps.preflight).

    SandboxPreflight(backend)(spec) -> ExperimentResult | None

One locked-down CPU container (sandbox.specs.preflight_job: the evaluator image, no network,
read-only root, no capabilities, no GPU, the train split, tokenizer and manifest only) runs
`python -m evaluator.preflight`: the proposal's train.py for two steps under the night's
preflight profile, then the evaluator's artifact checks and the causality probe on train rows.
Its output is streamed into <run_dir>/preflight.log (capped) and its verdict, preflight.json,
is fetched as hostile input (size-capped, validated, its reason cleaned to one line).

What the loop gets back:
- ExperimentResult(status="crash" | "rejected"): the proposal stops here, before it takes a slot
  (train.py crashed or left no model; the archive, graph or probe refused the model);
- None: go on to a slot. That is a pass, and also every case without a binding verdict (the
  preflight timed out, ran out of memory, was killed, or wrote no usable preflight.json):
  timing is advisory, and the slot run re-checks everything in the trusted evaluator anyway;
- SandboxError: the preflight could not run at all (engine, image, data); the loop runs anyway.

Backends: the local Docker engine. A cluster backend is refused when the preflight is made
(its jobs would need the night's CPU pool and a way to mount train.py; not built yet).
"""

from __future__ import annotations

import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import ValidationError

from evaluator import layout
from evaluator.hostile import UnsafeFileError, clean_line, read_regular
from evaluator.preflight import EXIT_SETUP, RECORD_NAME
from evaluator.profiles import PREFLIGHT_SUFFIX, UnknownProfileError, get_profile
from evaluator.records import PreflightRecord
from sandbox import specs
from sandbox.errors import SandboxError
from sandbox.experiment import RUN_ID
from sandbox.limits import GiB, Limits
from sandbox.logs import last_line
from sandbox.result import ExperimentResult, ExperimentSpec
from sandbox.rundir import RunPaths, prepare_run_dir
from sandbox.runner import JobHandle, JobOutcome, Runner

log = structlog.get_logger("sandbox")

RECORD_MAX_BYTES = 64 * 1024
LOG_MAX_BYTES = 4 * 2**20  # preflight.log: train.py's two steps and the summary lines
START_SLACK_S = 15.0  # the container's start and Python's imports, on top of train.py's cap and the checks
STOPS = ("crash", "rejected")  # the verdicts that stop a proposal; the rest are advisory


@dataclass
class PreflightVerdict:
    """What one preflight came to: the validated record (None when there was no usable one),
    the job's outcome as the host measured it, and a line saying why there is no record."""

    record: PreflightRecord | None
    outcome: JobOutcome
    seconds: float  # wall clock of the whole check on the host, container creation included
    note: str | None = None
    image_id: str | None = None

    @property
    def stops(self) -> bool:
        return self.record is not None and self.record.status in STOPS


class SandboxPreflight:
    """A Runner (spec -> ExperimentResult | None) that runs the CPU preflight on `backend`."""

    def __init__(self, backend: Runner) -> None:
        if backend.name != "docker":
            raise SandboxError(
                f"the CPU preflight runs on the docker backend only, not {backend.name}: run with --preflight false"
            )
        self.backend = backend
        self.last: PreflightVerdict | None = None  # the latest verdict (for benchmarks and tests)

    def __call__(self, spec: ExperimentSpec) -> ExperimentResult | None:
        verdict = self.check(spec)
        record = verdict.record
        if record is None or not verdict.stops:
            log.info(
                "preflight.go_on",
                run_id=spec.run_id,
                status=record.status if record else None,
                note=verdict.note,
                seconds=round(verdict.seconds, 2),
            )
            return None
        limits = preflight_limits(spec.profile)
        reason = clean_line(f"CPU preflight: {record.reason or record.status}", 300)
        return ExperimentResult(
            status=record.status,
            reason=reason,
            train_seconds=verdict.outcome.seconds,  # type: ignore[arg-type]
            train_budget_s=limits.train_budget_s,
            train_cap_s=limits.train_cap_s,
            peak_memory_gb=verdict.outcome.peak_memory_bytes / GiB,
            memory_kind="ram",
            image_id=verdict.image_id,
            train_exit_code=record.train_exit_code,
            run_dir=Path(spec.run_dir).resolve(),
        )

    def check(self, spec: ExperimentSpec) -> PreflightVerdict:
        """Run the preflight of `spec` (its train.py, profile, data, image, seed and memory; never
        its GPU or cpuset) and read its verdict; SandboxError when it could not run."""
        if not RUN_ID.match(spec.run_id):
            raise SandboxError(f"run id {spec.run_id!r} must be letters, digits, '_', '.' or '-'")
        profile_name = preflight_profile_name(spec.profile)
        limits = preflight_limits(spec.profile)
        started = time.monotonic()
        image = self.backend.image_id(spec.image)
        data_dir = check_train_data(spec.data_dir)
        paths = prepare_run_dir(spec.run_dir, spec.train_py, limits.train_py_max_bytes)
        job = specs.preflight_job(
            run_id=spec.run_id,
            image=image,
            preflight_profile=profile_name,
            seed=spec.seed,
            memory_gb=spec.memory_limit_gb,
            data_dir=data_dir,
            train_py=paths.train_py,
            limits=limits,
            check_cap_s=get_profile(profile_name).eval_timeout_s + START_SLACK_S,
            labels=spec.labels,
        )
        self.backend.cleanup(spec.run_id)
        log.info("preflight.start", run_id=spec.run_id, profile=profile_name, image=image[:19])
        try:
            handle = self.backend.submit(job)
            try:
                self.backend.stream_logs(handle, paths.preflight_log, LOG_MAX_BYTES)
                outcome = self.backend.wait(handle)
                record, note = self._verdict(handle, outcome, paths)
            finally:
                self.backend.cancel(handle)
        finally:
            self.backend.cleanup(spec.run_id)
        verdict = self.last = PreflightVerdict(record, outcome, time.monotonic() - started, note, image)
        log.info(
            "preflight.end",
            run_id=spec.run_id,
            status=record.status if record else None,
            reason=record.reason if record else note,
            seconds=round(verdict.seconds, 2),
        )
        return verdict

    def _verdict(
        self, handle: JobHandle, outcome: JobOutcome, paths: RunPaths
    ) -> tuple[PreflightRecord | None, str | None]:
        if outcome.timed_out:
            return None, f"the preflight passed its cap of {handle.spec.cap_s:.0f} s"
        if outcome.oom_killed:
            return None, "the preflight container ran out of memory"
        if outcome.killed_for is not None:
            return None, f"killed: {outcome.killed_for}"
        if outcome.exit_code == EXIT_SETUP:  # the data or the evaluator, not the proposal
            raise SandboxError(
                "CPU preflight setup error (not the proposal's fault): "
                + (clean_line(last_line(paths.preflight_log), 200) or "see preflight.log")
            )
        if outcome.exit_code != 0:
            return None, f"the preflight stopped with exit code {outcome.exit_code}"
        with tempfile.TemporaryDirectory(prefix="preflight-", dir=paths.run_dir) as tmp:
            fetched = Path(tmp) / f"{RECORD_NAME}.{secrets.token_hex(4)}"
            try:
                self.backend.fetch_output(handle, RECORD_NAME, fetched, RECORD_MAX_BYTES)
                record = PreflightRecord.model_validate_json(read_regular(fetched, RECORD_MAX_BYTES))
            except (UnsafeFileError, ValidationError) as exc:
                first = clean_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)
                return None, f"preflight.json unusable: {first}"
        if record.reason is not None:
            record = record.model_copy(update={"reason": clean_line(record.reason, 300)})
        return record, None


def preflight_profile_name(profile: str) -> str:
    try:
        return get_profile(profile + PREFLIGHT_SUFFIX).name
    except UnknownProfileError as exc:
        raise SandboxError(str(exc)) from None


def preflight_limits(profile: str) -> Limits:
    """The preflight's train.py: its budget and export allowance (told to train.py, enforced by
    evaluator.preflight inside, and by the host's cap on the whole job outside)."""
    return Limits.for_profile(get_profile(preflight_profile_name(profile)), out_max_bytes=2 * GiB)


def check_train_data(data_dir: Path) -> Path:
    """What the preflight mounts must be there: the manifest, the tokenizer and the train split
    (the val and eval folders are never looked at: the preflight never sees them)."""
    data_dir = Path(data_dir).resolve()
    for name in (layout.MANIFEST, layout.TOKENIZER_DIR, layout.TRAIN_DIR):
        if not (data_dir / name).exists():
            raise SandboxError(f"{data_dir} is not a prepared data dir (no {name}): run `make prepare` first")
    return data_dir
