"""`make verify TAG=<tag> [RUNS=k]` / `controller verify`: the night's baseline and best re-run k
times each with fresh seeds through the runner, pooled into `name: mean ± se` lines and a verdict;
verify_night is the loop's end-of-night hook. The runner is the fake one (the seam where the
containers would be); the real containers run in test_controller_e2e.py."""

from __future__ import annotations

import math
import os
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from controller_fakes import FakeRunner, build_loop, make_repo

from controller import cli
from controller import git as g
from controller.ledger import Ledger
from controller.noise import NoiseEstimate, paired_eval_se, t_quantile
from controller.settings import load_settings
from controller.verify import (
    V_BETTER,
    V_EQUAL,
    V_NO_BEST,
    V_UNMEASURED,
    V_WITHIN,
    VerifyError,
    describe,
    paired_rows_se,
    pool_runs,
    read_verify,
    verify_lock,
    verify_night,
    verify_tag,
)
from evaluator.profiles import get_profile
from evaluator.rowloss import ROWLOSS_FILE, RowLosses, profile_rows, write_rowloss
from sandbox.errors import SandboxError

SCRIPT = {
    1: {"set": {"LR": 0.01}, "desc": "LR up"},
    2: {"set": {"LR": 1.0}, "desc": "LR way up"},
    3: {"append": "CRASH = 1", "desc": "crashes"},
}
LINE = re.compile(r"^(baseline|best|improvement)_bpb: (\S+) ± (\S+)$", re.MULTILINE)


# -- the arithmetic on known inputs ------------------------------------------------------------


def test_pooled_means_and_welch_se_of_the_improvement() -> None:
    base, best = [2.71, 2.73, 2.70], [2.65, 2.66, 2.62]
    x = pool_runs(base, best)
    # by hand: variances 0.0007/3 and 0.0013/3; SE of each mean sqrt(var/3); improvement 0.07
    assert x.baseline.mean == pytest.approx(2.713333333) and x.best.mean == pytest.approx(2.643333333)
    assert x.baseline_se == pytest.approx(math.sqrt(0.0007 / 3 / 3))
    assert x.best_se == pytest.approx(math.sqrt(0.0013 / 3 / 3))
    assert x.improvement == pytest.approx(0.07)
    assert x.se == pytest.approx(math.sqrt(0.002 / 9)) and x.method == "welch"
    assert x.df == 3  # Welch-Satterthwaite 3.67, floored
    assert (x.ci_low, x.ci_high) == pytest.approx((0.0226, 0.1174), abs=1e-4)
    assert x.verdict == V_BETTER


def test_paired_eval_se_adds_in_quadrature_and_widens_the_interval() -> None:
    plain = pool_runs([2.71, 2.73, 2.70], [2.65, 2.66, 2.62])
    paired = pool_runs([2.71, 2.73, 2.70], [2.65, 2.66, 2.62], se_eval=0.02)
    assert paired.se == pytest.approx(math.sqrt(0.002 / 9 + 0.02**2))
    assert paired.se_train == pytest.approx(plain.se) and paired.se_eval == 0.02
    vt, ve = 0.002 / 9, 0.0004
    assert paired.df == int((vt + ve) ** 2 / (vt**2 / 3))  # Satterthwaite on Welch's 3 df, the eval term known
    assert paired.ci_high - paired.ci_low == pytest.approx(2 * t_quantile(0.975, paired.df) * paired.se)


def test_a_difference_inside_the_noise_is_within_noise() -> None:
    x = pool_runs([1.000, 1.020], [1.005, 0.995])
    assert x.improvement == pytest.approx(0.01) and x.ci_low < 0 < x.ci_high
    assert x.verdict == V_WITHIN


def test_a_side_with_one_run_takes_the_tags_pooled_noise() -> None:
    noise = NoiseEstimate(sigma=0.01, df=4, runs=6, groups=2)
    x = pool_runs([2.70, 2.71, 2.72], [2.60], noise)
    assert x.method == "pooled" and x.df == 4
    assert x.se == pytest.approx(0.01 * math.sqrt(1 / 3 + 1))
    assert x.best_se == pytest.approx(0.01)  # sigma / sqrt(1)
    assert x.baseline_se == pytest.approx(0.01 / math.sqrt(3))  # its own runs' SE
    unmeasured = pool_runs([2.70], [2.60])
    assert unmeasured.se is None and unmeasured.verdict == V_UNMEASURED and unmeasured.improvement == pytest.approx(0.1)


def test_a_deterministic_profile_has_no_spread() -> None:
    exact = NoiseEstimate.for_deterministic_profile()
    better = pool_runs([1.2, 1.2], [1.1, 1.1], exact)
    assert better.se == 0.0 and better.baseline_se == 0.0 and better.verdict == V_BETTER
    assert pool_runs([1.2], [1.2], exact).verdict == V_EQUAL


def test_baseline_only_when_there_is_no_best() -> None:
    x = pool_runs([1.2, 1.3], [])
    assert x.verdict == V_NO_BEST and x.improvement is None and x.baseline.n == 2


