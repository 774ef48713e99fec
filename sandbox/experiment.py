"""One experiment as two jobs, train then score, through a runner (sandbox.runner).

    python -m sandbox.experiment [--train PATH] [--profile P] [--data-dir DIR] [--runs-dir DIR]

`run_experiment(spec)` is what the controller calls; the command line runs one train.py with no
agent and no git, and prints what came of it (`make experiment`).

The budget is enforced here, from outside: train.py is told its deadline (start + budget) and
the train job is killed at start + budget + allowance, measured by the host. A run killed there
is a `timeout` and gets no score, whatever it printed or wrote.
"""

from __future__ import annotations

import argparse
import re
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from evaluator import layout
from evaluator.exitcodes import EXIT_OK as EVAL_EXIT_OK
from evaluator.exitcodes import EXIT_REJECTED as EVAL_EXIT_REJECTED
from evaluator.exitcodes import EXIT_SETUP as EVAL_EXIT_SETUP
from evaluator.hostile import UnsafeFileError, clean_line, read_regular
from evaluator.profiles import Profile, UnknownProfileError, get_profile
from evaluator.records import ScoreRecord
from evaluator.rowloss import ROWLOSS_FILE, RowLossError, file_size, profile_rows, read_rowloss
from sandbox import specs
from sandbox.compile_cache import check_cache_file
from sandbox.errors import SandboxError
from sandbox.limits import GiB, Limits
from sandbox.logs import last_line
from sandbox.nvml import VramWatchdog
from sandbox.result import ExperimentResult, ExperimentSpec, Status
from sandbox.rundir import PREFLIGHT_LOG, RunPaths, check_data_dir, prepare_run_dir
from sandbox.runner import JobHandle, JobOutcome, Runner, Watcher

log = structlog.get_logger("sandbox")

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")


def default_runner() -> Runner:
    from sandbox.docker_runner import DockerRunner

    return DockerRunner()


def run_experiment(
    spec: ExperimentSpec, *, limits: Limits | None = None, runner: Runner | None = None, nvml: Any = None
) -> ExperimentResult:
    """Train `spec.train_py` in one job, score its model in another; never raises for anything
    the run did (that is the result's status), only SandboxError for a bad setup or a backend
    that failed (the caller redoes the run)."""
    if not RUN_ID.match(spec.run_id):
        raise SandboxError(f"run id {spec.run_id!r} must be letters, digits, '_', '.' or '-'")
    try:
        profile = get_profile(spec.profile)
    except UnknownProfileError as exc:
        raise SandboxError(str(exc)) from None
    check_gpu_setting(profile, spec.gpu)
    limits = limits or Limits.for_profile(profile)
    runner = runner or default_runner()
    image = runner.image_id(spec.image)
    data_dir = check_data_dir(spec.data_dir) if runner.data_on_host else Path(spec.data_dir)
    compile_cache = check_cache_file(spec.compile_cache) if spec.compile_cache is not None else None
    paths = prepare_run_dir(spec.run_dir, spec.train_py, limits.train_py_max_bytes, keep=(PREFLIGHT_LOG,))
    runner.cleanup(spec.run_id)
    log.info(
        "experiment.start",
        run_id=spec.run_id,
        profile=spec.profile,
        gpu=spec.gpu,
        image=image[:19],
        run_dir=str(paths.run_dir),
    )
    try:
        result = _train_then_score(runner, spec, limits, image, data_dir, paths, nvml, compile_cache)
    finally:
        runner.cleanup(spec.run_id)
    log.info("experiment.end", run_id=spec.run_id, status=result.status, reason=result.reason, val_bpb=result.val_bpb)
    return result


def check_gpu_setting(profile: Profile, gpu: int | None) -> None:
    """The gpu profile fails fast and loud without a GPU, before anything starts."""
    if profile.name == "gpu" and gpu is None:
        raise SandboxError(
            "profile gpu needs a GPU, but this run was given none (no CUDA here?): "
            "pass a GPU index, or use PROFILE=cpu on a machine without CUDA (see make doctor)"
        )


