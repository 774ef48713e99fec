"""Keeps you can trust: run-to-run noise, paired eval noise, the keep rule with a margin, and the
morning's error bars. Pure functions on numbers; the loop, the ledger and the report call them.

Two sources of noise separate a candidate's val_bpb from the incumbent's:

- training noise (seed, data order, how many steps fit the wall-clock budget): the spread of the
  same commit run several times. `pooled_noise` pools it over every replicated commit of a tag
  (baseline calibration, confirmation runs, replays, baseline re-runs), with its degrees of freedom.
- eval-sampling noise: the eval rows are a sample of the validation text. `paired_eval_se` gives
  the standard error of the difference over rows, paired on identical tokens (evaluator.rowloss).

`decide` compares a candidate with the incumbent best in two steps:

    first look:  delta = its first run - mean(the best's latest runs)
                 keep at once  delta < -t(keep_at_once_z) se      (far beyond noise)
                 confirm       delta < -t(confirm_z) se           (maybe better)
                 discard       otherwise
    confirmed:   delta = mean(candidate) - mean(the best's runs made alongside the candidate's)
                 keep          delta < -max(min_delta, t(confirmed_z) se)
                 discard       otherwise (or one more step, while steps are left)
    se^2 = sigma^2 (1/n_c + 1/n_b) + se_eval^2

A first look compares runs made at different times, so a drift of the machine's speed between
them is in delta; a confirmation runs the best next to the candidate, so a drift both saw
cancels. t(z) is the Student t quantile at the one-sided level of z (normal: 2 -> 97.7%), for the
degrees of freedom of the noise estimate, so a noise estimate from few runs widens the margin
instead of letting noise through. docs/noise.md gives the defaults, why, and the simulated and
measured rates.
Torch-free and scipy-free: the host has neither.
"""

from __future__ import annotations

import ast
import io
import math
import statistics
import tokenize
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evaluator.rowloss import RowLosses

LN2 = math.log(2)
_NORMAL = statistics.NormalDist()
_MAX_T_DF = 10_000  # above this the t distribution is the normal one to ~1e-4


class NoiseError(ValueError):
    """Numbers the rule cannot use (empty, not finite, unpaired rows); one line why."""