def _rows(profile: str, shift: float, seed: int) -> RowLosses:
    rows = profile_rows(get_profile(profile))
    rng = np.random.default_rng(seed)
    nbytes = np.full(rows, 300, dtype=np.int64)
    nats = np.abs(rng.normal(2.0 + shift, 0.3, rows)) * nbytes
    return RowLosses(nats=nats, tokens=np.full(rows, 64, dtype=np.int64), bytes=nbytes)


def test_paired_rows_se_reads_every_runs_rowloss_and_drops_the_term_on_a_bad_file(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("b0", "b1", "k0", "k1")}
    losses = {}
    for i, (name, d) in enumerate(dirs.items()):
        d.mkdir()
        losses[name] = _rows("cpu", 0.0 if name.startswith("b") else -0.05, i)
        write_rowloss(losses[name], d / ROWLOSS_FILE)
    se = paired_rows_se("cpu", [dirs["b0"], dirs["b1"]], [dirs["k0"], dirs["k1"]])
    assert se == pytest.approx(paired_eval_se([losses["k0"], losses["k1"]], [losses["b0"], losses["b1"]]).se)
    assert se > 0
    (dirs["k1"] / ROWLOSS_FILE).write_bytes(b"OVROWLS\0" + bytes(10))  # wrong size: hostile or torn
    assert paired_rows_se("cpu", [dirs["b0"], dirs["b1"]], [dirs["k0"], dirs["k1"]]) is None
    assert paired_rows_se("cpu", [dirs["b0"]], []) is None


# -- a night, then verify through the fake runner ----------------------------------------------


class SeededRunner(FakeRunner):
    """The fake runner plus a spread that depends on the seed only (so run i of the baseline and
    run i of the best share it, as verify intends), and a rowloss.bin for the cpu profile."""

    def __init__(self, rowloss: bool = True) -> None:
        super().__init__()
        self.rowloss = rowloss
        self.scores: list[tuple[str, int, float]] = []  # (label, seed, val_bpb)

    def __call__(self, spec):
        result = super().__call__(spec)
        if result.score is not None and result.score.val_bpb is not None:
            result.score.val_bpb += 0.004 * ((spec.seed * 7919) % 11) / 11
            self.scores.append((spec.labels.get("overnight.replay-of", ""), spec.seed, result.score.val_bpb))
            if self.rowloss:
                write_rowloss(
                    _rows(spec.profile, -result.score.val_bpb / 10, spec.seed), Path(spec.run_dir) / ROWLOSS_FILE
                )
        return result


