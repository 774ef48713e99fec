"""The keep rule with a margin: measured noise, paired eval noise, confirmation runs, simpler-code
ties, deterministic profiles, and error bars; false keeps and power on simulated noisy nights
(fixed seeds)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from pydantic import ValidationError

from controller.noise import (
    Decision,
    NoiseError,
    NoiseEstimate,
    RuleSettings,
    code_size,
    decide,
    error_bars,
    is_simpler,
    paired_eval_se,
    pooled_noise,
    replay_night,
    t_quantile,
)
from evaluator.rowloss import RowLosses

SIGMA = 0.004  # a run-to-run spread of the size a time budget gives (bpb)


def night(
    rng: np.random.Generator,
    proposals: int,
    calibration: int,
    effects: list[float] | None = None,
    settings: RuleSettings | None = None,
) -> tuple[list[float], list[list[float]]]:
    """Scores of a simulated night: calibration runs of the baseline (true value 1.0) and, per
    proposal, enough runs for the rule's confirmations; effects in units of SIGMA (negative = better)."""
    runs = 1 + (settings or RuleSettings()).max_confirm
    effects = effects or [0.0] * proposals
    baseline = rng.normal(1.0, SIGMA, calibration).tolist()
    scores = [rng.normal(1.0 + e * SIGMA, SIGMA, runs).tolist() for e in effects]
    return baseline, scores


def keep_rate_against_baseline(effect: float, calibration: int, nights: int, seed: int) -> tuple[float, float]:
    """(share kept, confirmation runs per proposal) for one proposal of true effect `effect` sigma
    against a freshly calibrated baseline, over many nights."""
    rng = np.random.default_rng(seed)
    kept, extra = 0, 0
    for _ in range(nights):
        baseline, scores = night(rng, 1, calibration, [-effect])
        r = replay_night(baseline, scores)
        kept += r.kept_new[0]
        extra += r.decisions[0].n_candidate - 1
    return kept / nights, extra / nights


# ---------------------------------------------------------------------------------------------
# Noise estimates


def test_pooled_noise_matches_numpy_on_known_data() -> None:
    groups = {"base": [2.71, 2.73, 2.70, 2.74], "c1": [2.69, 2.66], "c2": [2.80, 2.79, 2.83], "single": [2.5]}
    arrays = [np.array(v) for k, v in groups.items() if k != "single"]
    want_var = sum((len(a) - 1) * np.var(a, ddof=1) for a in arrays) / sum(len(a) - 1 for a in arrays)
    noise = pooled_noise(groups)
    assert noise.sigma == pytest.approx(math.sqrt(want_var), rel=1e-12)
    assert (noise.df, noise.runs, noise.groups) == (6, 9, 3)
    assert "6 df" in noise.source


def test_without_replicates_the_noise_is_unknown() -> None:
    noise = pooled_noise({"a": [1.0], "b": [2.0]})
    assert noise.sigma is None and noise.df == 0 and not noise.known


def test_non_finite_scores_are_refused() -> None:
    with pytest.raises(NoiseError, match="finite"):
        pooled_noise({"a": [1.0, math.nan]})
    with pytest.raises(NoiseError, match="finite"):
        decide([math.inf], [1.0], NoiseEstimate.for_deterministic_profile())