# ---------------------------------------------------------------------------------------------
# Student t, written out (no scipy on the host)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    if df > _MAX_T_DF:
        return _NORMAL.cdf(t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: int | None) -> float:
    """The t with P(T <= t) = p; df None (or very large) is the normal distribution."""
    if not 0.0 < p < 1.0:
        raise NoiseError(f"quantile level {p} is outside (0, 1)")
    if df is None or df > _MAX_T_DF:
        return _NORMAL.inv_cdf(p)
    if df < 1:
        raise NoiseError(f"t quantile needs at least 1 degree of freedom, got {df}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def t_multiplier(z: float, df: int | None) -> float:
    """The margin, in standard errors, with the one-sided level of z sigmas of a normal, for an
    estimate with df degrees of freedom (z itself when df is None: nothing estimated)."""
    return t_quantile(_NORMAL.cdf(z), df)


# ---------------------------------------------------------------------------------------------
# Run-to-run noise


class NoiseEstimate(BaseModel):
    """Run-to-run standard deviation of one commit's val_bpb, and where it comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sigma: float | None = Field(default=None, ge=0)  # None: not measured yet
    df: int = Field(default=0, ge=0)  # degrees of freedom: sum over groups of (runs - 1)
    runs: int = Field(default=0, ge=0)  # runs in replicated groups
    groups: int = Field(default=0, ge=0)  # commits run at least twice
    deterministic: bool = False  # the profile repeats bit for bit (a step budget): no training noise
    source: str = "not measured"

    @property
    def known(self) -> bool:
        return self.deterministic or self.sigma is not None

    @property
    def exact(self) -> bool:
        """No training noise: a deterministic profile, or replicates that all came out identical."""
        return self.deterministic or self.sigma == 0.0

    @classmethod
    def for_deterministic_profile(cls, why: str = "step budget") -> NoiseEstimate:
        return cls(sigma=0.0, deterministic=True, source=f"deterministic profile ({why})")


def _finite(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise NoiseError(f"{what} holds a value that is not a finite number")
    return out


def pooled_noise(groups: Mapping[str, Sequence[float]]) -> NoiseEstimate:
    """Pooled run-to-run noise over replicate groups (commit -> its val_bpb runs):
    sigma^2 = sum (n_g - 1) s_g^2 / sum (n_g - 1), with df = sum (n_g - 1). Groups of one run
    carry no information and are left out."""
    ss, df, runs, used = 0.0, 0, 0, 0
    for name, values in groups.items():
        vals = _finite(values, f"replicate group {name!r}")
        if len(vals) < 2:
            continue
        mean = math.fsum(vals) / len(vals)
        ss += math.fsum((v - mean) ** 2 for v in vals)
        df += len(vals) - 1
        runs += len(vals)
        used += 1
    if df == 0:
        return NoiseEstimate()
    sigma = math.sqrt(ss / df)
    return NoiseEstimate(
        sigma=sigma,
        df=df,
        runs=runs,
        groups=used,
        source=f"pooled over {used} commit{'s' if used != 1 else ''}, {runs} runs, {df} df",
    )


# ---------------------------------------------------------------------------------------------
# Paired eval-sampling noise


@dataclass(frozen=True)
class PairedEval:
    delta: float  # bpb of the candidate's rows minus the incumbent's (means over replicates)
    se: float  # standard error of delta over eval rows (delta method for a ratio of sums)
    rows: int


def paired_eval_se(candidate: Sequence[RowLosses], best: Sequence[RowLosses]) -> PairedEval:
    """Eval-sampling standard error of the bpb difference, paired over identical rows.

    Each side's per-row nats are averaged over its replicates (a_i, c_i); the bytes b_i are the same
    on every run (same tokens). delta = sum(a - c) / (ln 2 sum b), a ratio of sums, and by the
    delta method Var = n / (n - 1) * sum(e_i^2) / (sum b)^2 with e_i = (a_i - c_i) - R b_i,
    R = sum(a - c) / sum b."""
    if not candidate or not best:
        raise NoiseError("paired eval noise needs per-row losses of both the candidate and the incumbent")
    reference = candidate[0]
    for r in [*candidate, *best]:
        if r.rows != reference.rows or not np.array_equal(r.bytes, reference.bytes):
            raise NoiseError("per-row losses are not on the same eval rows (bytes differ): they cannot be paired")
    a = np.mean(np.stack([r.nats for r in candidate]), axis=0)
    c = np.mean(np.stack([r.nats for r in best]), axis=0)
    b = reference.bytes.astype(np.float64)
    n, total = len(b), float(b.sum())
    if n < 2 or total <= 0:
        raise NoiseError("paired eval noise needs at least 2 rows with scored bytes")
    d = a - c
    ratio = float(d.sum()) / total
    resid = d - ratio * b
    var = n / (n - 1) * float(np.dot(resid, resid)) / total**2
    return PairedEval(delta=ratio / LN2, se=math.sqrt(var) / LN2, rows=n)


# ---------------------------------------------------------------------------------------------
# Simpler code (autoresearch: an equal score with simpler code is a win)

_LAYOUT = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}


@dataclass(frozen=True)
class CodeSize:
    lines: int  # non-blank lines that hold code (comments and docstrings not counted)
    tokens: int  # Python tokens of that code (layout, comments and docstrings not counted)


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def code_size(source: str) -> CodeSize:
    """How much code a train.py holds. Raises NoiseError when it is not valid Python."""
    try:
        docs = _docstring_lines(ast.parse(source))
        toks = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, tokenize.TokenError, ValueError, RecursionError, MemoryError) as e:
        raise NoiseError(f"cannot measure code size: {type(e).__name__}") from None
    lines: set[int] = set()
    count = 0
    for tok in toks:
        if tok.type in _LAYOUT or tok.start[0] in docs:
            continue
        count += 1
        lines.update(range(tok.start[0], tok.end[0] + 1))
    return CodeSize(lines=len(lines), tokens=count)


def is_simpler(candidate: CodeSize, best: CodeSize) -> bool:
    """Simpler = fewer code lines AND fewer code tokens. Both, so that joining lines (same tokens)
    or dropping comments, docstrings or redundant parentheses alone is not a simplification."""
    return candidate.lines < best.lines and candidate.tokens < best.tokens


# ---------------------------------------------------------------------------------------------
# The keep rule

Verdict = Literal["keep", "discard", "confirm"]


class RuleSettings(BaseModel):
    """Thresholds of the keep rule (docs/noise.md says why these defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_z: float = Field(default=2.0, gt=0)  # keep when delta < -t(keep_z) se: one-sided 2.3% per look
    confirmed_z: float = Field(default=1.65, gt=0)  # after a first run passed t(confirm_z): keep at t(confirmed_z)
    confirm_z: float = Field(default=1.0, ge=0)  # a first run below -t(confirm_z) se gets a confirmation
    keep_at_once_z: float = Field(default=4.0, gt=0)  # a first run is kept unconfirmed only this far below
    max_confirm: int = Field(default=1, ge=0, le=10)  # confirmation steps per candidate at most
    anchor_runs: int = Field(default=3, ge=1)  # a first run is compared with the best's latest runs
    min_delta: float = Field(default=0.0, ge=0)  # absolute margin in bpb a keep must also pass
    simpler_wins_ties: bool = True  # simpler code is kept when its mean is not worse (delta <= 0)


class Decision(BaseModel):
    """The rule's verdict on one candidate and the evidence behind it (run.json; TSV via `short`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verdict: Verdict
    reason: str  # one of the fixed phrases below, shown after the numbers
    delta: float  # mean(candidate) - mean(best), bpb; negative = better
    se: float | None  # standard error of delta (training and eval noise); None: noise not measured
    keep_below: float | None  # the keep threshold: keep when delta < keep_below
    n_candidate: int
    n_best: int
    noise: NoiseEstimate
    se_eval: float | None = None  # paired eval-sampling SE, when per-row losses were given
    df: int | None = None  # degrees of freedom behind the margin; None = normal (nothing estimated)
    simpler: bool = False
    alongside: bool = False  # n_best counts runs of the best made alongside the candidate's (paired in time)

    @property
    def text(self) -> str:
        """One line for a person or an agent, e.g.
        'delta -0.0007 +/- 0.0011 (2 runs vs 2 alongside): within noise'."""
        runs = f"{self.n_candidate} run{'s' if self.n_candidate != 1 else ''} vs {self.n_best}"
        runs += " alongside" if self.alongside else ""
        if self.se is None:
            return f"delta {self.delta:+.6f} ({runs}): {self.reason}"
        d = _decimals(self.se)
        return f"delta {self.delta:+.{d}f} +/- {self.se:.{d}f} ({runs}): {self.reason}"

    @property
    def short(self) -> str:
        """A compact TSV cell: delta+/-se and runs averaged, e.g. '-0.000700+/-0.001100 2v3'
        ('2a2': against 2 runs of the best made alongside)."""
        se = f"{self.se:.6f}" if self.se is not None else "na"
        return f"{self.delta:+.6f}+/-{se} {self.n_candidate}{'a' if self.alongside else 'v'}{self.n_best}"


def _decimals(se: float) -> int:
    """Enough decimals to show two significant digits of se, at least 4 and at most 8."""
    if se <= 0 or not math.isfinite(se):
        return 6
    return max(4, min(8, 1 - math.floor(math.log10(se))))


R_BETTER = "better beyond noise"
R_BETTER_AT_ONCE = "far better beyond noise"
R_SIMPLER = "equal within noise, simpler code"
R_GREY = "maybe better: confirmation alongside the best"
R_WITHIN = "within noise"
R_NOT_BETTER = "not better"
R_UNKNOWN_CONFIRM = "noise not measured yet: confirmation run"
R_UNKNOWN = "noise not measured: calibrate the baseline first"


def decide(
    candidate: Sequence[float],
    best: Sequence[float],
    noise: NoiseEstimate,
    settings: RuleSettings | None = None,
    se_eval: float | None = None,
    simpler: bool = False,
    alongside: Sequence[float] = (),
) -> Decision:
    """keep | discard | confirm for a candidate (its val_bpb runs so far) against the incumbent
    best. `noise` should already pool every replicated commit, the candidate's own included.

    First look (`alongside` empty): `best` holds the best's latest runs (settings.anchor_runs),
    made at another time than the candidate's, so a drift of the machine's speed between them is
    part of delta. A first run is only kept at once beyond t(keep_at_once_z) se; one below
    -t(confirm_z) se gets a confirmation: a run of the best alongside it.
    Confirmed (`alongside` holds runs of the best made next to the candidate's runs, as many
    confirmation steps as it holds): delta is the candidate's mean minus theirs, so a drift both
    saw cancels; keep beyond t(confirmed_z) se, confirm again while steps are left, else discard.
    With no confirmation left at a first look (max_confirm 0, or a deterministic profile) the
    margin is t(keep_z)."""
    s = settings or RuleSettings()
    cand, inc = _finite(candidate, "candidate scores"), _finite(best, "incumbent scores")
    paired = _finite(alongside, "runs of the best alongside")
    against = paired or inc
    if not cand or not against:
        raise NoiseError("the rule needs at least one run of the candidate and one of the incumbent")
    if se_eval is not None and not (math.isfinite(se_eval) and se_eval >= 0):
        raise NoiseError("se_eval must be a finite number >= 0")
    n_c, n_b = len(cand), len(against)
    delta = math.fsum(cand) / n_c - math.fsum(against) / n_b
    can_confirm = len(paired) < s.max_confirm and not noise.exact
    simpler = simpler and s.simpler_wins_ties

    def verdict(v: Verdict, reason: str, se: float | None, keep_below: float | None, df: int | None) -> Decision:
        return Decision(
            verdict=v,
            reason=reason,
            delta=delta,
            se=se,
            keep_below=keep_below,
            n_candidate=n_c,
            n_best=n_b,
            noise=noise,
            se_eval=se_eval,
            df=df,
            simpler=simpler,
            alongside=bool(paired),
        )

    if not noise.known:
        return verdict(
            "confirm" if can_confirm else "discard", R_UNKNOWN_CONFIRM if can_confirm else R_UNKNOWN, None, None, None
        )

    train_var = 0.0 if noise.exact else (noise.sigma or 0.0) ** 2 * (1.0 / n_c + 1.0 / n_b)
    eval_var = (se_eval or 0.0) ** 2
    se = math.sqrt(train_var + eval_var)
    df: int | None = None
    if train_var > 0 and noise.df > 0:  # Welch-Satterthwaite: only the training term is estimated from few runs
        df = max(1, int((train_var + eval_var) ** 2 / (train_var**2 / noise.df)))
    keep_below = -max(s.min_delta, t_multiplier(s.confirmed_z if paired else s.keep_z, df) * se)
    grey_below = -t_multiplier(s.confirm_z, df) * se
    at_once_below = -max(s.min_delta, t_multiplier(s.keep_at_once_z, df) * se)

    if not paired and can_confirm:  # a first look: only a far better run skips its confirmation
        if delta < at_once_below:
            return verdict("keep", R_BETTER_AT_ONCE, se, at_once_below, df)
        if delta < grey_below or (simpler and delta <= -grey_below):
            return verdict("confirm", R_GREY, se, at_once_below, df)
        return verdict("discard", R_WITHIN if delta < 0 else R_NOT_BETTER, se, at_once_below, df)
    if delta < keep_below:
        return verdict("keep", R_BETTER, se, keep_below, df)
    if simpler:
        if can_confirm and delta <= -grey_below:
            return verdict("confirm", R_GREY, se, keep_below, df)
        if delta <= 0:
            return verdict("keep", R_SIMPLER, se, keep_below, df)
        return verdict("discard", R_NOT_BETTER, se, keep_below, df)
    if can_confirm and delta < grey_below:
        return verdict("confirm", R_GREY, se, keep_below, df)
    return verdict("discard", R_WITHIN if delta < 0 else R_NOT_BETTER, se, keep_below, df)


# ---------------------------------------------------------------------------------------------
# Error bars for the morning


class Replicates(BaseModel):
    """One commit's runs summarized: for a point drawn with its spread."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for one run
    se: float | None  # std / sqrt(n)


def summarize(values: Sequence[float]) -> Replicates:
    vals = _finite(values, "scores")
    if not vals:
        raise NoiseError("no scores to summarize")
    n, mean = len(vals), math.fsum(vals) / len(vals)
    std = statistics.stdev(vals) if n >= 2 else None
    return Replicates(n=n, mean=mean, std=std, se=(std / math.sqrt(n)) if std is not None else None)


class ErrorBars(BaseModel):
    """The improvement of the best over the baseline with its uncertainty."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    improvement: float  # mean(baseline) - mean(best) in bpb; positive = the best is better
    se: float | None  # standard error of the improvement; None when no spread was measured
    ci_low: float | None
    ci_high: float | None
    level: float  # confidence level of [ci_low, ci_high]
    df: int | None  # degrees of freedom of the t interval; None = exact (deterministic) or unknown
    method: Literal["welch", "pooled", "deterministic", "unmeasured"]
    baseline: Replicates
    best: Replicates

    @property
    def text(self) -> str:
        runs = f"{self.baseline.n} run{'s' if self.baseline.n != 1 else ''} of the baseline, {self.best.n} of the best"
        if self.se is None or self.ci_low is None or self.ci_high is None:
            return f"improvement {self.improvement:+.6f} bpb ({runs}; spread not measured: re-run both)"
        d = _decimals(self.se)
        if self.method == "deterministic":
            return f"improvement {self.improvement:+.{d}f} bpb ({runs}; deterministic profile, no run-to-run noise)"
        return (
            f"improvement {self.improvement:+.{d}f} +/- {self.se:.{d}f} bpb (mean +/- SE, {runs}; "
            f"{self.level:.0%} CI {self.ci_low:+.{d}f} to {self.ci_high:+.{d}f})"
        )


def error_bars(
    baseline: Sequence[float], best: Sequence[float], noise: NoiseEstimate | None = None, level: float = 0.95
) -> ErrorBars:
    """Improvement = mean(baseline) - mean(best), with its standard error and a t confidence
    interval. Welch's unequal-variance interval when both sides have >= 2 runs; else the pooled
    noise of the tag when given; a deterministic noise estimate gives SE 0."""
    if not 0.0 < level < 1.0:
        raise NoiseError(f"confidence level {level} is outside (0, 1)")
    a, b = summarize(baseline), summarize(best)
    improvement = a.mean - b.mean
    se: float | None = None
    df: int | None = None
    method: Literal["welch", "pooled", "deterministic", "unmeasured"] = "unmeasured"
    if noise is not None and noise.exact:
        se, method = 0.0, "deterministic"
    elif a.std is not None and b.std is not None:
        va, vb = a.std**2 / a.n, b.std**2 / b.n
        se, method = math.sqrt(va + vb), "welch"
        if va + vb > 0:
            df = max(1, int((va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))))
    elif noise is not None and noise.sigma is not None and noise.df > 0:
        se, df, method = noise.sigma * math.sqrt(1.0 / a.n + 1.0 / b.n), noise.df, "pooled"
    if se is None:
        return ErrorBars(
            improvement=improvement,
            se=None,
            ci_low=None,
            ci_high=None,
            level=level,
            df=None,
            method=method,
            baseline=a,
            best=b,
        )
    half = t_quantile(0.5 + level / 2.0, df) * se if se > 0 else 0.0
    return ErrorBars(
        improvement=improvement,
        se=se,
        ci_low=improvement - half,
        ci_high=improvement + half,
        level=level,
        df=df,
        method=method,
        baseline=a,
        best=b,
    )


# ---------------------------------------------------------------------------------------------
# A night of the old rule and the new one, on the same runs


@dataclass
class NightReplay:
    proposals: int
    kept_old: list[bool]
    kept_new: list[bool]
    runs_old: int  # one baseline run + one run per proposal
    runs_new: int  # calibration runs + every run the new rule asked for (runs of the best alongside too)
    decisions: list[Decision] = field(default_factory=list)  # the new rule's final decision per proposal

    @property
    def false_keep_old(self) -> float:
        """Share of proposals kept by the old rule; a false-keep rate when all proposals are no-ops."""
        return sum(self.kept_old) / self.proposals if self.proposals else 0.0

    @property
    def false_keep_new(self) -> float:
        return sum(self.kept_new) / self.proposals if self.proposals else 0.0

    @property
    def extra_runs(self) -> float:
        """Runs the new rule spent beyond the old rule's, as a share of all its runs (extra
        calibration runs of the baseline included)."""
        return (self.runs_new - self.runs_old) / self.runs_new if self.runs_new else 0.0

    def add(self, other: NightReplay) -> None:
        """Pool another night into this one (rates over every proposal)."""
        self.proposals += other.proposals
        self.kept_old += other.kept_old
        self.kept_new += other.kept_new
        self.runs_old += other.runs_old
        self.runs_new += other.runs_new
        self.decisions += other.decisions

    def summary_lines(self) -> list[str]:
        return [
            f"false_keep_old: {self.false_keep_old:.2f}",
            f"false_keep_new: {self.false_keep_new:.2f}",
            f"extra_runs: {self.extra_runs:.2f}",
        ]


BASELINE = -1  # the commit number of the baseline in simulate_night


def simulate_night(
    calibration: int,
    proposals: int,
    run: Callable[[int], float],
    settings: RuleSettings | None = None,
    deterministic: bool = False,
    se_eval: float | None = None,
) -> NightReplay:
    """One night, one run at a time, decided by both rules. `run(i)` is the val_bpb of a fresh run
    of proposal i (BASELINE: the baseline), called in the order the runs happen, so a simulated
    machine can drift in time. The new rule runs as the loop does: `calibration` baseline runs,
    then per proposal its first run against the best's latest runs, and for a confirmation one run
    of the best alongside (and, from the second step on, one more of the candidate). The first look
    pools the noise over every commit's runs, whenever they ran (a drift of the machine is in
    it, as it is in that delta); a confirmed decision pools it over runs made together (the
    calibration, one candidate's runs, the best's runs alongside one candidate), as the loop's
    `noise_together` does. The old rule keeps a first run strictly below
    the best's first run."""
    s = settings or RuleSettings()
    if calibration < 1:
        raise NoiseError("the night needs at least one baseline run")
    runs: dict[int, list[float]] = {BASELINE: _finite([run(BASELINE) for _ in range(calibration)], "baseline")}
    together: dict[str, list[float]] = {"calibration": list(runs[BASELINE])}  # runs made at one time
    best, best_old = BASELINE, runs[BASELINE][0]
    night = NightReplay(proposals=proposals, kept_old=[], kept_new=[], runs_old=1 + proposals, runs_new=calibration)
    for i in range(proposals):
        runs[i] = _finite([run(i)], f"proposal {i}")
        together[f"{i}"] = runs[i]
        night.kept_old.append(runs[i][0] < best_old)
        if night.kept_old[-1]:
            best_old = runs[i][0]
        alongside: list[float] = []
        together[f"{i}-best"] = alongside
        while True:
            if deterministic:
                noise = NoiseEstimate.for_deterministic_profile()
            else:
                noise = pooled_noise({str(k): v for k, v in runs.items()})
            d = decide(runs[i], runs[best][-s.anchor_runs :], noise, s, se_eval=se_eval, alongside=alongside)
            if d.verdict != "confirm":
                break
            if alongside:
                runs[i].append(float(run(i)))
            alongside.append(float(run(best)))
            runs[best].append(alongside[-1])
        night.runs_new += len(runs[i]) + len(alongside)
        night.kept_new.append(d.verdict == "keep")
        night.decisions.append(d)
        if d.verdict == "keep":
            best = i
    return night