@pytest.fixture
def night(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A finished 3-experiment night under runs/t1 (0 baseline keep, 1 keep, 2 discard, 3 crash),
    its records rewritten as if it ran on the time-budgeted cpu profile."""
    for name in list(os.environ):
        if name.startswith("OVERNIGHT_") or name == "ANTHROPIC_API_KEY":
            monkeypatch.delenv(name)
    repo = make_repo(tmp_path / "repo")
    loop, *_ = build_loop(repo, "t1", SCRIPT, max_experiments=3, max_fix_attempts=0)
    loop.run()
    ledger = Ledger(repo / "runs" / "t1")
    refs = g.experiment_refs(repo, "t1")
    for row in ledger.rows():
        record = ledger.read_record(row.n, refs[row.n])
        ledger.write_record(record.model_copy(update={"profile": "cpu"}))
    monkeypatch.chdir(repo)
    return repo


def _settings(repo: Path, **kw):
    return load_settings(tag="t1", repo=repo, runs_dir=repo / "runs", data_dir=repo / "data", **kw)


def _lines(text: str) -> dict[str, tuple[str, str]]:
    return {m.group(1): (m.group(2), m.group(3)) for m in LINE.finditer(text)}


def test_verify_reruns_baseline_and_best_interleaved_with_shared_fresh_seeds(night: Path) -> None:
    runner = SeededRunner()
    result = verify_tag(_settings(night), runner, "sha256:fake", runs=3)
    rows = Ledger(night / "runs" / "t1").by_number()
    assert rows[1].status == "keep"  # the best
    labels = [s.labels["overnight.replay-of"] for s in runner.specs]
    assert labels == ["t1-0", "t1-1"] * 3
    seeds = [s.seed for s in runner.specs]
    assert seeds[0::2] == seeds[1::2] == result.record.seeds and len(set(seeds)) == 3
    assert min(seeds) > 0  # above the night's own seed 0 (its runs used seed + k)
    assert all(s.run_dir.parent == (night / "runs" / "t1" / "replays").resolve() for s in runner.specs)
    assert all((s.run_dir / "replay.json").is_file() for s in runner.specs)
    assert read_verify(night / "runs" / "t1") == result.record
    again = SeededRunner()
    verify_tag(_settings(night), again, "sha256:fake", runs=2)
    assert min(s.seed for s in again.specs) > max(seeds)  # a second verify gets fresh seeds again


def test_cli_prints_grep_able_mean_se_lines_and_the_verdict(
    night: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    runner = SeededRunner()
    monkeypatch.setattr(cli, "make_backend", lambda settings: None)
    monkeypatch.setattr(cli, "make_runner", lambda settings, backend=None: runner)
    monkeypatch.setattr(cli, "current_image_id", lambda settings, backend=None: "sha256:fake")
    assert cli.main(["verify", "--tag", "t1", "--runs", "3", "--data-dir", str(night / "data")]) == 0
    out = capsys.readouterr().out
    base = [v for label, _, v in runner.scores if label == "t1-0"]
    best = [v for label, _, v in runner.scores if label == "t1-1"]
    lines = _lines(out)
    assert set(lines) == {"baseline", "best", "improvement"}
    assert float(lines["baseline"][0]) == pytest.approx(statistics.fmean(base), abs=1e-6)
    assert float(lines["baseline"][1]) == pytest.approx(statistics.stdev(base) / math.sqrt(3), abs=1e-6)
    assert float(lines["best"][0]) == pytest.approx(statistics.fmean(best), abs=1e-6)
    assert float(lines["improvement"][0]) == pytest.approx(statistics.fmean(base) - statistics.fmean(best), abs=1e-6)
    welch = math.sqrt(statistics.variance(base) / 3 + statistics.variance(best) / 3)
    record = read_verify(night / "runs" / "t1")
    assert record.numbers.se_eval is not None and record.numbers.se_eval > 0  # paired over the rowloss files
    assert float(lines["improvement"][1]) == pytest.approx(math.hypot(welch, record.numbers.se_eval), abs=1e-6)
    assert re.search(r"^verdict: (better beyond noise|within noise|worse beyond noise)$", out, re.MULTILINE)
    assert "baseline_runs: 3" in out and "best_runs: 3" in out and "failed_runs: 0 of 6" in out


def test_without_rowloss_files_the_improvement_is_welch_alone(night: Path) -> None:
    runner = SeededRunner(rowloss=False)
    result = verify_tag(_settings(night), runner, "sha256:fake", runs=2)
    x = result.record.numbers
    assert x.se_eval is None and x.method == "welch" and x.se == pytest.approx(x.se_train)
    assert "paired eval-row SE" not in "\n".join(describe(result))


def test_bad_input_is_a_one_line_error(
    night: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(cli, "make_backend", lambda settings: None)
    monkeypatch.setattr(cli, "make_runner", lambda settings, backend=None: SeededRunner())
    monkeypatch.setattr(cli, "current_image_id", lambda settings, backend=None: "sha256:fake")
    assert cli.main(["verify", "--tag", "t1", "--runs", "0"]) == 2
    assert cli.main(["verify", "--tag", "nope"]) == 2
    err = capsys.readouterr().err
    assert "verify needs 1 to 20 runs" in err and "no ledger for tag nope" in err and "tags there: t1" in err
    assert "Traceback" not in err
    with pytest.raises(VerifyError, match="rebuild or retag that image"):
        verify_tag(_settings(night), SeededRunner(), "sha256:other", runs=1)
    with verify_lock(_settings(night)):  # a night still running on the tag
        assert cli.main(["verify", "--tag", "t1"]) == 2
    assert "is still running" in capsys.readouterr().err


def test_crashed_runs_are_counted_and_left_out(night: Path) -> None:
    class FlakyRunner(SeededRunner):
        def __call__(self, spec):
            if len(self.specs) == 1:  # the best's first run: the sandbox fails on it
                self.specs.append(spec)
                raise RuntimeError("engine hiccup")
            return super().__call__(spec)

    result = verify_tag(_settings(night), FlakyRunner(), "sha256:fake", runs=3)
    x = result.record.numbers
    assert x.baseline.n == 3 and x.best.n == 2
    text = "\n".join(describe(result))
    assert "failed_runs: 1 of 6 (baseline 0 of 3, best 1 of 3)" in text


def test_verify_night_runs_only_when_asked_and_never_raises(night: Path) -> None:
    said: list[str] = []
    runner = SeededRunner()
    assert verify_night(_settings(night), runner, say=said.append) is None and not runner.specs  # verify_runs 0
    result = verify_night(_settings(night, verify_runs=2), runner, say=said.append)
    assert result is not None and len(runner.specs) == 4 and result.record.runs_each == 2
    assert any(line.startswith("improvement_bpb: ") for line in said)

    class DownRunner(SeededRunner):
        def __call__(self, spec):
            raise SandboxError("no Docker engine reachable: start dockerd")

    said.clear()
    assert verify_night(_settings(night, verify_runs=2), DownRunner(), say=said.append) is None
    assert any(line.startswith("verify skipped: the sandbox failed") for line in said)


def test_stop_cuts_verify_short_and_keeps_what_ran(night: Path) -> None:
    runner = SeededRunner()
    result = verify_tag(_settings(night), runner, "sha256:fake", runs=3, stop=lambda: len(runner.specs) >= 2)
    assert result.record.stopped and len(result.record.runs) == 2
    assert "stopped early: 2 of 6 runs" in "\n".join(describe(result))