def test_t_quantiles_match_the_tables() -> None:
    for p, df, want in [
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 5, 2.571),
        (0.95, 10, 1.812),
        (0.995, 3, 5.841),
        (0.975, 30, 2.042),
    ]:
        assert t_quantile(p, df) == pytest.approx(want, abs=1e-3)
    assert t_quantile(0.975, None) == pytest.approx(1.95996, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Paired eval-sampling noise


def eval_set(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of each eval row and its difficulty (nats per byte), shared by every run."""
    return rng.integers(200, 1200, rows), rng.gamma(4.0, 0.5, rows)


def row_runs(rng: np.random.Generator, rows: tuple[np.ndarray, np.ndarray], runs: int, shift: float) -> list[RowLosses]:
    """Runs scored on the same rows: a model `shift` better or worse everywhere, plus per-run noise."""
    nbytes, difficulty = rows
    out = []
    for _ in range(runs):
        rate = difficulty * (1 + shift) + rng.normal(0, 0.05, len(nbytes))
        out.append(RowLosses(nats=np.clip(rate, 0, None) * nbytes, tokens=nbytes // 3, bytes=nbytes))
    return out


def test_paired_delta_is_the_difference_of_val_bpb() -> None:
    rng = np.random.default_rng(0)
    rows = eval_set(rng, 256)
    a, b = row_runs(rng, rows, 1, -0.01), row_runs(rng, rows, 1, 0.0)
    paired = paired_eval_se(a, b)
    assert paired.delta == pytest.approx(a[0].bpb - b[0].bpb, rel=1e-9)
    assert paired.delta < 0 and paired.rows == 256


def test_paired_eval_se_agrees_with_a_bootstrap_over_rows() -> None:
    rng = np.random.default_rng(1)
    rows = eval_set(rng, 400)
    cand, best = row_runs(rng, rows, 1, -0.01), row_runs(rng, rows, 1, 0.0)
    se = paired_eval_se(cand, best).se
    n, boot = 400, []
    for _ in range(2000):
        idx = rng.integers(0, n, n)
        boot.append((cand[0].nats[idx].sum() - best[0].nats[idx].sum()) / (math.log(2) * cand[0].bytes[idx].sum()))
    assert se > 0
    assert se == pytest.approx(float(np.std(boot, ddof=1)), rel=0.1)


def test_pairing_removes_the_spread_of_row_difficulty() -> None:
    rng = np.random.default_rng(2)
    rows = eval_set(rng, 300)
    cand, best = row_runs(rng, rows, 1, -0.01), row_runs(rng, rows, 1, 0.0)
    nbytes = rows[0]
    per_byte = cand[0].nats / nbytes / math.log(2)  # the unpaired SE of one run's bpb is far larger
    unpaired = float(np.std(per_byte, ddof=1)) / math.sqrt(len(nbytes))
    assert paired_eval_se(cand, best).se < unpaired / 5


def test_replicates_are_averaged_per_row_before_pairing() -> None:
    rng = np.random.default_rng(3)
    rows = eval_set(rng, 300)
    cand, best = row_runs(rng, rows, 3, -0.005), row_runs(rng, rows, 3, 0.0)
    many = paired_eval_se(cand, best)
    assert many.delta == pytest.approx(statistics.fmean(r.bpb for r in cand) - statistics.fmean(r.bpb for r in best))
    assert many.se < paired_eval_se(cand[:1], best[:1]).se


def test_identical_runs_have_no_eval_noise() -> None:
    rng = np.random.default_rng(4)
    run = row_runs(rng, eval_set(rng, 64), 1, 0.0)
    paired = paired_eval_se(run, run)
    assert paired.delta == 0.0 and paired.se == 0.0


def test_rows_of_different_eval_sets_are_not_paired() -> None:
    rng = np.random.default_rng(5)
    a, b = row_runs(rng, eval_set(rng, 64), 1, 0.0), row_runs(rng, eval_set(rng, 64), 1, 0.0)
    with pytest.raises(NoiseError, match="same eval rows"):
        paired_eval_se(a, b)
    with pytest.raises(NoiseError, match="same eval rows"):
        paired_eval_se(a, row_runs(rng, eval_set(rng, 63), 1, 0.0))


# ---------------------------------------------------------------------------------------------
# The rule on simulated noisy nights


def test_null_night_keeps_at_most_5_percent_with_at_most_20_percent_extra_runs() -> None:
    rng = np.random.default_rng(12)
    keeps_old = keeps_new = runs_old = runs_new = proposals = 0
    for _ in range(400):
        baseline, scores = night(rng, 20, 3)
        r = replay_night(baseline, scores)
        keeps_old, keeps_new = keeps_old + sum(r.kept_old), keeps_new + sum(r.kept_new)
        runs_old, runs_new, proposals = runs_old + r.runs_old, runs_new + r.runs_new, proposals + r.proposals
    assert keeps_new / proposals <= 0.05
    assert (runs_new - runs_old) / runs_new <= 0.20
    assert keeps_old / proposals >= 0.10  # the old rule's problem, on the same scores


@pytest.mark.parametrize("calibration", [3, 5, 10])
def test_a_no_op_against_a_calibrated_baseline_is_kept_at_most_5_percent(calibration: int) -> None:
    kept, extra = keep_rate_against_baseline(0.0, calibration, 3000, seed=calibration)
    assert kept <= 0.05
    assert extra <= 0.20


@pytest.mark.parametrize("effect, calibration, power", [(3, 3, 0.5), (4, 3, 0.75), (5, 3, 0.9), (3, 10, 0.8)])
def test_real_improvements_of_a_few_sigma_are_kept(effect: float, calibration: int, power: float) -> None:
    kept, _ = keep_rate_against_baseline(effect, calibration, 1500, seed=100 + effect)
    assert kept >= power


def test_power_grows_with_the_noise_estimate() -> None:
    few, _ = keep_rate_against_baseline(2.0, 3, 1500, seed=7)
    many, _ = keep_rate_against_baseline(2.0, 12, 1500, seed=7)
    assert many > few + 0.1


def test_a_real_improvement_among_no_ops_is_kept_and_the_no_ops_are_not() -> None:
    rng = np.random.default_rng(5)
    effects = [0.0] * 20
    effects[7] = -8.0
    baseline, scores = night(rng, 20, 3, effects)
    r = replay_night(baseline, scores)
    assert r.kept_new[7]
    assert sum(r.kept_new) == 1


def test_grey_zone_asks_for_a_confirmation_then_decides_on_the_mean() -> None:
    noise = NoiseEstimate(sigma=SIGMA, df=20)
    first = decide([1.0 - 1.6 * SIGMA], [1.0, 1.0, 1.0], noise)
    assert first.verdict == "confirm" and first.n_candidate == 1
    kept = decide([1.0 - 1.6 * SIGMA, 1.0 - 3.0 * SIGMA], [1.0, 1.0, 1.0], noise)
    assert kept.verdict == "keep" and kept.n_candidate == 2
    dropped = decide([1.0 - 1.6 * SIGMA, 1.0], [1.0, 1.0, 1.0], noise)
    assert dropped.verdict == "discard"


def test_clear_results_need_no_confirmation() -> None:
    noise = NoiseEstimate(sigma=SIGMA, df=20)
    assert decide([1.0 - 5 * SIGMA], [1.0, 1.0, 1.0], noise).verdict == "keep"
    assert decide([1.0 + 0.1 * SIGMA], [1.0, 1.0, 1.0], noise).verdict == "discard"
    assert decide([1.0 - 0.5 * SIGMA], [1.0, 1.0, 1.0], noise).verdict == "discard"


def test_confirmations_are_bounded() -> None:
    noise = NoiseEstimate(sigma=SIGMA, df=20)
    grey = [1.0 - 1.6 * SIGMA] * 4
    assert decide(grey[:3], [1.0], noise, RuleSettings(max_confirm=2)).verdict == "discard"
    assert decide(grey[:1], [1.0], noise, RuleSettings(max_confirm=0)).verdict == "discard"


def test_a_noise_estimate_from_few_runs_widens_the_margin() -> None:
    delta = [1.0 - 3.0 * SIGMA]
    assert decide(delta, [1.0] * 3, NoiseEstimate(sigma=SIGMA, df=40)).verdict == "keep"
    assert decide(delta, [1.0] * 3, NoiseEstimate(sigma=SIGMA, df=2)).verdict == "confirm"


def test_eval_noise_adds_to_the_standard_error() -> None:
    noise = NoiseEstimate(sigma=SIGMA, df=40)
    without = decide([1.0 - 3 * SIGMA], [1.0] * 3, noise)
    with_eval = decide([1.0 - 3 * SIGMA], [1.0] * 3, noise, se_eval=2 * SIGMA)
    assert without.se is not None and with_eval.se is not None
    assert with_eval.se == pytest.approx(math.sqrt(without.se**2 + (2 * SIGMA) ** 2))
    assert (without.verdict, with_eval.verdict) == ("keep", "confirm")


def test_without_any_replicate_the_rule_confirms_then_refuses_to_keep() -> None:
    unknown = NoiseEstimate()
    first = decide([0.5], [1.0], unknown)
    assert first.verdict == "confirm" and "not measured" in first.text and first.se is None
    later = decide([0.5, 0.5], [1.0], unknown)
    assert later.verdict == "discard" and "calibrate" in later.reason


# ---------------------------------------------------------------------------------------------
# Deterministic profiles (no training noise)


def test_deterministic_profile_keeps_any_strict_improvement_without_eval_noise() -> None:
    exact = NoiseEstimate.for_deterministic_profile()
    assert decide([2.999999], [3.0], exact).verdict == "keep"
    assert decide([3.0], [3.0], exact).verdict == "discard"
    assert decide([3.1], [3.0], exact).verdict == "discard"


def test_deterministic_profile_never_asks_for_confirmation() -> None:
    exact = NoiseEstimate.for_deterministic_profile()
    for value in np.linspace(2.9, 3.1, 41):
        assert decide([float(value)], [3.0], exact, se_eval=0.02).verdict != "confirm"


def test_deterministic_profile_with_eval_noise_needs_two_standard_errors() -> None:
    exact = NoiseEstimate.for_deterministic_profile()
    assert decide([3.0 - 0.03], [3.0], exact, se_eval=0.02).verdict == "discard"
    assert decide([3.0 - 0.05], [3.0], exact, se_eval=0.02).verdict == "keep"


def test_absolute_margin_applies_when_nothing_is_noisy() -> None:
    exact = NoiseEstimate.for_deterministic_profile()
    settings = RuleSettings(min_delta=0.001)
    assert decide([3.0 - 0.0005], [3.0], exact, settings).verdict == "discard"
    assert decide([3.0 - 0.002], [3.0], exact, settings).verdict == "keep"


def test_replicates_that_came_out_identical_count_as_exact() -> None:
    noise = pooled_noise({"base": [3.0, 3.0, 3.0]})
    assert noise.sigma == 0.0 and noise.exact
    d = decide([2.9999], [3.0, 3.0, 3.0], noise)
    assert d.verdict == "keep" and d.df is None


# ---------------------------------------------------------------------------------------------
# An equal score with simpler code counts as a win

SEED = '''"""A docstring
over two lines."""
import math

LR = 0.02  # learning rate


def f(x):
    """Doc."""
    y = x * LR
    z = math.sqrt(abs(y))
    return y + z
'''


def test_code_size_ignores_comments_docstrings_and_blank_lines() -> None:
    size = code_size(SEED)
    commented = SEED.replace("LR = 0.02  # learning rate", "# a new comment\nLR = 0.02\n\n\n")
    assert size.lines == 6
    assert code_size(commented) == size
    assert code_size(SEED.replace('"""Doc."""', '"""A much longer docstring."""')) == size


def test_joining_lines_is_not_simpler_but_deleting_code_is() -> None:
    joined = SEED.replace("    y = x * LR\n    z = math.sqrt(abs(y))\n", "    y = x * LR; z = math.sqrt(abs(y))\n")
    deleted = SEED.replace("    z = math.sqrt(abs(y))\n", "").replace("return y + z", "return y")
    seed = code_size(SEED)
    assert code_size(joined).lines < seed.lines and not is_simpler(code_size(joined), seed)
    assert is_simpler(code_size(deleted), seed)
    assert not is_simpler(seed, seed)


def test_code_that_does_not_parse_has_no_size() -> None:
    with pytest.raises(NoiseError, match="code size"):
        code_size("def f(:\n")


def test_equal_score_with_simpler_code_is_kept_in_a_deterministic_profile() -> None:
    exact = NoiseEstimate.for_deterministic_profile()
    assert decide([3.0], [3.0], exact, simpler=True).verdict == "keep"
    assert decide([3.0], [3.0], exact, simpler=True).reason == "equal within noise, simpler code"
    assert decide([3.0001], [3.0], exact, simpler=True).verdict == "discard"
    assert decide([3.0], [3.0], exact, RuleSettings(simpler_wins_ties=False), simpler=True).verdict == "discard"


def test_simpler_code_in_a_noisy_profile_is_confirmed_then_kept_on_a_mean_not_worse() -> None:
    noise = NoiseEstimate(sigma=SIGMA, df=20)
    best = [1.0, 1.0, 1.0]
    assert decide([1.0 + 0.5 * SIGMA], best, noise, simpler=True).verdict == "confirm"
    assert decide([1.0 + 0.5 * SIGMA, 1.0 - 1.0 * SIGMA], best, noise, simpler=True).verdict == "keep"
    assert decide([1.0 + 0.5 * SIGMA, 1.0 + 0.1 * SIGMA], best, noise, simpler=True).verdict == "discard"
    assert decide([1.0 + 3 * SIGMA], best, noise, simpler=True).verdict == "discard"


# ---------------------------------------------------------------------------------------------
# What the ledger and the agents see


def test_decision_text_reads_delta_se_and_runs() -> None:
    noise = NoiseEstimate(sigma=0.0009, df=10)
    d = decide([1.0, 0.9986], [1.0, 1.0007, 0.9993], noise)
    assert d.verdict == "discard"
    assert d.text == "delta -0.00070 +/- 0.00082 (2 runs vs 3): within noise"
    assert d.short == "-0.000700+/-0.000822 2v3"


def test_decision_survives_a_json_round_trip() -> None:
    d = decide([1.0], [1.01, 1.02], pooled_noise({"b": [1.01, 1.02]}), se_eval=0.001)
    assert Decision.model_validate_json(d.model_dump_json()) == d
    unknown = decide([1.0], [1.01], NoiseEstimate())
    assert Decision.model_validate_json(unknown.model_dump_json()) == unknown


def test_thresholds_are_validated_settings() -> None:
    with pytest.raises(ValidationError):
        RuleSettings(keep_z=0)
    with pytest.raises(ValidationError):
        RuleSettings(max_confirm=-1)


# ---------------------------------------------------------------------------------------------
# Error bars for the morning


def test_error_bars_are_welch_mean_and_se_with_a_t_interval() -> None:
    base, best = [2.71, 2.73, 2.70], [2.65, 2.66, 2.62]
    bars = error_bars(base, best)
    va, vb = np.var(base, ddof=1) / 3, np.var(best, ddof=1) / 3
    assert bars.method == "welch"
    assert bars.improvement == pytest.approx(np.mean(base) - np.mean(best))
    assert bars.se == pytest.approx(math.sqrt(va + vb))
    assert bars.df == int((va + vb) ** 2 / (va**2 / 2 + vb**2 / 2))
    assert bars.ci_low == pytest.approx(bars.improvement - t_quantile(0.975, bars.df) * bars.se)
    assert "mean +/- SE" in bars.text and "95% CI" in bars.text and "3 runs of the baseline, 3 of the best" in bars.text


def test_error_bars_cover_the_true_improvement_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(9)
    covered = 0
    for _ in range(2000):
        bars = error_bars(rng.normal(1.0, SIGMA, 3).tolist(), rng.normal(1.0 - 2 * SIGMA, SIGMA, 3).tolist())
        covered += bars.ci_low <= 2 * SIGMA <= bars.ci_high
    assert 0.93 <= covered / 2000 <= 0.985  # Welch with the df floored is slightly conservative


def test_error_bars_fall_back_to_the_pooled_noise_and_say_when_unmeasured() -> None:
    pooled = error_bars([2.71], [2.65], NoiseEstimate(sigma=0.01, df=8))
    assert pooled.method == "pooled" and pooled.se == pytest.approx(0.01 * math.sqrt(2)) and pooled.df == 8
    unmeasured = error_bars([2.71], [2.65])
    assert unmeasured.se is None and "spread not measured" in unmeasured.text
    exact = error_bars([3.25], [3.20], NoiseEstimate.for_deterministic_profile())
    assert exact.se == 0.0 and exact.ci_low == exact.ci_high == pytest.approx(0.05)
    assert "deterministic" in exact.text


# ---------------------------------------------------------------------------------------------
# Replaying a night of real scores


def test_replay_applies_the_old_rule_to_first_runs_only() -> None:
    r = replay_night([3.0, 3.0, 3.0], [[2.9], [2.95], [2.8]], deterministic=True)
    assert r.kept_old == [True, False, True]
    assert r.kept_new == [True, False, True]
    assert (r.runs_old, r.runs_new) == (4, 6)
    assert r.summary_lines() == ["false_keep_old: 0.67", "false_keep_new: 0.67", "extra_runs: 0.33"]


def test_replay_refuses_when_a_confirmation_run_is_missing() -> None:
    with pytest.raises(NoiseError, match="confirmation run 2"):
        replay_night([1.0, 1.0 + SIGMA, 1.0 - SIGMA], [[1.0 - 2 * SIGMA]])
