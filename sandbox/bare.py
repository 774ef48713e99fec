"""The bare runner, for development: one experiment as two plain processes on this machine (train,
then score), no containers and none of their protections. `make experiment-bare` uses it; the
end-to-end tests compare it with the sandboxed run."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from evaluator import layout
from evaluator.exitcodes import EXIT_OK, EXIT_REJECTED
from evaluator.profiles import get_profile
from evaluator.records import ScoreRecord
from evaluator.rowloss import ROWLOSS_FILE
from sandbox.errors import SandboxError
from sandbox.result import ExperimentResult, ExperimentSpec

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], env: dict[str, str], cwd: Path, log: Path, cap_s: float) -> tuple[int | None, float, float]:
    """Run a process group with output to `log`; kill it at cap_s. (exit code or None, seconds, peak GB)."""
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = started + cap_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, time.monotonic() - started, usage.ru_maxrss / 2**20
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                _, _, usage = os.wait4(proc.pid, 0)
                return None, time.monotonic() - started, usage.ru_maxrss / 2**20
            time.sleep(0.05)


def _env(spec: ExperimentSpec, out_dir: Path, budget_s: float) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "OVERNIGHT_PROFILE": spec.profile,
        "OVERNIGHT_DATA_DIR": str(Path(spec.data_dir).resolve()),
        "OVERNIGHT_OUT_DIR": str(out_dir),
        "OVERNIGHT_SEED": str(spec.seed),
        "OVERNIGHT_BUDGET_S": f"{budget_s:g}",
        "OVERNIGHT_STARTED": f"{time.time():.3f}",  # the clock starts now, as the cap below
    }


def run_bare(spec: ExperimentSpec) -> ExperimentResult:
    """One experiment as plain processes, with the same budget model: train.py is told its
    deadline and killed at the budget plus the export allowance."""
    profile = get_profile(spec.profile)
    if profile.name == "gpu":
        require_cuda_here()
    run_dir = Path(spec.run_dir).resolve()
    out_dir, score_dir = run_dir / "out", run_dir / "score"
    for d in (out_dir, score_dir):
        d.mkdir(parents=True, exist_ok=True)
    train_py = run_dir / "train.py"
    if Path(spec.train_py).resolve() != train_py:
        shutil.copyfile(spec.train_py, train_py)
    env = _env(spec, out_dir, profile.time_budget_s)

    code, train_s, train_gb = _run(
        [sys.executable, str(train_py)], env, run_dir, run_dir / "train.log", profile.train_cap_s
    )
    result: dict[str, Any] = dict(
        run_dir=run_dir,
        train_seconds=train_s,
        peak_memory_gb=train_gb,
        train_exit_code=code,
        train_budget_s=profile.time_budget_s,
        train_cap_s=profile.train_cap_s,
    )
    artifact = out_dir / layout.ARTIFACT_NAME
    if code is None:
        return ExperimentResult(
            status="timeout",
            reason=(
                f"killed at {profile.train_cap_s:.0f} s: the budget of {profile.time_budget_s:.0f} s plus "
                f"{profile.export_allowance_s:.1f} s to export"
            ),
            **result,
        )
    if code != 0:
        return ExperimentResult(status="crash", reason=f"train.py exited with code {code}", **result)
    if not artifact.is_file():
        return ExperimentResult(
            status="crash", reason="train.py finished without calling submit(model): no model.pt2", **result
        )

    score_json = score_dir / layout.SCORE_NAME
    cmd = [
        sys.executable,
        "-m",
        "evaluator.score",
        "--artifact",
        str(artifact),
        "--data-dir",
        str(Path(spec.data_dir).resolve()),
        "--profile",
        spec.profile,
        "--out",
        str(score_json),
    ]
    code, eval_s, _ = _run(cmd, env, run_dir, run_dir / "eval.log", profile.eval_timeout_s)
    result.update(eval_seconds=eval_s, eval_exit_code=code)
    if code is None:
        return ExperimentResult(
            status="timeout", reason=f"scoring passed its {profile.eval_timeout_s:.0f}s cap", **result
        )
    if code not in (EXIT_OK, EXIT_REJECTED) or not score_json.is_file():
        return ExperimentResult(status="crash", reason=f"the evaluator failed (exit {code}); see eval.log", **result)
    score = ScoreRecord.model_validate_json(score_json.read_text())
    shutil.copyfile(score_json, run_dir / layout.SCORE_NAME)
    if (score_dir / ROWLOSS_FILE).is_file():
        shutil.copyfile(score_dir / ROWLOSS_FILE, run_dir / ROWLOSS_FILE)
    if score.status == "rejected":
        return ExperimentResult(status="rejected", reason=score.reason, score=score, **result)
    return ExperimentResult(status="ok", score=score, **result)


def require_cuda_here() -> None:
    """The gpu profile on a machine without CUDA fails at once, before any training."""
    import torch

    if not torch.cuda.is_available():
        raise SandboxError(
            "profile gpu needs CUDA, but torch sees no CUDA device here: "
            "use PROFILE=cpu on this machine (make doctor shows what is missing)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.bare", description=__doc__)
    parser.add_argument("--train", type=Path, default=REPO_ROOT / "programs/default/train.py")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/bare"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--preflight",
        action="store_true",
        help="only check that this machine can run the profile (CUDA for gpu), then exit",
    )
    args = parser.parse_args(argv)
    try:
        if get_profile(args.profile).name == "gpu":
            require_cuda_here()
    except (SandboxError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.preflight:
        return 0
    data_dir = args.data_dir or Path("data") / args.profile
    if not (data_dir / layout.MANIFEST).is_file():
        print(
            f"error: no prepared data in {data_dir}: run `make prepare PROFILE={args.profile}` first", file=sys.stderr
        )
        return 2
    if not args.train.is_file():
        print(f"error: {args.train} is not a file", file=sys.stderr)
        return 2
    run_dir = args.runs_dir / time.strftime("%Y%m%d-%H%M%S")
    spec = ExperimentSpec(
        run_id=f"bare-{run_dir.name}",
        train_py=args.train,
        run_dir=run_dir,
        profile=args.profile,
        data_dir=data_dir,
        seed=args.seed,
    )
    try:
        result = run_bare(spec)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bpb = f"{result.val_bpb:.6f}" if result.val_bpb is not None else "-"
    print(f"status:        {result.status}" + (f" ({result.reason})" if result.reason else ""))
    print(f"val_bpb:       {bpb}")
    print(f"train_seconds: {result.train_seconds:.1f}")
    print(f"eval_seconds:  {result.eval_seconds:.1f}")
    print(f"peak_ram_gb:   {result.peak_memory_gb:.2f}")
    print(f"logs:          {run_dir}/train.log {run_dir}/eval.log")
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
