"""How long the CPU preflight of a proposal takes (issue 13), in its locked-down container.

    python benchmarks/bench_preflight.py [--profile cpu] [--data-dir DIR] [--image IMAGE]
                                         [--train PATH] [--cases]

For each profile: the seed train.py through sandbox.preflight.SandboxPreflight on the Docker
engine (container creation, train.py's two steps and export, the artifact checks, the probe on
train rows, removal), measured on the host. With --cases, also the broken proposals it exists
to stop (a crash, no export, a refused op, a non-causal model). Prints grep-able lines:

    preflight_<profile>_s: <seconds>              the seed, whole preflight, host wall clock
    preflight_<profile>_<case>_s: <seconds>       a broken proposal, and its verdict on the line before
    preflight_share_max: <fraction>               the largest of them / that profile's train budget

The target is a share under 0.15 of a gpu-profile experiment. On a machine without a GPU this
measures the cpu (and test) profiles; the preflight itself always runs on CPU, so the gpu
profile's preflight (the night's shapes: 2048 tokens x 32 rows on CPU) must be measured on the
GPU host's CPUs.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from evaluator.profiles import get_profile
from sandbox.docker_runner import DockerRunner
from sandbox.errors import SandboxError
from sandbox.preflight import SandboxPreflight
from sandbox.result import ExperimentSpec

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
    "refused_op": _MODEL + textwrap.dedent("""
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
    "non_causal": _MODEL + textwrap.dedent("""
        class PeeksAhead(Bigram):
            def forward(self, idx):
                return self.emb(torch.roll(idx, shifts=-1, dims=1))


        submit(PeeksAhead())
        """),
}


def measure(preflight: SandboxPreflight, train_py: Path, profile: str, data_dir: Path, image: str,
            work: Path, name: str) -> float:
    run_id = f"bench-preflight-{name.replace('_', '-')}-{secrets.token_hex(3)}"
    spec = ExperimentSpec(run_id=run_id, train_py=train_py, run_dir=work / name, profile=profile,
                          data_dir=data_dir, image=image, memory_limit_gb=get_profile(profile).memory_gb)
    verdict = preflight.check(spec)
    record = verdict.record
    said = (f"{record.status} {record.reason_code or ''} train {record.train_seconds:.1f} s, "
            f"checks {record.check_seconds:.1f} s, probe {record.probe_seconds:.1f} s" if record else verdict.note)
    print(f"# {profile} {name}: {said}", flush=True)
    return verdict.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the CPU preflight of the seed (and broken proposals).")
    parser.add_argument("--profile", action="append", help="a night profile (repeat for several; default cpu)")
    parser.add_argument("--data-dir", type=Path, action="append",
                        help="prepared data per --profile, in the same order (default data/<profile>)")
    parser.add_argument("--image", default="overnight-evaluator:latest")
    parser.add_argument("--train", type=Path, default=REPO_ROOT / "programs" / "default" / "train.py")
    parser.add_argument("--cases", action="store_true", help="also time the broken proposals it stops")
    args = parser.parse_args(argv)
    profiles = args.profile or ["cpu"]
    data_dirs = args.data_dir or [REPO_ROOT / "data" / p for p in profiles]
    if len(data_dirs) != len(profiles):
        print("error: give one --data-dir per --profile (or none)", file=sys.stderr)
        return 2
    preflight = SandboxPreflight(DockerRunner())
    shares: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-preflight-") as tmp:
        work = Path(tmp)
        for profile, data_dir in zip(profiles, data_dirs, strict=True):
            budget = get_profile(profile).time_budget_s
            try:
                seconds = measure(preflight, args.train, profile, data_dir, args.image, work / profile, "seed")
                print(f"preflight_{profile}_s: {seconds:.2f}", flush=True)
                shares.append(seconds / budget)
                for case, source in (CASES.items() if args.cases else ()):
                    train_py = work / f"{profile}-{case}.py"
                    train_py.write_text(source)
                    seconds = measure(preflight, train_py, profile, data_dir, args.image, work / profile, case)
                    print(f"preflight_{profile}_{case}_s: {seconds:.2f}", flush=True)
                    shares.append(seconds / budget)
            except SandboxError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
    print(f"preflight_share_max: {max(shares):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
