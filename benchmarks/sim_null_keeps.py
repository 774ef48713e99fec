"""False keeps of the old rule (keep if strictly below the best so far) and the new one
(controller.noise.decide), and the extra runs the new one spends, on the same simulated runs.

    python benchmarks/sim_null_keeps.py [--nights 1000] [--proposals 20] [--calibration 3] [--effect 0]
    python benchmarks/sim_null_keeps.py --drift 4 --period 30      # a machine whose speed wanders

Scores are drawn from a normal distribution with a fixed seed, in units of the run-to-run sigma
(the rule is scale-free). Every proposal is a no-op, or all improve by --effect sigmas (then the
keep rate is the power). --drift A adds a slow wander of the machine's speed shared by every run
made at the same time: A sigmas times a sine of --period runs with a random phase per night, the
kind of drift a shared VM showed (docs/noise.md). Ends with grep-able lines:
`false_keep_old: 0.xx`, `false_keep_new: 0.xx`, `extra_runs: 0.xx`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.noise import BASELINE, NightReplay, NoiseError, RuleSettings, simulate_night  # noqa: E402


def drifting_runs(rng: np.random.Generator, effect: float, drift: float, period: float) -> Callable[[int], float]:
    """run(i) for one night: proposal i improves by `effect` sigmas (the baseline by none), plus a
    drift of `drift` sigmas that every run made at the same time shares."""
    phase = rng.uniform(0.0, 2 * math.pi)
    clock = {"t": 0}

    def run(i: int) -> float:
        t = clock["t"]
        clock["t"] += 1
        true = 0.0 if i == BASELINE else -effect
        return true + drift * math.sin(2 * math.pi * t / period + phase) + float(rng.normal())

    return run


def simulate(
    nights: int,
    proposals: int,
    calibration: int,
    effect: float,
    settings: RuleSettings,
    seed: int,
    drift: float = 0.0,
    period: float = 30.0,
) -> NightReplay:
    """All nights' proposals pooled into one NightReplay (rates over every proposal)."""
    rng = np.random.default_rng(seed)
    total = NightReplay(proposals=0, kept_old=[], kept_new=[], runs_old=0, runs_new=0)
    for _ in range(nights):
        total.add(simulate_night(calibration, proposals, drifting_runs(rng, effect, drift, period), settings))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = RuleSettings()
    parser.add_argument("--nights", type=int, default=1000)
    parser.add_argument("--proposals", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=3, help="baseline runs at night start")
    parser.add_argument("--effect", type=float, default=0.0, help="true improvement in run-to-run sigmas")
    parser.add_argument("--drift", type=float, default=0.0, help="amplitude of the machine's drift, in sigmas")
    parser.add_argument("--period", type=float, default=30.0, help="period of the drift, in runs")
    parser.add_argument("--max-confirm", type=int, default=defaults.max_confirm)
    parser.add_argument("--keep-z", type=float, default=defaults.keep_z)
    parser.add_argument("--confirmed-z", type=float, default=defaults.confirmed_z)
    parser.add_argument("--confirm-z", type=float, default=defaults.confirm_z)
    parser.add_argument("--keep-at-once-z", type=float, default=defaults.keep_at_once_z)
    parser.add_argument("--anchor-runs", type=int, default=defaults.anchor_runs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        settings = RuleSettings(
            keep_z=args.keep_z,
            confirmed_z=args.confirmed_z,
            confirm_z=args.confirm_z,
            keep_at_once_z=args.keep_at_once_z,
            max_confirm=args.max_confirm,
            anchor_runs=args.anchor_runs,
        )
        r = simulate(
            args.nights, args.proposals, args.calibration, args.effect, settings, args.seed, args.drift, args.period
        )
    except (NoiseError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"simulated: {args.nights} nights x {args.proposals} proposals, {args.calibration} calibration runs, "
        f"effect {args.effect:g} sigma, drift {args.drift:g} sigma over {args.period:g} runs, "
        f"keep_z {settings.keep_z:g}, confirmed_z {settings.confirmed_z:g}, confirm_z {settings.confirm_z:g}, "
        f"keep_at_once_z {settings.keep_at_once_z:g}, "
        f"max_confirm {settings.max_confirm}, anchor_runs {settings.anchor_runs}"
    )
    confirmed = sum(d.alongside or d.n_candidate > 1 for d in r.decisions)
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
