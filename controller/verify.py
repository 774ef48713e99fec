"""Verify: the morning's error bars. Re-run a tag's baseline and its final best k times each, with
fresh seeds the controller chooses, through the same runner a night uses, and report the
improvement as mean +/- spread over n runs (`make verify TAG=<tag> [RUNS=k]`).

Why fresh runs: the best's own scores are the minimum of noisy draws (it was kept because it
landed low), so they are biased optimistic; k new runs of each commit, interleaved (baseline,
best, baseline, ...) so that a drift in machine load hits both alike and sharing seeds (run i of
both commits gets the same seed), give an unbiased difference. Each run is recorded as a replay
(runs/<tag>/replays/<n>-<sha>-verify<i>-<stamp>/replay.json), so later nights pool it into the
tag's noise; runs/<tag>/verify.json holds the summary that progress.png draws.

Numbers (grep-able, `name: mean ± se`): baseline_bpb and best_bpb are a commit's mean over its
ok runs ± the standard error of that mean (std/sqrt(n); with one run, the tag's pooled noise
sigma); improvement_bpb is mean(baseline) - mean(best) (positive = the best is better, as in
controller.noise.error_bars) ± the standard error of that difference: Welch over the runs (or
the tag's pooled noise when a side has one run), plus, in quadrature, the paired eval-sampling
SE from the runs' per-row losses (identical eval rows) when every scored run has them. The
verdict reads the 95% t interval: better beyond noise, within noise, worse beyond noise. Runs
that crash are counted and left out of the means. docs/noise.md says how to read them.

The loop calls verify_night(settings, runner, ...) at the night's end when
settings.verify_runs > 0."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from controller.ledger import Ledger, LedgerError, LedgerRow, RunLocation, list_tags
from controller.noise import (
    NoiseError,
    NoiseEstimate,
    Replicates,
    paired_eval_se,
    pooled_noise,
    summarize,
    t_quantile,
)
from controller.records import ReplayRecord, RunRecord, utcnow
from controller.replay import (
    REPLAY_JSON,
    ReplayError,
    Runner,
    prepare_rerun,
    run_recorded,
)
from controller.safefiles import UnsafeFileError, atomic_write_model, read_regular
from controller.settings import Settings
from evaluator.hostile import clean_line
from evaluator.profiles import get_profile
from evaluator.rowloss import ROWLOSS_FILE, RowLossError, profile_rows, read_rowloss

VERIFY_JSON = "verify.json"
DEFAULT_RUNS = 3
MAX_RUNS = 20
LEVEL = 0.95
Role = Literal["baseline", "best"]
Method = Literal["welch", "pooled", "deterministic", "unmeasured"]

V_BETTER = "better beyond noise"
V_WORSE = "worse beyond noise"
V_WITHIN = "within noise"
V_EQUAL = "equal"
V_UNMEASURED = "spread not measured: verify with RUNS=2 or more"
V_NO_BEST = "no keep beyond the baseline"
V_NO_SCORE = "a side has no scored run"


class VerifyError(RuntimeError):
    """Verify cannot run as asked; one line saying why and what to do."""


class VerifyRun(BaseModel):
    """One run of verify (its replay.json lies in runs/<tag>/replays/<replay_dir>/)."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    n: int  # the experiment it re-runs
    commit: str  # full sha
    seed: int
    status: str  # the sandbox's: ok | crash | timeout | rejected
    reason: str | None = None
    val_bpb: float | None = None
    replay_dir: str


