"""Wall time of one experiment in containers vs the same experiment as bare processes.

    python benchmarks/bench_sandbox.py [--profile cpu] [--data-dir data/cpu] [--repeats 1]

Same train.py, same profile (so the same training budget), same seed, same data, in one
invocation; the runs alternate (bare, sandboxed, bare, ...) so drift on a shared machine hits
both. Prints each run's train/eval/total seconds and the ratio of the medians. The aim at the
`cpu` profile: the containers add under 5%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sandbox.bare import run_bare  # noqa: E402
from sandbox.experiment import run_experiment  # noqa: E402
from sandbox.result import ExperimentResult, ExperimentSpec  # noqa: E402


def one(kind: str, spec: ExperimentSpec) -> tuple[float, ExperimentResult]:
    started = time.monotonic()
    result = run_experiment(spec) if kind == "sandbox" else run_bare(spec)
    return time.monotonic() - started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: data/<profile>")
    parser.add_argument("--train", type=Path, default=REPO / "programs/default/train.py")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: a temp dir")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or REPO / "data" / args.profile
    if not (data_dir / "manifest.json").is_file():
        print(f"error: no prepared data in {data_dir}: run `make prepare PROFILE={args.profile}`", file=sys.stderr)
        return 2
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    rows: dict[str, list[tuple[float, ExperimentResult]]] = {"bare": [], "sandbox": []}
    for i in range(args.repeats):
        for kind in ("bare", "sandbox"):
            spec = ExperimentSpec(
                run_id=f"bench-{kind}-{i}",
                train_py=args.train,
                run_dir=runs_dir / f"{kind}-{i}",
                profile=args.profile,
                data_dir=data_dir,
                seed=0,
            )
            wall, result = one(kind, spec)
            rows[kind].append((wall, result))
            bpb = f"{result.val_bpb:.6f}" if result.val_bpb is not None else "-"
            print(
                f"{kind:8s} #{i}: status {result.status:8s} train {result.train_seconds:6.1f} s  "
                f"eval {result.eval_seconds:5.1f} s  wall {wall:6.1f} s  val_bpb {bpb}",
                flush=True,
            )
    medians = {kind: statistics.median(w for w, _ in runs) for kind, runs in rows.items()}
    train = {kind: statistics.median(r.train_seconds for _, r in runs) for kind, runs in rows.items()}
    print(f"profile {args.profile}, {args.repeats} run(s) each, medians:")
    print(f"  bare     wall {medians['bare']:6.1f} s  (train {train['bare']:.1f} s)")
    print(f"  sandbox  wall {medians['sandbox']:6.1f} s  (train {train['sandbox']:.1f} s)")
    ratio = medians["sandbox"] / medians["bare"]
    print(f"  ratio sandbox/bare: {ratio:.3f}  (containers add {100 * (ratio - 1):+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