def _train_then_score(
    runner: Runner,
    spec: ExperimentSpec,
    limits: Limits,
    image: str,
    data_dir: Path,
    paths: RunPaths,
    nvml: Any,
    compile_cache: Path | None,
) -> ExperimentResult:
    memory: VramWatchdog | None = (
        None if spec.gpu is None else VramWatchdog(spec.gpu, spec.vram_cap_gb, paths.nvml_jsonl, nvml=nvml)
    )
    train_job = specs.train_job(
        run_id=spec.run_id,
        image=image,
        profile=spec.profile,
        seed=spec.seed,
        gpu=spec.gpu,
        memory_gb=spec.memory_limit_gb,
        data_dir=data_dir,
        train_py=paths.train_py,
        limits=limits,
        labels=spec.labels,
        cpuset=spec.cpuset,
        compile_cache=compile_cache,
    )
    watchers: list[Watcher] = [memory] if memory is not None else []
    facts: dict[str, Any] = dict(
        run_dir=paths.run_dir,
        image_id=image,
        train_budget_s=limits.train_budget_s,
        train_cap_s=limits.train_cap_s,
        memory_kind="ram" if spec.gpu is None else "vram",
    )
    train = runner.submit(train_job, watchers)
    try:
        runner.stream_logs(train, paths.train_log, limits.log_max_bytes)
        trained = runner.wait(train)
        peak = memory.peak_bytes if memory is not None else trained.peak_memory_bytes
        facts.update(train_seconds=trained.seconds, train_exit_code=trained.exit_code, peak_memory_gb=peak / GiB)
        problem = _train_problem(trained, limits, spec, paths)
        if problem is not None:
            return ExperimentResult(status=problem[0], reason=problem[1], **facts)
        try:
            runner.fetch_output(train, layout.ARTIFACT_NAME, paths.artifact, limits.artifact_max_bytes)
        except UnsafeFileError as exc:
            if str(exc) == f"no {layout.ARTIFACT_NAME}":
                return ExperimentResult(
                    status="crash", reason=("train.py finished without calling submit(model): no model.pt2"), **facts
                )
            return ExperimentResult(status="crash", reason=f"the model artifact was refused: {exc}", **facts)
        eval_job = specs.eval_job(
            run_id=spec.run_id,
            image=image,
            profile=spec.profile,
            gpu=spec.gpu,
            memory_gb=spec.memory_limit_gb,
            data_dir=data_dir,
            artifact=paths.artifact,
            limits=limits,
            labels=spec.labels,
            cpuset=spec.cpuset,
        )
        # Submitted before the train job is cancelled: a cluster backend serves the artifact from
        # the train job's volume; the Docker backend mounts the host's checked copy.
        scorer = runner.submit(eval_job)
    finally:
        runner.cancel(train)
    try:
        runner.stream_logs(scorer, paths.eval_log, limits.log_max_bytes)
        scoring = runner.wait(scorer)
        facts.update(eval_seconds=scoring.seconds, eval_exit_code=scoring.exit_code)
        _keep_detail(runner, scorer, paths, limits)
        return _scored(runner, scorer, scoring, limits, paths, facts)
    finally:
        runner.cancel(scorer)


def _train_problem(
    train: JobOutcome, limits: Limits, spec: ExperimentSpec, paths: RunPaths
) -> tuple[Status, str] | None:
    if train.timed_out:
        return "timeout", (
            f"killed at {limits.train_cap_s:.0f} s: the budget of {limits.train_budget_s:.0f} s "
            f"plus {limits.train_allowance_s:.1f} s to export, measured from the container's start"
        )
    if train.killed_for is not None:
        return "crash", f"killed: {train.killed_for}"
    if train.oom_killed:
        return "crash", (
            f"train container was killed by its {spec.memory_limit_gb:g} GB memory limit (OOM, exit {train.exit_code})"
        )
    if train.exit_code != 0:
        tail = clean_line(last_line(paths.train_log), 200)
        return "crash", f"train.py exited with code {train.exit_code}" + (f": {tail}" if tail else "")
    return None


def _keep_detail(runner: Runner, handle: JobHandle, paths: RunPaths, limits: Limits) -> None:
    """The evaluator's private detail log, kept in the run folder for people (no agent tool reads it)."""
    try:
        runner.fetch_output(handle, specs.DETAIL_NAME, paths.detail_log, limits.detail_max_bytes)
    except UnsafeFileError as exc:
        log.warning("eval.detail_not_kept", run_id=handle.spec.run_id, reason=str(exc))


def _scored(
    runner: Runner, handle: JobHandle, scoring: JobOutcome, limits: Limits, paths: RunPaths, facts: dict[str, Any]
) -> ExperimentResult:
    if scoring.timed_out:
        return ExperimentResult(
            status="timeout",
            reason=(f"scoring passed its hard cap of {limits.eval_cap_s:.0f} s and was killed"),
            **facts,
        )
    if scoring.oom_killed:
        return ExperimentResult(status="crash", reason=("eval container was killed by its memory limit (OOM)"), **facts)
    if scoring.exit_code == EVAL_EXIT_SETUP:  # the data or the evaluator's setup, not the run: redo it
        raise SandboxError(
            "evaluator setup error (not the run's fault): "
            + (clean_line(last_line(paths.eval_log), 200) or "see eval.log")
        )
    if scoring.exit_code not in (EVAL_EXIT_OK, EVAL_EXIT_REJECTED):
        return ExperimentResult(
            status="crash",
            reason=(f"the evaluator stopped with exit code {scoring.exit_code} (details in eval-detail.log)"),
            **facts,
        )
    fetched = paths.run_dir / f".{layout.SCORE_NAME}.fetched"
    fetched.unlink(missing_ok=True)
    try:
        runner.fetch_output(handle, layout.SCORE_NAME, fetched, limits.score_max_bytes)
        score = ScoreRecord.model_validate_json(read_regular(fetched, limits.score_max_bytes))
    except (UnsafeFileError, ValidationError) as exc:
        first = clean_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)
        return ExperimentResult(status="crash", reason=f"score.json unusable: {first}", **facts)
    finally:
        fetched.unlink(missing_ok=True)
    expected = "ok" if scoring.exit_code == EVAL_EXIT_OK else "rejected"
    if score.status != expected:
        return ExperimentResult(
            status="crash",
            reason=(f"evaluator exit {scoring.exit_code} disagrees with score.json status {score.status}"),
            **facts,
        )
    if score.reason is not None:
        score = score.model_copy(update={"reason": clean_line(score.reason, 300)})
    paths.score_json.write_text(score.model_dump_json(indent=2) + "\n")
    if score.status == "rejected":
        return ExperimentResult(status="rejected", reason=score.reason, score=score, **facts)
    problem = _keep_row_losses(runner, handle, score, paths, limits)
    if problem is not None:
        return ExperimentResult(status="rejected", reason=problem, score=score, **facts)
    return ExperimentResult(status="ok", score=score, **facts)


