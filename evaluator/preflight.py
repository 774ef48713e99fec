"""The CPU preflight of a proposal: `python -m evaluator.preflight --train PATH --profile NAME
--data-dir DIR --out DIR`.

Runs in ONE locked-down container with the train job's flags (sandbox.specs.preflight_job: the
same image, no network, read-only root, capabilities dropped, a memory limit, no GPU) and only
the train job's mounts (train split, tokenizer, manifest; never val/ or eval/):

1. train.py runs as a child process under the preflight profile the job was given
   (OVERNIGHT_PROFILE=<night>-preflight: the night's shapes, two steps, a short budget); its
   submit() exports the model to <out>/model.pt2. The child is killed at the preflight budget
   plus its export allowance, counted from the container's start. While it runs, this process
   imports the checks (torch among them), so the two start-ups overlap.
2. The evaluator's own checks of the artifact at the night's eval shape (evaluator.artifact:
   the archive, the graph, the op allowlist, no mutation).
3. The causality probe (evaluator.probe) with rows of the TRAIN split as its base and spare rows.

It writes <out>/preflight.json (evaluator.records.PreflightRecord) and logs to stdout.

The verdict is advisory. train.py ran in this container, as the same user, before the checks: it
could have left a process behind that rewrites the artifact or preflight.json. So a verdict may
stop an experiment early (crash, rejected: the agent gets it back as that experiment's result),
but it is never a score, and a pass proves nothing: the slot run re-checks everything in the
trusted evaluator. That is also why this container gets train data only.

Exit codes: 0 a verdict was written (whatever it says), 2 a bad setup (arguments, no train data).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from evaluator import layout
from evaluator.context import clock_started
from evaluator.hostile import clean_line
from evaluator.profiles import (
    PREFLIGHT_SUFFIX,
    Profile,
    UnknownProfileError,
    get_profile,
)
from evaluator.records import REJECT_TEXT, PreflightCode, PreflightRecord

if TYPE_CHECKING:
    import numpy as np
    import torch

EXIT_OK = 0
EXIT_SETUP = 2
RECORD_NAME = "preflight.json"
OUTPUT_DRAIN_S = 1.0  # after train.py exits, how long its output may still take to arrive
KILL_GRACE_S = 5.0


class SetupError(Exception):
    """The preflight's own inputs are wrong (not the proposal's fault); one line for a person."""


# ---------------------------------------------------------------------------------------------
# train.py, as a child process


@dataclass
class TrainOutcome:
    exit_code: int | None  # None: killed at the preflight's cap
    seconds: float
    last_line: str  # the last printable line it wrote, for a one-line reason


class _Tee(threading.Thread):
    """Copies the child's output to ours as it comes, keeping its last non-empty line."""

    def __init__(self, source: IO[bytes], sink: IO[bytes]) -> None:
        super().__init__(name="preflight-tee", daemon=True)
        self.source, self.sink = source, sink
        self.last = b""

    def run(self) -> None:
        try:
            for line in iter(self.source.readline, b""):
                self.sink.write(line)
                self.sink.flush()
                if line.strip():
                    self.last = line[-2000:]
        except (OSError, ValueError):
            pass