class VerifyNumbers(BaseModel):
    """The pooled numbers of verify: each side's mean +/- standard error, and the improvement
    mean(baseline) - mean(best) (positive = the best is better) +/- its standard error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline: Replicates | None  # the ok runs summarized; None when none scored
    best: Replicates | None
    baseline_se: float | None  # SE of the mean: std/sqrt(n), or the tag's pooled sigma/sqrt(n) for n=1
    best_se: float | None
    improvement: float | None
    se: float | None  # sqrt(se_train^2 + se_eval^2)
    se_train: float | None  # run-to-run part (Welch, or the tag's pooled noise, 0 when deterministic)
    se_eval: float | None  # paired eval-sampling part from the per-row losses (None: not all runs have them)
    df: int | None  # of the t interval; None: normal (or exact)
    ci_low: float | None  # LEVEL confidence interval of improvement
    ci_high: float | None
    method: Method
    verdict: str


class VerifyRecord(BaseModel):
    """runs/<tag>/verify.json: the latest verify of the tag, for progress.png and a person."""

    model_config = ConfigDict(extra="forbid")

    tag: str
    runs_each: int  # runs asked for each commit
    seeds: list[int]  # the fresh seeds, run i of each commit uses seeds[i]
    baseline_n: int
    baseline_commit: str
    best_n: int | None  # None: no keep beyond the baseline (only the baseline was re-run)
    best_commit: str | None
    best_description: str | None = None
    runs: list[VerifyRun]
    numbers: VerifyNumbers
    stopped: bool = False  # the runs were cut short (a night's Ctrl-C)
    started: dt.datetime
    finished: dt.datetime

    def failed(self, role: Role) -> int:
        return sum(1 for r in self.runs if r.role == role and r.status != "ok")

    def done(self, role: Role) -> int:
        return sum(1 for r in self.runs if r.role == role)


@dataclass(frozen=True)
class VerifyResult:
    record: VerifyRecord
    path: Path  # verify.json

    @property
    def ok(self) -> bool:
        """Something to report: the baseline scored, and so did the best when there is one."""
        n = self.record.numbers
        return n.baseline is not None and (self.record.best_commit is None or n.best is not None)


# -- the arithmetic --------------------------------------------------------------------------


def _side_se(summary: Replicates | None, noise: NoiseEstimate | None) -> float | None:
    if summary is None:
        return None
    if noise is not None and noise.exact:
        return 0.0
    if summary.se is not None:
        return summary.se
    if noise is not None and noise.sigma is not None:
        return noise.sigma / math.sqrt(summary.n)
    return None


def pool_runs(
    baseline: Sequence[float],
    best: Sequence[float],
    noise: NoiseEstimate | None = None,
    se_eval: float | None = None,
    level: float = LEVEL,
) -> VerifyNumbers:
    """Pool verify's runs. Run-to-run SE of the improvement: Welch when both sides have 2+ runs,
    else the tag's pooled noise (sigma sqrt(1/n_a + 1/n_b), its df), 0 on a deterministic
    profile. The paired eval-sampling SE (per-row losses, identical rows) adds in quadrature; the
    t interval's df is Welch-Satterthwaite with that term taken as known. `best` empty: only the
    baseline was re-run."""
    a = summarize(baseline) if baseline else None
    b = summarize(best) if best else None
    a_se, b_se = _side_se(a, noise), _side_se(b, noise)

    def numbers(verdict: str, **kw: object) -> VerifyNumbers:
        fields: dict = {
            "improvement": None,
            "se": None,
            "se_train": None,
            "se_eval": None,
            "df": None,
            "ci_low": None,
            "ci_high": None,
            "method": "unmeasured",
        }
        fields.update(kw)
        return VerifyNumbers(baseline=a, best=b, baseline_se=a_se, best_se=b_se, verdict=verdict, **fields)

    if a is None or b is None:
        return numbers(V_NO_BEST if not best and a is not None else V_NO_SCORE)
    improvement = a.mean - b.mean
    df_train: int | None = None
    method: Method
    if noise is not None and noise.exact:
        se_train, method = 0.0, "deterministic"
    elif a.std is not None and b.std is not None:
        va, vb = a.std**2 / a.n, b.std**2 / b.n
        se_train, method = math.sqrt(va + vb), "welch"
        if va + vb > 0:
            df_train = max(1, int((va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))))
    elif noise is not None and noise.sigma is not None and noise.df > 0:
        se_train, df_train, method = noise.sigma * math.sqrt(1.0 / a.n + 1.0 / b.n), noise.df, "pooled"
    else:
        return numbers(V_UNMEASURED, improvement=improvement, se_eval=se_eval)
    vt, ve = se_train**2, (se_eval or 0.0) ** 2
    se = math.sqrt(vt + ve)
    df = max(1, int((vt + ve) ** 2 / (vt**2 / df_train))) if df_train is not None and vt > 0 else None
    half = t_quantile(0.5 + level / 2.0, df) * se if se > 0 else 0.0
    low, high = improvement - half, improvement + half
    if se == 0:
        verdict = V_BETTER if improvement > 0 else V_WORSE if improvement < 0 else V_EQUAL
    else:
        verdict = V_BETTER if low > 0 else V_WORSE if high < 0 else V_WITHIN
    return numbers(
        verdict,
        improvement=improvement,
        se=se,
        se_train=se_train,
        se_eval=se_eval,
        df=df,
        ci_low=low,
        ci_high=high,
        method=method,
    )


def paired_rows_se(profile: str, baseline_dirs: list[Path], best_dirs: list[Path]) -> float | None:
    """The paired eval-sampling SE of the improvement from the per-row losses of every scored run
    of both sides; None when a side has none or any run lacks a readable rowloss.bin (hostile
    input: read under caps, a bad file only drops the term)."""
    if not baseline_dirs or not best_dirs:
        return None
    rows = profile_rows(get_profile(profile))
    try:
        base = [read_rowloss(d / ROWLOSS_FILE, rows) for d in baseline_dirs]
        best = [read_rowloss(d / ROWLOSS_FILE, rows) for d in best_dirs]
        return paired_eval_se(best, base).se
    except (RowLossError, NoiseError, OSError):
        return None


# -- the tag, its baseline and its best ------------------------------------------------------


def check_runs(runs: int) -> None:
    if not 1 <= runs <= MAX_RUNS:
        raise VerifyError(f"--runs {runs}: verify needs 1 to {MAX_RUNS} runs of each commit (RUNS=3 by default)")


def check_tag(settings: Settings) -> Ledger:
    """The tag's ledger, or a one-line error naming the tags there are."""
    ledger = Ledger(settings.tag_dir)
    if not ledger.exists():
        tags = list_tags(settings.runs_dir)
        there = f"tags there: {', '.join(tags)}" if tags else "start a night with `make overnight`"
        raise VerifyError(f"no ledger for tag {settings.tag} in {settings.runs_dir}/ ({there})")
    return ledger


