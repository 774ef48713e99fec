"""How long the CPU preflight of a proposal takes (issue 13), in its locked-down container.

    python benchmarks/bench_preflight.py [--profile cpu] [--data-dir DIR] [--image IMAGE]
                                         [--train PATH] [--cases] [--processes]

For each profile: the seed train.py through sandbox.preflight.SandboxPreflight on the Docker
engine (container creation, train.py's two steps and export, the artifact checks, the probe on
train rows, removal), measured on the host. --processes runs `python -m evaluator.preflight` as a
plain process instead (no container, no lockdown: timing only, for a host where the engine is
busy or absent; the container adds its start and removal). With --cases, also the broken proposals it exists
to stop (a crash, no export, a refused op, a non-causal model). Prints grep-able lines:

    preflight_<profile>_s: <seconds>              the seed, whole preflight, host wall clock
    preflight_<profile>_<case>_s: <seconds>       a broken proposal, and its verdict on the line before
    preflight_share_max: <fraction>               the largest of them / that profile's train budget

The goal: each broken case stopped in under 0.15 of the `cpu` budget. On a machine without a GPU
this measures the cpu (and test) profiles; the preflight itself always runs on CPU, so the gpu
profile's preflight (the night's shapes: 2048 tokens x 32 rows on CPU) must be measured on the
GPU host's CPUs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from evaluator.preflight import RECORD_NAME  # noqa: E402 (after the sys.path set-up above)
from evaluator.profiles import PREFLIGHT_SUFFIX, get_profile  # noqa: E402 (after the sys.path set-up above)
from evaluator.records import PreflightRecord  # noqa: E402 (after the sys.path set-up above)
from sandbox.docker_runner import DockerRunner  # noqa: E402 (after the sys.path set-up above)
from sandbox.errors import SandboxError  # noqa: E402 (after the sys.path set-up above)
from sandbox.preflight import SandboxPreflight  # noqa: E402 (after the sys.path set-up above)
from sandbox.result import ExperimentSpec  # noqa: E402 (after the sys.path set-up above)

_MODEL = """
import torch
from evaluator import run_context, submit

V = run_context().profile.vocab_size


class Bigram(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, V)

    def forward(self, idx):
        return self.emb(idx)
"""

CASES: dict[str, str] = {
    "crash": 'import torch\nraise RuntimeError("a crash in the first step")\n',
    "no_export": _MODEL + "model = Bigram()\n",
    "refused_op": _MODEL
    + textwrap.dedent("""
        @torch.library.custom_op("bench::scale", mutates_args=())
        def scale(x: torch.Tensor) -> torch.Tensor:
            return x * 2


        @scale.register_fake
        def _(x):
            return torch.empty_like(x)


        class Scaled(Bigram):
            def forward(self, idx):
                return scale(self.emb(idx))


        submit(Scaled())
        """),
    "non_causal": _MODEL
    + textwrap.dedent("""
        class PeeksAhead(Bigram):
            def forward(self, idx):
                return self.emb(torch.roll(idx, shifts=-1, dims=1))


        submit(PeeksAhead())
        """),
}


def measure(
    preflight: SandboxPreflight, train_py: Path, profile: str, data_dir: Path, image: str, work: Path, name: str
) -> float:
    run_id = f"bench-preflight-{name.replace('_', '-')}-{secrets.token_hex(3)}"
    spec = ExperimentSpec(
        run_id=run_id,
        train_py=train_py,
        run_dir=work / name,
        profile=profile,
        data_dir=data_dir,
        image=image,
        memory_limit_gb=get_profile(profile).memory_gb,
    )
    verdict = preflight.check(spec)
    record = verdict.record
    said = (
        f"{record.status} {record.reason_code or ''} train {record.train_seconds:.1f} s, "
        f"checks {record.check_seconds:.1f} s, probe {record.probe_seconds:.1f} s"
        if record
        else verdict.note
    )
    print(f"# {profile} {name}: {said}", flush=True)
    return verdict.seconds


def measure_process(train_py: Path, profile: str, data_dir: Path, work: Path, name: str) -> float:
    """The same preflight as a plain process, its clock started by this launcher."""
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    pre = get_profile(profile + PREFLIGHT_SUFFIX)
    started = time.time()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OVERNIGHT_PROFILE": pre.name,
        "OVERNIGHT_DATA_DIR": str(data_dir),
        "OVERNIGHT_OUT_DIR": str(out),
        "OVERNIGHT_BUDGET_S": f"{pre.time_budget_s:g}",
        "OVERNIGHT_STARTED": f"{started:.6f}",
    }
    env.pop("OVERNIGHT_CLOCK", None)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluator.preflight",
            "--train",
            str(train_py),
            "--profile",
            pre.name,
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        check=False,
    )
    seconds = time.time() - started
    record = PreflightRecord.model_validate_json((out / RECORD_NAME).read_text())
    print(
        f"# {profile} {name} (process): {record.status} {record.reason_code or ''} train "
        f"{record.train_seconds:.1f} s, checks {record.check_seconds:.1f} s, probe {record.probe_seconds:.1f} s",
        flush=True,
    )
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the CPU preflight of the seed (and broken proposals).")
    parser.add_argument("--profile", action="append", help="a night profile (repeat for several; default cpu)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        action="append",
        help="prepared data per --profile, in the same order (default data/<profile>)",
    )
    parser.add_argument("--image", default="overnight-evaluator:latest")
    parser.add_argument("--train", type=Path, default=REPO_ROOT / "programs" / "default" / "train.py")
    parser.add_argument("--cases", action="store_true", help="also time the broken proposals it stops")
    parser.add_argument(
        "--processes", action="store_true", help="plain processes, no container (timing only: no lockdown)"
    )
    args = parser.parse_args(argv)
    profiles = args.profile or ["cpu"]
    data_dirs = args.data_dir or [REPO_ROOT / "data" / p for p in profiles]
    if len(data_dirs) != len(profiles):
        print("error: give one --data-dir per --profile (or none)", file=sys.stderr)
        return 2
    preflight = None if args.processes else SandboxPreflight(DockerRunner())

    def timed(train_py: Path, profile: str, data_dir: Path, work: Path, name: str) -> float:
        if preflight is None:
            return measure_process(train_py, profile, data_dir.resolve(), work, name)
        return measure(preflight, train_py, profile, data_dir, args.image, work, name)

    shares: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-preflight-") as tmp:
        work = Path(tmp)
        for profile, data_dir in zip(profiles, data_dirs, strict=True):
            budget = get_profile(profile).time_budget_s
            try:
                seconds = timed(args.train, profile, data_dir, work / profile, "seed")
                print(f"preflight_{profile}_s: {seconds:.2f}", flush=True)
                shares.append(seconds / budget)
                for case, source in CASES.items() if args.cases else ():
                    train_py = work / f"{profile}-{case}.py"
                    train_py.write_text(source)
                    seconds = timed(train_py, profile, data_dir, work / profile, case)
                    print(f"preflight_{profile}_{case}_s: {seconds:.2f}", flush=True)
                    shares.append(seconds / budget)
            except SandboxError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
    print(f"preflight_share_max: {max(shares):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
