"""False keeps of changes that do nothing, on a real night in containers.

    python benchmarks/bench_null_keeps.py [--profile cpu] [--proposals 20] [--slots 2] [--improvement]
    python benchmarks/bench_null_keeps.py --profile test --proposals 3 --slots 1   # the tiny version

The real loop (calibration runs of the baseline, the keep rule, confirmation runs alongside the
best) over the real sandbox; every proposal is a no-op: a reworded comment and a changed random
seed, alternating. Any keep is a false keep. The old rule (keep when the first run is strictly
below the best's first run so far) is applied to the same first runs, in experiment order; the
new rule's keeps are what the loop decided. With --improvement, one more proposal is
a real change (--improvement-edit OLD NEW, repeatable; default: every learning rate tripled, measured
better on cpu by benchmarks/measure_noise.py, see docs/noise.md), and the line `improvement_kept:`
says whether the night kept it.

Ends with grep-able lines: `false_keep_old:`, `false_keep_new:`, `extra_runs:` (runs beyond one
per experiment, calibration and the best's runs alongside included, as a share of all runs, over
the baseline and the no-ops: the null night), `runs:`, `runs_alongside:`, `proposals:`; with
--improvement also `extra_runs_with_improvement:` (the whole night, the improvement's own
confirmation included) and `improvement_kept:`. --report DIR prints them again for a finished
bench's --workdir without running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from night_kit import ThinkingAgent, all_records, comment_only, run_night, seed_only  # noqa: E402

from controller.logs import configure_quiet  # noqa: E402

# The real change of --improvement: every learning rate of the seed tripled. Measured on `cpu`
# (benchmarks/measure_noise.py --runs 3, docs/noise.md): val_bpb 2.463 +/- 0.029 against the
# seed's 2.592 +/- 0.031 under the same conditions.
IMPROVEMENT = [
    ("MATRIX_LR = 0.02", "MATRIX_LR = 0.06"),
    ("EMBED_LR = 0.3", "EMBED_LR = 0.9"),
    ("HEAD_LR = 0.004", "HEAD_LR = 0.012"),
    ("SCALAR_LR = 0.02", "SCALAR_LR = 0.06"),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--data-dir", type=Path, default=None, help="default: data/<profile>")
    p.add_argument("--proposals", type=int, default=20)
    p.add_argument("--slots", type=int, default=2, help="experiments at once, one core each")
    p.add_argument("--calibration-runs", type=int, default=3)
    p.add_argument("--improvement", action="store_true", help="end with a change known to be better")
    p.add_argument(
        "--improvement-edit",
        nargs=2,
        action="append",
        metavar=("OLD", "NEW"),
        help="a text replacement in the seed (repeat for several; default: every learning rate tripled)",
    )
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--report", type=Path, default=None, help="a finished bench's --workdir: print its numbers again")
    p.add_argument("--json", type=Path, default=None, help="write every run's score, in order, to this file")
    args = p.parse_args()
    configure_quiet()
    data_dir = (args.data_dir or REPO / "data" / args.profile).resolve()
    if not (data_dir / "manifest.json").is_file():
        sys.exit(f"no prepared data in {data_dir}: run `make prepare PROFILE={args.profile}` first")
    total = args.proposals + (1 if args.improvement else 0)
    edits = [tuple(e) for e in args.improvement_edit] if args.improvement_edit else IMPROVEMENT

    calls = {"n": 0}

    def is_improvement(n: int) -> bool:  # the last proposal of the night (by the agent's count)
        return args.improvement and calls["n"] == total

    def edit(source: str, n: int) -> str:
        calls["n"] += 1
        if is_improvement(n):
            for old, new in edits:
                if old not in source:
                    sys.exit(f"--improvement-edit: {old!r} is not in the seed")
                source = source.replace(old, new, 1)
            return source
        return (comment_only if n % 2 else seed_only)(source, n)

    def describe(n: int) -> str:
        if is_improvement(n):
            return "improvement: " + ", ".join(new for _, new in edits)
        return f"no-op {n}: " + ("reword a comment" if n % 2 else "another random seed")

    import os

    cores = [str(c) for c in sorted(os.sched_getaffinity(0))]
    cpusets = cores[: args.slots] if args.slots > 1 else [",".join(cores)]
    if args.report is not None:
        tag_dir, wall_s = args.report / "null" / "runs" / "null", None
        if not tag_dir.is_dir():
            sys.exit(f"{args.report} holds no finished bench night (no null/runs/null/)")
    else:
        night = run_night(
            args.workdir or Path(tempfile.mkdtemp(prefix="bench-null-keeps-")),
            label="null",
            profile=args.profile,
            data_dir=data_dir,
            agent=ThinkingAgent(0.0, edit, describe),
            cpusets=cpusets,
            overlap=True,
            max_experiments=total,
            calibration_runs=args.calibration_runs,
        )
        tag_dir, wall_s = night.tag_dir, night.wall_s
    records = {r.n: r for r in all_records(tag_dir)}

    def scores(n: int) -> list[float]:  # the experiment's own runs
        return [r.val_bpb for r in records[n].own_replicates if r.val_bpb is not None and not r.preflight]

    improvements = [n for n in records if records[n].description.startswith("improvement")]
    nulls = [n for n in sorted(records) if n > 0 and records[n].kind == "proposal" and n not in improvements]
    baseline = scores(0)
    if not baseline:
        sys.exit(
            f"the baseline did not score ({records[0].status}: {records[0].reason}): nothing to compare "
            "against; is the machine busy? (`make logs RUN=0` in the bench's checkout)"
        )
    scored = [n for n in nulls if scores(n)]
    best_old, kept_old = baseline[0], 0
    for n in scored:  # the old rule on the same first runs
        if scores(n)[0] < best_old:
            best_old, kept_old = scores(n)[0], kept_old + 1
    kept_new = sum(records[n].status == "keep" for n in scored)

    def runs_of(ns: list[int]) -> int:  # every scored run the new rule spent on them, the best's alongside too
        return sum(1 for n in ns for r in records[n].replicates if r.val_bpb is not None and not r.preflight)

    null_night = [0, *scored]  # the night the goal is about: the baseline and the no-ops
    runs, runs_all = runs_of(null_night), runs_of(sorted(records))
    alongside = sum(1 for n in null_night for r in records[n].replicates if r.of_commit and r.val_bpb is not None)
    experiments, experiments_all = len(null_night), sum(1 for n in records if scores(n))
    if args.json:
        timeline = sorted(
            (r.finished.isoformat(), n, r.k, r.of_commit is not None, r.val_bpb)
            for n, rec in records.items()
            for r in rec.replicates
            if r.val_bpb is not None
        )
        args.json.write_text(json.dumps({"runs": timeline}) + "\n")
    print(f"noise: baseline runs {', '.join(f'{s:.4f}' for s in baseline)}")
    if wall_s is not None:
        print(f"wall_s: {wall_s:.0f}")
    print(f"proposals: {len(scored)}")
    print(f"runs: {runs}")
    print(f"runs_alongside: {alongside}")
    print(f"false_keep_old: {kept_old / len(scored) if scored else 0.0:.2f}")
    print(f"false_keep_new: {kept_new / len(scored) if scored else 0.0:.2f}")
    print(f"extra_runs: {(runs - experiments) / runs if runs else 0.0:.2f}")
    if args.improvement:  # the improvement's own confirmation is the cost of a real keep, shown apart
        print(f"runs_with_improvement: {runs_all}")
        print(f"extra_runs_with_improvement: {(runs_all - experiments_all) / runs_all if runs_all else 0.0:.2f}")
    if args.improvement:
        rec = records[improvements[0]] if improvements else None
        kept = rec is not None and rec.status == "keep"
        print(
            f"improvement: {', '.join(f'{s:.4f}' for s in scores(rec.n)) if rec else 'not run'} "
            f"({rec.decision.text if rec and rec.decision else '-'})"
        )
        print(f"improvement_kept: {'yes' if kept else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