@contextlib.contextmanager
def verify_lock(settings: Settings) -> Iterator[Ledger]:
    """Hold the tag's lock (controller.loop.tag_lock) while verify runs: a tag whose night is still
    running is refused, and no night starts on it meanwhile."""
    from controller.loop import SetupError, tag_lock

    ledger = check_tag(settings)
    lock = tag_lock(settings.tag_dir)
    try:
        lock.__enter__()
    except SetupError as exc:
        raise VerifyError(f"tag {settings.tag} is still running ({exc}): verify it when its night has ended") from None
    try:
        yield ledger
    finally:
        lock.__exit__(None, None, None)


def _location(ledger: Ledger, row: LedgerRow) -> tuple[RunLocation, RunRecord]:
    loc = RunLocation(ledger.tag_dir.name, row.n, row, ledger.row_run_dir(row.n, row))
    try:
        record = ledger.read_record(row.n, row.commit)
    except LedgerError as exc:
        raise VerifyError(str(exc)) from None
    if record is None:
        raise VerifyError(f"experiment {row.n} ({row.commit}) of tag {loc.tag} has no run.json: it cannot be re-run")
    return loc, record


def tag_replays(tag_dir: Path) -> list[ReplayRecord]:
    """Every readable replay.json of the tag (replays and verify runs); unreadable ones are skipped."""
    found: list[ReplayRecord] = []
    for path in sorted((tag_dir / "replays").glob(f"*/{REPLAY_JSON}")):
        try:
            found.append(ReplayRecord.model_validate_json(read_regular(path, 2**20)))
        except (OSError, ValueError):
            continue
    return found


