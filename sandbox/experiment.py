"""One experiment in two fresh, locked-down containers: train, then score.

    python -m sandbox.experiment [--train PATH] [--profile P] [--data-dir DIR] [--runs-dir DIR]

`run_experiment(spec)` is what the controller calls; the command line runs one train.py with no
agent and no git, and prints what came of it (`make experiment`).
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

import docker
import structlog
from pydantic import ValidationError

from evaluator import layout
from evaluator.profiles import UnknownProfileError, get_profile
from evaluator.records import ScoreRecord
from sandbox import containers, specs
from sandbox.cleanup import remove_orphans
from sandbox.containers import Outcome
from sandbox.diskguard import OutDirGuard
from sandbox.engine import docker_client, image_id
from sandbox.errors import SandboxError
from sandbox.hostile import HostileFileError, copy_regular, discard_tree, read_regular
from sandbox.limits import GiB, Limits
from sandbox.logs import last_line
from sandbox.memory import RamPeak
from sandbox.nvml import VramWatchdog
from sandbox.result import ExperimentResult, ExperimentSpec
from sandbox.rundir import RunPaths, check_data_dir, prepare_run_dir

log = structlog.get_logger("sandbox")

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")
EVAL_EXIT_OK, EVAL_EXIT_SETUP, EVAL_EXIT_REJECTED = 0, 2, 3


def run_experiment(spec: ExperimentSpec, *, limits: Limits | None = None,
                   client: docker.DockerClient | None = None, nvml: Any = None) -> ExperimentResult:
    """Train `spec.train_py` in one container, score its model in another; never raises for
    anything the run did (that is the result's status), only SandboxError for a bad setup."""
    if not RUN_ID.match(spec.run_id):
        raise SandboxError(f"run id {spec.run_id!r} must be letters, digits, '_', '.' or '-'")
    try:
        profile = get_profile(spec.profile)
    except UnknownProfileError as exc:
        raise SandboxError(str(exc)) from None
    limits = limits or Limits.for_profile(profile)
    client = client or docker_client()
    image = image_id(client, spec.image)
    data_dir = check_data_dir(spec.data_dir)
    paths = prepare_run_dir(spec.run_dir, spec.train_py, limits.train_py_max_bytes)
    remove_orphans(spec.run_id, client=client)
    log.info("experiment.start", run_id=spec.run_id, profile=spec.profile, gpu=spec.gpu,
             image=image[:19], run_dir=str(paths.run_dir))
    try:
        result = _train_then_score(client, spec, limits, image, data_dir, paths, nvml)
    finally:
        remove_orphans(spec.run_id, client=client)
    log.info("experiment.end", run_id=spec.run_id, status=result.status, reason=result.reason,
             val_bpb=result.val_bpb)
    return result


def _train_then_score(client: docker.DockerClient, spec: ExperimentSpec, limits: Limits,
                      image: str, data_dir: Path, paths: RunPaths, nvml: Any) -> ExperimentResult:
    binds = specs.Binds(data_dir=data_dir, train_py=paths.train_py, out_dir=paths.out_dir,
                        artifact_dir=paths.artifact_dir, score_dir=paths.score_dir)
    memory: RamPeak | VramWatchdog = (
        RamPeak() if spec.gpu is None
        else VramWatchdog(spec.gpu, spec.vram_cap_gb, paths.nvml_jsonl, nvml=nvml))
    guard = OutDirGuard(paths.out_dir, limits.out_max_bytes, limits.out_max_entries)
    train = containers.run(
        client,
        specs.train_container(image=image, run_id=spec.run_id, profile=spec.profile,
                              seed=spec.seed, gpu=spec.gpu, memory_gb=spec.memory_limit_gb,
                              binds=binds, labels=spec.labels),
        cap_s=limits.train_cap_s, log_path=paths.train_log, log_max_bytes=limits.log_max_bytes,
        watchers=[memory, guard], tick_s=limits.tick_s)
    facts: dict[str, Any] = dict(
        run_dir=paths.run_dir, image_id=image, train_seconds=train.seconds,
        train_exit_code=train.exit_code, peak_memory_gb=memory.peak_bytes / GiB,
        memory_kind="ram" if spec.gpu is None else "vram")
    try:
        problem = _train_problem(train, limits, spec, paths)
        if problem is not None:
            return ExperimentResult(status=problem[0], reason=problem[1], **facts)
        copy_regular(paths.out_dir, layout.ARTIFACT_NAME, paths.artifact_dir / layout.ARTIFACT_NAME,
                     limits.artifact_max_bytes)
    except HostileFileError as exc:
        return ExperimentResult(status="crash", reason=f"the model artifact was refused: {exc}",
                                **facts)
    finally:
        if guard.over_cap():  # a run that filled its disk does not leave the junk on the host
            discard_tree(paths.out_dir)

    scoring = containers.run(
        client,
        specs.eval_container(image=image, run_id=spec.run_id, profile=spec.profile, gpu=spec.gpu,
                             memory_gb=spec.memory_limit_gb, binds=binds, labels=spec.labels),
        cap_s=limits.eval_cap_s, log_path=paths.eval_log, log_max_bytes=limits.log_max_bytes,
        watchers=[], tick_s=limits.tick_s)
    facts.update(eval_seconds=scoring.seconds, eval_exit_code=scoring.exit_code)
    return _scored(scoring, limits, paths, facts)


def _train_problem(train: Outcome, limits: Limits, spec: ExperimentSpec,
                   paths: RunPaths) -> tuple[str, str] | None:
    if train.timed_out:
        return "timeout", (f"training passed its hard cap of {limits.train_cap_s:.0f} s "
                           "(budget + startup grace) and was killed")
    if train.killed_for is not None:
        return "crash", f"killed: {train.killed_for}"
    if train.oom_killed:
        return "crash", (f"train container was killed by its {spec.memory_limit_gb:g} GB memory "
                         f"limit (OOM, exit {train.exit_code})")
    if train.exit_code != 0:
        tail = last_line(paths.train_log)
        return "crash", f"train.py exited with code {train.exit_code}" + (f": {tail}" if tail else "")
    if not (paths.out_dir / layout.ARTIFACT_NAME).is_symlink() and \
            not (paths.out_dir / layout.ARTIFACT_NAME).exists():
        return "crash", "train.py finished without calling submit(model): no model.pt2"
    return None


def _scored(scoring: Outcome, limits: Limits, paths: RunPaths,
            facts: dict[str, Any]) -> ExperimentResult:
    if scoring.timed_out:
        return ExperimentResult(status="timeout", reason=(
            f"scoring passed its hard cap of {limits.eval_cap_s:.0f} s and was killed"), **facts)
    if scoring.oom_killed:
        return ExperimentResult(status="crash", reason=(
            "eval container was killed by its memory limit (OOM)"), **facts)
    if scoring.exit_code == EVAL_EXIT_SETUP:  # the data or the evaluator's setup, not the run: redo it
        raise SandboxError("evaluator setup error (not the run's fault): "
                           + (last_line(paths.eval_log) or "see eval.log"))
    if scoring.exit_code not in (EVAL_EXIT_OK, EVAL_EXIT_REJECTED):
        tail = last_line(paths.eval_log)
        what = f"evaluator exited with code {scoring.exit_code}"
        return ExperimentResult(status="crash", reason=what + (f": {tail}" if tail else ""), **facts)
    try:
        raw = read_regular(paths.score_dir, layout.SCORE_NAME, limits.score_max_bytes)
        score = ScoreRecord.model_validate_json(raw)
    except (HostileFileError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        return ExperimentResult(status="crash", reason=f"score.json unusable: {first}", **facts)
    expected = "ok" if scoring.exit_code == EVAL_EXIT_OK else "rejected"
    if score.status != expected:
        return ExperimentResult(status="crash", reason=(
            f"evaluator exit {scoring.exit_code} disagrees with score.json status {score.status}"),
            **facts)
    paths.score_json.write_text(score.model_dump_json(indent=2) + "\n")
    if score.status == "rejected":
        return ExperimentResult(status="rejected", reason=score.reason, score=score, **facts)
    return ExperimentResult(status="ok", score=score, **facts)


# ---------------------------------------------------------------------------------------------
# command line: one experiment, no agent, no git


def _print_result(result: ExperimentResult, spec: ExperimentSpec) -> None:
    from rich.console import Console
    from rich.table import Table

    style = {"ok": "green", "rejected": "yellow"}.get(result.status, "red")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("status", f"[{style}]{result.status}[/]" +
                  (f"  {result.reason}" if result.reason else ""))
    table.add_row("val_bpb", f"{result.val_bpb:.6f}" if result.val_bpb is not None else "-")
    table.add_row(f"peak {result.memory_kind}", f"{result.peak_memory_gb:.2f} GB")
    table.add_row("train", f"{result.train_seconds:.1f} s (exit {result.train_exit_code})")
    table.add_row("eval", f"{result.eval_seconds:.1f} s (exit {result.eval_exit_code})")
    table.add_row("image", result.image_id or "-")
    table.add_row("profile", f"{spec.profile}, seed {spec.seed}, data {spec.data_dir}")
    table.add_row("logs", f"{result.run_dir / 'train.log'}\n{result.run_dir / 'eval.log'}")
    Console().print(table)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.experiment",
                                     description="Run one train.py in the sandbox and score it.")
    parser.add_argument("--train", type=Path, default=Path("programs/default/train.py"))
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: data/<profile>")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/experiments"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", type=int, default=None, help="GPU index (default: CPU)")
    parser.add_argument("--vram-cap-gb", type=float, default=None)
    parser.add_argument("--memory-gb", type=float, default=8.0, help="container RAM limit")
    parser.add_argument("--image", default="overnight-evaluator:latest")
    args = parser.parse_args(argv)
    run_id = f"exp-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    try:
        if not args.train.is_file():
            raise SandboxError(f"{args.train} is not a file: give --train a train.py")
        spec = ExperimentSpec(
            run_id=run_id, train_py=args.train, run_dir=args.runs_dir / run_id,
            profile=args.profile, data_dir=args.data_dir or Path("data") / args.profile,
            image=args.image, gpu=args.gpu, seed=args.seed, vram_cap_gb=args.vram_cap_gb,
            memory_limit_gb=args.memory_gb)
        signal.signal(signal.SIGTERM, _interrupt)  # `finally` blocks then remove the containers
        print(f"running {run_id}: logs stream to {spec.run_dir}/train.log and eval.log", flush=True)
        result = run_experiment(spec)
    except SandboxError as exc:
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
