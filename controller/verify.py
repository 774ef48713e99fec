"""Verify: the morning's error bars. Re-run a tag's baseline and its final best k times each, with
fresh seeds the controller chooses, through the same runner a night uses, and report the
improvement as mean +/- spread over n runs (`make verify TAG=<tag> [RUNS=k]`).

Why fresh runs: the best's own scores are the minimum of noisy draws (it was kept because it
landed low), so they are biased optimistic; k new runs of each commit, interleaved (baseline,
best, baseline, ...) so that a drift in machine load hits both alike and sharing seeds (run i of
both commits gets the same seed), give an unbiased difference. Each run is recorded as a replay
(runs/<tag>/replays/<n>-<sha>-verify<i>-<stamp>/replay.json), so later nights pool it into the
tag's noise; runs/<tag>/verify.json holds the summary that progress.png draws.

Numbers: baseline_bpb and best_bpb are the mean +/- the sample standard deviation of a commit's
runs (the spread of one run); improvement_bpb is mean(best) - mean(baseline) (negative = the best
is better, as the ledger's delta) +/- the standard error of that difference (Welch), from
controller.noise.error_bars. Runs that crash are counted and left out of the means."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from controller.ledger import Ledger, LedgerError, LedgerRow, RunLocation, list_tags
from controller.noise import NoiseEstimate, Replicates, error_bars, pooled_noise, summarize
from controller.records import ReplayRecord, RunRecord, utcnow
from controller.replay import REPLAY_JSON, ReplayError, Runner, prepare_rerun, run_recorded
from controller.safefiles import UnsafeFileError, atomic_write_model, read_regular
from controller.settings import Settings
from evaluator.hostile import clean_line

VERIFY_JSON = "verify.json"
DEFAULT_RUNS = 3
MAX_RUNS = 20
LEVEL = 0.95
Role = Literal["baseline", "best"]


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
    baseline: Replicates | None  # its ok runs summarized; None when none scored
    best: Replicates | None
    improvement_bpb: float | None  # mean(best) - mean(baseline); negative = the best is better
    improvement_se: float | None  # standard error of that difference
    ci_low: float | None  # LEVEL confidence interval of improvement_bpb
    ci_high: float | None
    method: str | None  # controller.noise.ErrorBars.method: welch | pooled | deterministic | unmeasured
    stopped: bool = False  # the runs were cut short (a night's Ctrl-C)
    started: dt.datetime
    finished: dt.datetime

    def failed(self, role: Role) -> int:
        return sum(1 for r in self.runs if r.role == role and r.status != "ok")

    def done(self, role: Role) -> int:
        return sum(1 for r in self.runs if r.role == role)


@dataclass(frozen=True)
class VerifyOutcome:
    record: VerifyRecord
    path: Path  # verify.json

    @property
    def ok(self) -> bool:
        """Something to report: the baseline scored, and so did the best when there is one."""
        r = self.record
        return r.baseline is not None and (r.best_commit is None or r.best is not None)


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


def _replays(tag_dir: Path) -> list[ReplayRecord]:
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
    used = [tag_seed, *(rep.seed for r in records for rep in r.replicates),
            *(rep.seed for rep in replays if rep.commit in commits)]
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
            groups.setdefault(record.commit, []).extend(
                r.val_bpb for r in record.replicates if r.status == "ok" and r.val_bpb is not None)
    for rep in replays:
        if rep.status == "ok" and rep.replayed_val_bpb is not None:
            groups.setdefault(rep.commit, []).append(rep.replayed_val_bpb)
    return pooled_noise(groups)


# -- running ---------------------------------------------------------------------------------


def verify_tag(settings: Settings, runner: Runner, image_id: str | None, runs: int = DEFAULT_RUNS,
               say: Callable[[str], None] = lambda line: None, check_image: bool = True,
               stop: Callable[[], bool] = lambda: False) -> VerifyOutcome:
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
        raise VerifyError(f"the baseline of tag {settings.tag} did not score ({numbered[0].status}): "
                          f"see `make logs RUN=0 TAG={settings.tag}`")
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
    replays = _replays(ledger.tag_dir)
    seeds = fresh_seeds(sides[0][2].seed, [record for _, _, record in sides], replays, runs)

    base_rec = sides[0][2]
    if best_row is None:
        say(f"tag {settings.tag} has no keep beyond the baseline: re-running the baseline only")
    else:
        say(f"best of tag {settings.tag}: #{best_row.n} {best_row.commit} ({best_row.description})")
    say(f"re-running baseline #0 {base_rec.commit[:7]}" + (f" and best #{best_row.n} {best_row.commit}"
        if best_row else "") + f" {runs} time{'s' if runs != 1 else ''} each, seeds {_span(seeds)}")

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
            rep = run_recorded(settings, loc, record, runner, image_id, data_dir, source, seed=seeds[i],
                               name=f"{loc.n:04d}-{record.commit[:7]}-verify{i}-{stamp}",
                               run_id=f"{loc.tag}-verify-{loc.n:04d}-{stamp}",
                               labels={"overnight.verify": str(i)})
        except ReplayError as exc:
            raise VerifyError(f"{exc} ({count - 1} of {len(order)} runs finished and are recorded)") from None
        value = rep.replayed_val_bpb if rep.status == "ok" else None
        done.append(VerifyRun(role=role, n=loc.n, commit=record.commit, seed=seeds[i], status=rep.status,
                              reason=clean_line(rep.reason, 300) if rep.reason else None, val_bpb=value,
                              replay_dir=rep.run_dir.name))
        say(f"run {count}/{len(order)}: {role} " + (f"val_bpb {value:.6f}" if value is not None else
                                                   f"{rep.status}: {clean_line(rep.reason or '-', 200)}"))

    base_vals = [r.val_bpb for r in done if r.role == "baseline" and r.val_bpb is not None]
    best_vals = [r.val_bpb for r in done if r.role == "best" and r.val_bpb is not None]
    record = VerifyRecord(
        tag=settings.tag, runs_each=runs, seeds=seeds, baseline_n=0, baseline_commit=base_rec.commit,
        best_n=best_row.n if best_row else None, best_commit=sides[1][2].commit if best_row else None,
        best_description=best_row.description if best_row else None, runs=done,
        baseline=summarize(base_vals) if base_vals else None, best=summarize(best_vals) if best_vals else None,
        improvement_bpb=None, improvement_se=None, ci_low=None, ci_high=None, method=None, stopped=stopped,
        started=started, finished=utcnow(),
    )
    if base_vals and best_vals:
        record = record.model_copy(update=_improvement(base_vals, best_vals, ledger, rows))
    path = ledger.tag_dir / VERIFY_JSON
    atomic_write_model(path, record)
    return VerifyOutcome(record=record, path=path)


def _improvement(base: list[float], best: list[float], ledger: Ledger, rows: list[LedgerRow]) -> dict:
    """improvement_bpb (best - baseline) with its SE and CI. With a single run on a side the
    tag's pooled noise stands in for that side's spread (when it was measured and is not zero)."""
    noise = None
    if len(base) < 2 or len(best) < 2:
        pooled = tag_noise(ledger, rows, _replays(ledger.tag_dir))
        noise = pooled if pooled.sigma is not None and not pooled.exact else None
    bars = error_bars(base, best, noise, LEVEL)  # its improvement is baseline - best: flip the sign
    return {"improvement_bpb": -bars.improvement, "improvement_se": bars.se,
            "ci_low": -bars.ci_high if bars.ci_high is not None else None,
            "ci_high": -bars.ci_low if bars.ci_low is not None else None,
            "method": bars.method if bars.se is not None else None}


def verify_after_night(settings: Settings, runner: Runner, image_id: str | None = None,
                       say: Callable[[str], None] = lambda line: None,
                       stop: Callable[[], bool] = lambda: False) -> VerifyOutcome | None:
    """The end-of-night hook: when settings.verify_runs > 0, verify the tag with the night's own
    runner (the caller, the loop, holds the tag's lock) and say the report's lines. image_id None
    skips the image check (the night's runner just ran with its image). Never raises VerifyError:
    a verify that cannot run is said, and the night still ends normally."""
    if settings.verify_runs <= 0:
        return None
    try:
        outcome = verify_tag(settings, runner, image_id, settings.verify_runs, say=say,
                             check_image=image_id is not None, stop=stop)
    except VerifyError as exc:
        say(f"verify skipped: {exc}")
        return None
    for line in describe(outcome):
        say(line)
    return outcome


# -- what a person reads ---------------------------------------------------------------------


def _span(seeds: list[int]) -> str:
    return f"{seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])


def _value(x: float | None) -> str:
    return "na" if x is None else f"{x:.6f}"


def _decimals(se: float | None) -> int:
    """Two significant digits of se, at least 4 decimals and at most 8 (the human line)."""
    if se is None or se <= 0 or not math.isfinite(se):
        return 4
    return max(4, min(8, 1 - math.floor(math.log10(se))))


def _side_line(name: str, summary: Replicates | None, asked: int) -> str:
    if summary is None:
        return f"{name}: na (n=0: none of its {asked} runs scored)"
    return f"{name}: {summary.mean:.6f} +/- {_value(summary.std)} (n={summary.n})"


def describe(outcome: VerifyOutcome) -> list[str]:
    """The report: grep-able `name: value` lines, then the line for a person."""
    r = outcome.record
    lines = [_side_line("baseline_bpb", r.baseline, r.done("baseline"))]
    if r.best_commit is None:
        lines += ["best_bpb: na (no keep beyond the baseline)", "improvement_bpb: na (no keep beyond the baseline)",
                  f"no keep beyond the baseline in tag {r.tag}: nothing to compare; the baseline's runs measure "
                  "the noise"]
    else:
        lines.append(_side_line("best_bpb", r.best, r.done("best")))
        nb, nk = (r.baseline.n if r.baseline else 0), (r.best.n if r.best else 0)
        if r.improvement_bpb is None:
            lines.append(f"improvement_bpb: na (n={nk} vs {nb}: a side has no scored run)")
        else:
            lines.append(f"improvement_bpb: {r.improvement_bpb:+.6f} +/- {_value(r.improvement_se)} (n={nk} vs {nb})")
            d = _decimals(r.improvement_se)
            spread = f" +/- {r.improvement_se:.{d}f}" if r.improvement_se is not None else " (spread not measured)"
            ci = (f"; {LEVEL:.0%} CI {r.ci_low:+.{d}f} to {r.ci_high:+.{d}f}"
                  if r.ci_low is not None and r.ci_high is not None and r.method != "deterministic" else "")
            pooled = "; one side's spread from the tag's pooled noise" if r.method == "pooled" else ""
            lines.append(f"improvement: {r.improvement_bpb:+.{d}f}{spread} (best #{r.best_n} {nk} run"
                         f"{'s' if nk != 1 else ''} vs baseline {nb} run{'s' if nb != 1 else ''}{ci}{pooled})")
        lines.append("+/-: the standard deviation of a commit's runs; for the improvement (best - baseline, "
                     "negative = better), the standard error of the difference of the means")
    failed = r.failed("baseline") + r.failed("best")
    per = ", ".join(f"{role} {r.failed(role)} of {r.done(role)}" for role in ("baseline", "best") if r.done(role))
    lines.append(f"failed_runs: {failed} of {len(r.runs)} ({per})" +
                 (": crashed, timed out or rejected, left out of the means; their logs are under replays/"
                  if failed else ""))
    if r.stopped:
        lines.append(f"stopped early: {len(r.runs)} of {r.runs_each * (1 if r.best_commit is None else 2)} runs")
    lines.append(f"records: {outcome.path} and {outcome.path.parent / 'replays'}/*-verify*/")
    return lines


def read_verify(tag_dir: Path) -> VerifyRecord | None:
    """The tag's latest verify, or None when there is none or it cannot be read."""
    path = Path(tag_dir) / VERIFY_JSON
    try:
        return VerifyRecord.model_validate_json(read_regular(path, 2**20))
    except (FileNotFoundError, UnsafeFileError, ValidationError, OSError):
        return None