def fresh_seeds(tag_seed: int, records: list[RunRecord], replays: list[ReplayRecord], k: int) -> list[int]:
    """k seeds no run of these commits used yet: above the highest seed of their replicates and
    replays (and the night's own seed)."""
    commits = {r.commit for r in records}
    used = [
        tag_seed,
        *(rep.seed for r in records for rep in r.replicates),
        *(rep.seed for rep in replays if rep.commit in commits),
    ]
    start = max(used) + 1
    return list(range(start, start + k))


def tag_noise(ledger: Ledger, rows: list[LedgerRow], replays: list[ReplayRecord]) -> NoiseEstimate:
    """The tag's pooled run-to-run noise (every scored commit's ok runs, and replays), a fallback
    for a side with a single scored run."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        if not row.scored:
            continue
        try:
            record = ledger.read_record(row.n, row.commit)
        except LedgerError:
            continue
        if record is not None:
            for r in record.replicates:  # a run alongside another experiment counts for the commit it ran
                if r.status == "ok" and r.val_bpb is not None:
                    groups.setdefault(r.of_commit or record.commit, []).append(r.val_bpb)
    for rep in replays:
        if rep.status == "ok" and rep.replayed_val_bpb is not None:
            groups.setdefault(rep.commit, []).append(rep.replayed_val_bpb)
    return pooled_noise(groups)


# -- running ---------------------------------------------------------------------------------


def verify_tag(
    settings: Settings,
    runner: Runner,
    image_id: str | None,
    runs: int = DEFAULT_RUNS,
    say: Callable[[str], None] = lambda line: None,
    check_image: bool = True,
    stop: Callable[[], bool] = lambda: False,
) -> VerifyResult:
    """Re-run settings.tag's baseline and final best `runs` times each and write verify.json.
    The caller holds the tag's lock (verify_lock, or the night's own at its end). `image_id`: the
    current id of settings.image, checked against the records unless check_image is False."""
    check_runs(runs)
    ledger = check_tag(settings)
    try:
        rows = ledger.rows()
    except LedgerError as exc:
        raise VerifyError(str(exc)) from None
    numbered = {row.n: row for row in rows}
    if 0 not in numbered:
        raise VerifyError(f"tag {settings.tag} has no baseline in its ledger yet: run its night first")
    if not numbered[0].scored:
        raise VerifyError(
            f"the baseline of tag {settings.tag} did not score ({numbered[0].status}): "
            f"see `make logs RUN=0 TAG={settings.tag}`"
        )
    keeps = [row for row in rows if row.status == "keep"]
    best_row = keeps[-1] if keeps and keeps[-1].n != 0 else None
    sides: list[tuple[Role, RunLocation, RunRecord]] = [("baseline", *_location(ledger, numbered[0]))]
    if best_row is not None:
        sides.append(("best", *_location(ledger, best_row)))
    prepared = {}
    try:
        for role, loc, record in sides:
            prepared[role] = prepare_rerun(settings, loc, record, image_id, check_image)
    except ReplayError as exc:
        raise VerifyError(str(exc)) from None
    replays = tag_replays(ledger.tag_dir)
    seeds = fresh_seeds(sides[0][2].seed, [record for _, _, record in sides], replays, runs)

    base_rec = sides[0][2]
    if best_row is None:
        say(f"tag {settings.tag} has no keep beyond the baseline: re-running the baseline only")
    else:
        say(f"best of tag {settings.tag}: #{best_row.n} {best_row.commit} ({best_row.description})")
    times = f"{runs} time{'s' if runs != 1 else ''}" + (" each" if best_row else "")
    say(
        f"re-running baseline #0 {base_rec.commit[:7]}"
        + (f" and best #{best_row.n} {best_row.commit}" if best_row else "")
        + f" {times}, seeds {_span(seeds)}"
    )

    started = utcnow()
    done: list[VerifyRun] = []
    order = [(i, side) for i in range(runs) for side in sides]  # interleaved: load drift hits both alike
    stopped = False
    for count, (i, (role, loc, record)) in enumerate(order, 1):
        if stop():
            stopped = True
            say(f"stopped after {count - 1} of {len(order)} runs")
            break
        data_dir, source = prepared[role]
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        say(f"run {count}/{len(order)}: {role} #{loc.n} {record.commit[:7]}, seed {seeds[i]} ...")
        try:
            rep = run_recorded(
                settings,
                loc,
                record,
                runner,
                image_id,
                data_dir,
                source,
                seed=seeds[i],
                name=f"{loc.n:04d}-{record.commit[:7]}-verify{i}-{stamp}",
                run_id=f"{loc.tag}-verify-{loc.n:04d}-{stamp}",
                labels={"overnight.verify": str(i)},
            )
        except ReplayError as exc:
            raise VerifyError(f"{exc} ({count - 1} of {len(order)} runs finished and are recorded)") from None
        value = rep.replayed_val_bpb if rep.status == "ok" else None
        done.append(
            VerifyRun(
                role=role,
                n=loc.n,
                commit=record.commit,
                seed=seeds[i],
                status=rep.status,
                reason=clean_line(rep.reason, 300) if rep.reason else None,
                val_bpb=value,
                replay_dir=rep.run_dir.name,
            )
        )
        say(
            f"run {count}/{len(order)}: {role} "
            + (f"val_bpb {value:.6f}" if value is not None else f"{rep.status}: {clean_line(rep.reason or '-', 200)}")
        )

    base_vals = [r.val_bpb for r in done if r.role == "baseline" and r.val_bpb is not None]
    best_vals = [r.val_bpb for r in done if r.role == "best" and r.val_bpb is not None]
    replays_dir = ledger.tag_dir / "replays"
    se_eval = paired_rows_se(
        base_rec.profile,
        [replays_dir / r.replay_dir for r in done if r.role == "baseline" and r.val_bpb is not None],
        [replays_dir / r.replay_dir for r in done if r.role == "best" and r.val_bpb is not None],
    )
    numbers = pool_runs(base_vals, best_vals, _noise_for(base_rec.profile, ledger, rows, base_vals, best_vals), se_eval)
    if best_row is not None and numbers.verdict == V_NO_BEST:
        numbers = numbers.model_copy(update={"verdict": V_NO_SCORE})
    verified = VerifyRecord(
        tag=settings.tag,
        runs_each=runs,
        seeds=seeds,
        baseline_n=0,
        baseline_commit=base_rec.commit,
        best_n=best_row.n if best_row else None,
        best_commit=sides[1][2].commit if best_row else None,
        best_description=best_row.description if best_row else None,
        runs=done,
        numbers=numbers,
        stopped=stopped,
        started=started,
        finished=utcnow(),
    )
    path = ledger.tag_dir / VERIFY_JSON
    atomic_write_model(path, verified)
    return VerifyResult(record=verified, path=path)


def _noise_for(
    profile: str, ledger: Ledger, rows: list[LedgerRow], base: list[float], best: list[float]
) -> NoiseEstimate | None:
    """None on a deterministic profile's counterpart: the exact estimate; the tag's pooled noise
    when a side has a single scored run (the fallback for its spread); else None (Welch alone)."""
    if get_profile(profile).max_steps is not None:
        return NoiseEstimate.for_deterministic_profile()
    if len(base) >= 2 and len(best) >= 2:
        return None
    pooled = tag_noise(ledger, rows, tag_replays(ledger.tag_dir))
    return pooled if pooled.sigma is not None and not pooled.exact else None


def verify_night(
    settings: Settings,
    runner: Runner,
    image_id: str | None = None,
    say: Callable[[str], None] = lambda line: None,
    stop: Callable[[], bool] = lambda: False,
) -> VerifyResult | None:
    """The end-of-night hook: when settings.verify_runs > 0, verify the tag with the night's own
    runner and say the report's lines (None when verify_runs is 0 or verify could not run). The
    caller, the loop, already holds the tag's lock. image_id None skips the image check (the
    night's runner just ran with its image). Never raises VerifyError: a verify that cannot run is
    said, and the night still ends normally."""
    if settings.verify_runs <= 0:
        return None
    try:
        result = verify_tag(
            settings, runner, image_id, settings.verify_runs, say=say, check_image=image_id is not None, stop=stop
        )
    except VerifyError as exc:
        say(f"verify skipped: {exc}")
        return None
    for line in describe(result):
        say(line)
    return result


# -- what a person reads ---------------------------------------------------------------------


def _span(seeds: list[int]) -> str:
    return f"{seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])


def _num(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "na"
    return f"{x:+.6f}" if signed else f"{x:.6f}"


def _decimals(se: float | None) -> int:
    """Two significant digits of se, at least 4 decimals and at most 8 (the human line)."""
    if se is None or se <= 0 or not math.isfinite(se):
        return 4
    return max(4, min(8, 1 - math.floor(math.log10(se))))


def describe(result: VerifyResult) -> list[str]:
    """The report: grep-able `name: value` lines (mean ± standard error), then the lines for a
    person. improvement_bpb is mean(baseline) - mean(best): positive = the best is better."""
    r, x = result.record, result.record.numbers
    nb, nk = (x.baseline.n if x.baseline else 0), (x.best.n if x.best else 0)
    lines = [
        f"baseline_bpb: {_num(x.baseline.mean if x.baseline else None)} ± {_num(x.baseline_se)}",
        f"best_bpb: {_num(x.best.mean if x.best else None)} ± {_num(x.best_se)}",
        f"improvement_bpb: {_num(x.improvement, signed=True)} ± {_num(x.se)}",
        f"baseline_runs: {nb}",
        f"best_runs: {nk}",
        f"verdict: {x.verdict}",
    ]
    if r.best_commit is None:
        lines.append(
            f"tag {r.tag} has no keep beyond the baseline: nothing to compare; the baseline's runs measure the noise"
        )
    elif x.improvement is not None:
        d = _decimals(x.se)
        spread = f" ± {x.se:.{d}f}" if x.se is not None else " (spread not measured)"
        ci = (
            f"; {LEVEL:.0%} CI {x.ci_low:+.{d}f} to {x.ci_high:+.{d}f}"
            if x.ci_low is not None and x.ci_high is not None and x.se
            else ""
        )
        how = {
            "welch": "Welch",
            "pooled": "one side's spread from the tag's pooled noise",
            "deterministic": "deterministic profile: no run-to-run noise",
            "unmeasured": "no spread",
        }[x.method]
        paired = f"; paired eval-row SE {x.se_eval:.{_decimals(x.se_eval)}f} included" if x.se_eval is not None else ""
        lines.append(
            f"improvement: {x.improvement:+.{d}f}{spread} bpb, best #{r.best_n} ({nk} run"
            f"{'s' if nk != 1 else ''}) vs baseline #0 ({nb} run{'s' if nb != 1 else ''}){ci}; "
            f"{how}{paired}: {x.verdict}"
        )
        lines.append("±: the standard error of a mean; improvement = baseline - best (positive = the best is better)")
    failed = r.failed("baseline") + r.failed("best")
    per = ", ".join(f"{role} {r.failed(role)} of {r.done(role)}" for role in ("baseline", "best") if r.done(role))
    lines.append(
        f"failed_runs: {failed} of {len(r.runs)}"
        + (f" ({per})" if per else "")
        + (": crashed, timed out or rejected, left out of the means; their logs are under replays/" if failed else "")
    )
    if r.stopped:
        lines.append(f"stopped early: {len(r.runs)} of {r.runs_each * (1 if r.best_commit is None else 2)} runs")
    lines.append(f"records: {result.path} and {result.path.parent / 'replays'}/*-verify*/")
    return lines


def read_verify(tag_dir: Path) -> VerifyRecord | None:
    """The tag's latest verify, or None when there is none or it cannot be read."""
    path = Path(tag_dir) / VERIFY_JSON
    try:
        return VerifyRecord.model_validate_json(read_regular(path, 2**20))
    except (FileNotFoundError, UnsafeFileError, ValidationError, OSError):
        return None