def _keep_row_losses(
    runner: Runner, handle: JobHandle, score: ScoreRecord, paths: RunPaths, limits: Limits
) -> str | None:
    """The per-row losses next to score.json, checked as hostile input against it; a reason when
    they are missing, malformed or disagree (the run is then rejected, never scored)."""
    rows = profile_rows(get_profile(score.profile))
    try:
        runner.fetch_output(handle, ROWLOSS_FILE, paths.row_losses, file_size(rows))
        read_rowloss(paths.row_losses, rows, score)
    except (UnsafeFileError, RowLossError) as exc:
        paths.row_losses.unlink(missing_ok=True)
        return clean_line(f"per-row losses unusable: {exc}", 300)
    return None


# ---------------------------------------------------------------------------------------------
# command line: one experiment, no agent, no git


def _print_result(result: ExperimentResult, spec: ExperimentSpec) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    style = {"ok": "green", "rejected": "yellow"}.get(result.status, "red")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    status = Text(result.status, style=style)
    if result.reason:
        status.append("  " + clean_line(result.reason, 300))  # Text, never markup: reasons are hostile
    table.add_row("status", status)
    table.add_row("val_bpb", f"{result.val_bpb:.6f}" if result.val_bpb is not None else "-")
    table.add_row(f"peak {result.memory_kind}", f"{result.peak_memory_gb:.2f} GB")
    table.add_row(
        "train",
        f"{result.train_seconds:.1f} s (exit {result.train_exit_code}; budget "
        f"{result.train_budget_s:.0f} s, killed at {result.train_cap_s:.1f} s)",
    )
    table.add_row("eval", f"{result.eval_seconds:.1f} s (exit {result.eval_exit_code})")
    table.add_row("image", result.image_id or "-")
    table.add_row("profile", Text(f"{spec.profile}, seed {spec.seed}, data {spec.data_dir}"))
    table.add_row("logs", Text(f"{result.run_dir / 'train.log'}\n{result.run_dir / 'eval.log'}"))
    Console().print(table)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.experiment", description="Run one train.py in the sandbox and score it."
    )
    parser.add_argument("--train", type=Path, default=Path("programs/default/train.py"))
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: data/<profile>")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/experiments"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gpu", type=int, default=None, help="GPU index (default: GPU 0 on the gpu profile, else none)"
    )
    parser.add_argument("--vram-cap-gb", type=float, default=None)
    parser.add_argument("--memory-gb", type=float, default=None, help="container RAM limit (default: the profile's)")
    parser.add_argument("--image", default=specs.DEFAULT_IMAGE)
    parser.add_argument(
        "--preflight",
        action="store_true",
        help="only check that this machine can run the profile (a usable GPU for gpu), then exit",
    )
    args = parser.parse_args(argv)
    run_id = f"exp-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    try:
        profile = get_profile(args.profile)
        gpu = args.gpu if args.gpu is not None else (0 if profile.name == "gpu" else None)
        if gpu is not None:
            from sandbox.gpu import require_gpu

            require_gpu(gpu)
        if args.preflight:
            return 0
        if not args.train.is_file():
            raise SandboxError(f"{args.train} is not a file: give --train a train.py")
        spec = ExperimentSpec(
            run_id=run_id,
            train_py=args.train,
            run_dir=args.runs_dir / run_id,
            profile=args.profile,
            data_dir=args.data_dir or Path("data") / args.profile,
            image=args.image,
            gpu=gpu,
            seed=args.seed,
            vram_cap_gb=args.vram_cap_gb,
            memory_limit_gb=args.memory_gb or profile.memory_gb,
        )
        signal.signal(signal.SIGTERM, _interrupt)  # `finally` blocks then remove the containers
        print(f"running {run_id}: logs stream to {spec.run_dir}/train.log and eval.log", flush=True)
        result = run_experiment(spec)
    except (SandboxError, UnknownProfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: containers removed", file=sys.stderr)
        return 130
    (spec.run_dir / "result.json").write_text(result.model_dump_json(indent=2) + "\n")
    _print_result(result, spec)
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
