"""How busy the slots are: three nights of fixed length in containers, each slot pinned to one core.

    python benchmarks/bench_throughput.py [--profile cpu] [--minutes 10] [--think-s 20]
    python benchmarks/bench_throughput.py --profile test --experiments 2 --think-s 2   # the tiny version

Arms (the real loop over the real sandbox; the agent "thinks" --think-s seconds per proposal, then
rewords a comment of the seed, so every run trains and scores the seed):
- sequential: 1 slot, no overlap (propose, then train and score, then propose...);
- overlap: 1 slot, the agent prepares the next proposal while the slot trains and scores;
- 2 slots: two experiments at once, each on its own core, with overlap.

No change is ever kept (a keep must gain 1 bpb: --min-delta 1), so no proposal is rebased or
merged and the arms differ only in scheduling; one baseline run, no confirmations. A slot's busy
fraction is the seconds it had one of an experiment's containers running (train or score, as
measured from outside), divided by the arm's wall seconds. Runs per hour count every run. Ends with
grep-able lines: `busy_sequential:`, `busy_overlap:`, `speedup_2_slots:` (2 slots' runs per hour
over 1 slot with overlap).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from night_kit import NightRun, ThinkingAgent, all_records, comment_only, run_night  # noqa: E402

from controller.logs import configure_quiet  # noqa: E402


def busy_fractions(night: NightRun, slots: int) -> list[float]:
    busy = [0.0] * slots
    for record in all_records(night.tag_dir):
        for rep in record.replicates:
            if rep.slot is not None and not rep.preflight:
                busy[rep.slot] += rep.train_seconds + rep.eval_seconds
    return [b / night.wall_s for b in busy]


def runs_per_hour(night: NightRun) -> float:
    runs = sum(len([r for r in rec.replicates if not r.preflight]) for rec in all_records(night.tag_dir))
    return runs / (night.wall_s / 3600)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--data-dir", type=Path, default=None, help="default: data/<profile>")
    p.add_argument("--minutes", type=float, default=10.0, help="length of each arm's night")
    p.add_argument("--experiments", type=int, default=None, help="end each arm after this many (instead of minutes)")
    p.add_argument("--think-s", type=float, default=20.0)
    p.add_argument(
        "--cores", default=None, help="the two cores, e.g. 0,1 (default: the first two this process may use)"
    )
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    configure_quiet()
    data_dir = (args.data_dir or REPO / "data" / args.profile).resolve()
    if not (data_dir / "manifest.json").is_file():
        sys.exit(f"no prepared data in {data_dir}: run `make prepare PROFILE={args.profile}` first")
    cores = args.cores.split(",") if args.cores else [str(c) for c in sorted(os.sched_getaffinity(0))[:2]]
    if len(cores) < 2:
        sys.exit("the 2-slot arm needs two cores")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    length = {"max_experiments": args.experiments} if args.experiments else {"hours": args.minutes / 60}
    common = dict(
        profile=args.profile, data_dir=data_dir, calibration_runs=1, max_confirmations=0, min_delta=1.0, **length
    )

    def agent() -> ThinkingAgent:
        return ThinkingAgent(args.think_s, comment_only, lambda n: f"reword a comment (pass {n})")

    arms = {
        "sequential": run_night(work, label="sequential", agent=agent(), cpusets=[cores[0]], overlap=False, **common),
        "overlap": run_night(work, label="overlap", agent=agent(), cpusets=[cores[0]], overlap=True, **common),
        "two": run_night(work, label="two", agent=agent(), cpusets=cores[:2], overlap=True, **common),
    }
    busy = {name: busy_fractions(night, 2 if name == "two" else 1) for name, night in arms.items()}
    rate = {name: runs_per_hour(night) for name, night in arms.items()}
    for name, night in arms.items():
        print(
            f"{name}: {night.wall_s:.0f} s wall, {rate[name]:.1f} runs/hour, busy "
            + ", ".join(f"{b:.2f}" for b in busy[name])
        )
    print(f"think_s: {args.think_s:g}")
    print(f"runs_per_hour_sequential: {rate['sequential']:.1f}")
    print(f"runs_per_hour_overlap: {rate['overlap']:.1f}")
    print(f"runs_per_hour_2_slots: {rate['two']:.1f}")
    print(f"busy_sequential: {busy['sequential'][0]:.2f}")
    print(f"busy_overlap: {busy['overlap'][0]:.2f}")
    print(f"busy_2_slots: {min(busy['two']):.2f}")
    print(f"speedup_2_slots: {rate['two'] / rate['overlap']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
