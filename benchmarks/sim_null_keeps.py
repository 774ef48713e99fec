"""False keeps of the old rule (keep if strictly below the best so far) and the new one
(controller.noise.decide), and the extra runs the new one spends, on the same scores.

    python benchmarks/sim_null_keeps.py [--nights 1000] [--proposals 20] [--calibration 3] [--effect 0]
    python benchmarks/sim_null_keeps.py --scores night.json

Without --scores: simulated nights, run-to-run scores drawn from a normal distribution with a
fixed seed; every proposal is a no-op (or all improve by --effect run-to-run sigmas, then the
keep rate is the power). With --scores: one real night, a JSON object
{"baseline": [calibration scores...], "proposals": [[first run, confirmation runs...], ...]}
(what `make bench-null-keeps` collects). Ends with grep-able lines:
`false_keep_old: 0.xx`, `false_keep_new: 0.xx`, `extra_runs: 0.xx`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.noise import NightReplay, NoiseError, RuleSettings, replay_night  # noqa: E402

SIGMA = 1.0  # the rule is scale-free: scores in units of the run-to-run sigma


def simulate(
    nights: int, proposals: int, calibration: int, effect: float, settings: RuleSettings, seed: int
) -> NightReplay:
    """All nights' proposals pooled into one NightReplay (rates over every proposal)."""
    rng = np.random.default_rng(seed)
    total = NightReplay(proposals=0, kept_old=[], kept_new=[], runs_old=0, runs_new=0)
    for _ in range(nights):
        baseline = rng.normal(0.0, SIGMA, calibration).tolist()
        scores = rng.normal(-effect * SIGMA, SIGMA, (proposals, 1 + settings.max_confirm)).tolist()
        r = replay_night(baseline, scores, settings)
        total.proposals += r.proposals
        total.kept_old += r.kept_old
        total.kept_new += r.kept_new
        total.runs_old += r.runs_old
        total.runs_new += r.runs_new
        total.decisions += r.decisions
    return total


def from_file(path: Path, settings: RuleSettings) -> NightReplay:
    data = json.loads(path.read_text())
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("baseline"), list)
        or not isinstance(data.get("proposals"), list)
    ):
        raise NoiseError(f'{path}: expected {{"baseline": [...], "proposals": [[...], ...]}}')
    return replay_night(data["baseline"], data["proposals"], settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scores", type=Path, default=None, help="a real night's scores (JSON)")
    parser.add_argument("--nights", type=int, default=1000)
    parser.add_argument("--proposals", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=3, help="baseline runs at night start")
    parser.add_argument("--effect", type=float, default=0.0, help="true improvement in run-to-run sigmas")
    parser.add_argument("--max-confirm", type=int, default=RuleSettings().max_confirm)
    parser.add_argument("--keep-z", type=float, default=RuleSettings().keep_z)
    parser.add_argument("--confirm-z", type=float, default=RuleSettings().confirm_z)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = RuleSettings(keep_z=args.keep_z, confirm_z=args.confirm_z, max_confirm=args.max_confirm)
    try:
        if args.scores is not None:
            r = from_file(args.scores, settings)
        else:
            r = simulate(args.nights, args.proposals, args.calibration, args.effect, settings, args.seed)
            print(
                f"simulated: {args.nights} nights x {args.proposals} proposals, {args.calibration} calibration "
                f"runs, effect {args.effect:g} sigma, keep_z {settings.keep_z:g}, confirm_z {settings.confirm_z:g}, "
                f"max_confirm {settings.max_confirm}"
            )
    except (NoiseError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    confirmed = sum(d.n_candidate > 1 for d in r.decisions)
    print(f"proposals: {r.proposals}")
    print(f"runs_old: {r.runs_old}")
    print(f"runs_new: {r.runs_new}")
    print(f"confirmed_share: {confirmed / r.proposals if r.proposals else 0.0:.3f}")
    print(
        f"precise: false_keep_old={r.false_keep_old:.4f} false_keep_new={r.false_keep_new:.4f} "
        f"extra_runs={r.extra_runs:.4f}"
    )
    print("\n".join(r.summary_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