def start_train(train_py: Path, cwd: Path) -> tuple[subprocess.Popen[bytes], _Tee]:
    """train.py in its own session (so what it leaves behind is killed with it), in the
    environment this job was given, its output through ours."""
    sys.stdout.flush()
    child = subprocess.Popen(
        [sys.executable, str(train_py)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert child.stdout is not None
    tee = _Tee(child.stdout, sys.stdout.buffer)
    tee.start()
    return child, tee


def finish_train(child: subprocess.Popen[bytes], tee: _Tee, deadline: float, started: float) -> TrainOutcome:
    """Wait for train.py until `deadline` (unix time), then kill its session either way."""
    exit_code: int | None
    try:
        exit_code = child.wait(timeout=max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        exit_code = None
    seconds = time.time() - started
    _kill_session(child.pid)
    if exit_code is None:
        child.wait(KILL_GRACE_S)
    tee.join(OUTPUT_DRAIN_S)
    return TrainOutcome(
        exit_code=exit_code, seconds=seconds, last_line=clean_line(tee.last.decode("utf-8", "replace"), 200)
    )


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


TrainStatus = Literal["crash", "timeout"]


def train_problem(train: TrainOutcome, artifact: Path, cap_s: float) -> tuple[TrainStatus, PreflightCode, str] | None:
    """(status, code, reason) when train.py did not leave a model to check."""
    if train.exit_code is None:
        return "timeout", "train_timeout", f"train.py was still running at the preflight's cap of {cap_s:.0f} s"
    if train.exit_code != 0:
        how = (
            f"was killed by signal {-train.exit_code}" if train.exit_code < 0 else f"exited with code {train.exit_code}"
        )
        tail = f": {train.last_line}" if train.last_line else ""
        return "crash", "train_exit", f"train.py {how}{tail}"
    if not artifact.is_file():
        return "crash", "no_model", "train.py finished without calling submit(model): no model.pt2"
    return None


# ---------------------------------------------------------------------------------------------
# The checks: the evaluator's own, on the exported model


def train_rows(data_dir: Path, rows: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` packed rows of the train split, (rows, seq_len) int64, from a secret document order."""
    import numpy as np

    from evaluator.dataloader import load_documents, load_shards, packed_rows
    from evaluator.tokenizer import bos_id

    shards = load_shards(data_dir, layout.TRAIN_DIR)
    spans = load_documents(data_dir, layout.TRAIN_DIR, shards, bos_id(data_dir))
    packed = packed_rows(shards, spans, seq_len + 1, doc_order=rng.permutation(len(spans)))
    taken = [row for _, row in zip(range(rows), packed, strict=False)]
    if len(taken) < rows:
        raise SetupError(
            f"the train split packs into {len(taken)} rows of {seq_len + 1} tokens; the preflight's probe needs {rows}"
        )
    return np.stack(taken)[:, :-1]


@dataclass
class CheckOutcome:
    status: Literal["ok", "rejected"]
    code: PreflightCode | None = None
    reason: str | None = None
    probe: Any = None  # evaluator.records.ProbeResult
    check_seconds: float = 0.0
    probe_seconds: float = 0.0


def check_model(artifact: Path, profile: Profile, rows: Callable[[], torch.Tensor]) -> CheckOutcome:
    """The artifact checks at the eval shape, then the causality probe on one base batch of
    train rows (`rows()`: 2 * eval_batch_size rows, the base batch and the probe's spare rows)."""
    import torch

    from evaluator.artifact import ArtifactRejected, load_artifact
    from evaluator.probe import Probe, ProbeConfig, secret_rng
    from evaluator.score import ModelRejected, checked_forward

    B, T, V = profile.eval_batch_size, profile.seq_len, profile.vocab_size
    started = time.perf_counter()
    try:
        model = load_artifact(artifact, B, T)
    except ArtifactRejected as e:
        return CheckOutcome("rejected", e.code, e.reason, check_seconds=time.perf_counter() - started)
    checked = time.perf_counter()
    tokens = rows()
    inputs, spare = tokens[:B].reshape(1, B, T), tokens[B:].reshape(1, B, T)
    forward = checked_forward(model, "cpu", B, T, V)
    probe = Probe(forward, inputs, spare, ProbeConfig.for_profile(profile), secret_rng())
    outcome = CheckOutcome("ok", check_seconds=checked - started)
    try:
        with torch.inference_mode():
            probe.check(0, forward(inputs[0]))
        if probe.failed:
            outcome = CheckOutcome("rejected", "non_causal", REJECT_TEXT["non_causal"], check_seconds=checked - started)
    except ModelRejected as e:
        outcome = CheckOutcome("rejected", e.code, REJECT_TEXT[e.code], check_seconds=checked - started)
    outcome.probe = probe.result()
    outcome.probe_seconds = time.perf_counter() - checked
    return outcome


# ---------------------------------------------------------------------------------------------
# The record


def write_record(record: PreflightRecord, out_dir: Path) -> Path:
    """preflight.json, atomically (a temp file in the same folder, then rename over)."""
    final = out_dir / RECORD_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{RECORD_NAME}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(record.model_dump_json(indent=2) + "\n")
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def summary_lines(record: PreflightRecord) -> list[str]:
    """What preflight.log ends with (grep-able)."""
    lines = [f"preflight: {record.status}"]
    if record.reason:
        lines.append(f"preflight_reason: {record.reason}")
    lines += [
        f"preflight_train_s: {record.train_seconds:.2f}",
        f"preflight_check_s: {record.check_seconds:.2f}",
        f"preflight_probe_s: {record.probe_seconds:.2f}",
        f"preflight_total_s: {record.total_seconds:.2f}",
    ]
    return lines


# ---------------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evaluator.preflight", description="Run train.py for a few steps, then check its model."
    )
    parser.add_argument("--train", type=Path, required=True, help="the proposal's train.py")
    parser.add_argument("--profile", required=True, help=f"a preflight profile, e.g. cpu{PREFLIGHT_SUFFIX}")
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared data (the train split is read)")
    parser.add_argument("--out", type=Path, required=True, help="where model.pt2 and preflight.json go")
    return parser.parse_args(argv)


def _setup(args: argparse.Namespace) -> Profile:
    try:
        profile = get_profile(args.profile)
    except UnknownProfileError as e:
        raise SetupError(str(e)) from None
    if not profile.name.endswith(PREFLIGHT_SUFFIX):
        raise SetupError(f"profile {profile.name!r} is not a preflight profile (use <night>{PREFLIGHT_SUFFIX})")
    if not args.train.is_file():
        raise SetupError(f"{args.train} is not a file")
    if not args.out.is_dir():
        raise SetupError(f"the output folder {args.out} does not exist")
    if not layout.shard_paths(args.data_dir, layout.TRAIN_DIR):
        raise SetupError(f"no train shards in {args.data_dir}: run make prepare")
    return profile


def run(args: argparse.Namespace) -> PreflightRecord:
    profile = _setup(args)
    clock = clock_started()
    cap_s = profile.time_budget_s + profile.export_allowance_s
    artifact = args.out / layout.ARTIFACT_NAME
    artifact.unlink(missing_ok=True)
    t_train = time.time()
    child, tee = start_train(args.train.resolve(), Path(tempfile.gettempdir()))
    try:
        import torch  # noqa: F401  (the checks' imports overlap train.py's start-up)

        import evaluator.artifact
        import evaluator.score  # noqa: F401
    finally:
        train = finish_train(child, tee, clock + cap_s, t_train)
    facts: dict[str, Any] = {
        "profile": profile.name,
        "train_exit_code": train.exit_code,
        "train_seconds": train.seconds,
    }
    problem = train_problem(train, artifact, cap_s)
    if problem is not None:
        status, code, reason = problem
        return PreflightRecord(
            status=status,
            reason_code=code,
            reason=reason,
            total_seconds=time.time() - clock,
            **facts,
        )

    def rows() -> torch.Tensor:
        import torch

        from evaluator.probe import secret_rng

        return torch.from_numpy(train_rows(args.data_dir, 2 * profile.eval_batch_size, profile.seq_len, secret_rng()))

    checks = check_model(artifact, profile, rows)
    return PreflightRecord(
        status=checks.status,
        reason_code=checks.code,
        reason=checks.reason,
        probe=checks.probe,
        check_seconds=checks.check_seconds,
        probe_seconds=checks.probe_seconds,
        total_seconds=time.time() - clock,
        **facts,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        record = run(args)
    except SetupError as e:
        print(f"preflight setup error: {e}", file=sys.stderr, flush=True)
        return EXIT_SETUP
    write_record(record, args.out)
    print("\n".join(summary_lines(record)), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
