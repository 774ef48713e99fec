"""progress.png with error bars: points over their experiment number (row.n, also when rows were
decided out of order), bars of +/- one SE from the tag's pooled noise over sqrt(runs averaged),
the latest verify at the right edge, and old ledgers still plotted."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from controller_fakes import FakeRunner, build_loop, make_repo
from matplotlib.container import ErrorbarContainer

from controller import cli
from controller import git as g
from controller.ledger import HEADER, Ledger, LedgerRow
from controller.report import draw_progress, point_errors, read_rows, write_report
from controller.settings import load_settings
from controller.verify import verify_tag

SCRIPT = {
    1: {"set": {"LR": 0.01}, "desc": "LR up"},
    2: {"set": {"LR": 1.0}, "desc": "LR way up"},
    3: {"append": "CRASH = 1", "desc": "crashes"},
}
RUNS = {0: [1.20, 1.21, 1.19], 1: [1.10, 1.12], 2: [1.30]}  # n -> its runs (calibration, confirmation)
SIGMA = math.sqrt((0.0002 + 0.0002) / 3)  # pooled by hand: sums of squares 0.0002 (2 df) and 0.0002 (1 df)


@pytest.fixture
def tag_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A night on the cpu profile (rewritten records) whose rows were decided in the order 0, 2, 1, 3,
    with replicate runs behind rows 0 and 1."""
    for name in list(os.environ):
        if name.startswith("OVERNIGHT_") or name == "ANTHROPIC_API_KEY":
            monkeypatch.delenv(name)
    repo = make_repo(tmp_path / "repo")
    loop, *_ = build_loop(repo, "t1", SCRIPT, max_experiments=3, max_fix_attempts=0)
    loop.run()
    ledger = Ledger(repo / "runs" / "t1")
    refs = g.experiment_refs(repo, "t1")
    rows = {row.n: row for row in ledger.rows()}
    for n in rows:
        record = ledger.read_record(n, refs[n])
        first = record.replicates[0]
        reps = [first.model_copy(update={"k": k, "val_bpb": v, "seed": k}) for k, v in enumerate(RUNS.get(n, []))]
        ledger.write_record(record.model_copy(update={"profile": "cpu", "replicates": reps or record.replicates}))
    decided = [rows[0], rows[2], rows[1], rows[3]]
    lines = [HEADER + "\n"]
    for row in decided:
        runs = len(RUNS.get(row.n, [])) if row.scored else 0
        value = sum(RUNS[row.n]) / runs if row.scored else 0.0
        lines.append(
            LedgerRow(
                row.commit,
                value,
                row.memory_gb,
                row.status,
                row.description,
                row.n,
                runs,
                row.delta,
                row.train_s,
                row.slot,
            ).line()
        )
    ledger.path.write_text("".join(lines))
    monkeypatch.chdir(repo)
    return ledger.tag_dir


def _bars(fig) -> dict[float, float]:
    """x -> full length of each error bar drawn for the ledger's points."""
    ax = fig.axes[0]
    out: dict[float, float] = {}
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer) and container.has_xerr is False and container.lines[0] is None:
            for seg in container.lines[2][0].get_segments():
                out[float(seg[0][0])] = float(seg[1][1] - seg[0][1])
    return out


def test_bars_are_the_pooled_noise_over_sqrt_runs_at_each_experiment_number(tag_dir: Path) -> None:
    rows = Ledger(tag_dir).rows()
    assert [r.n for r in rows] == [0, 2, 1, 3]  # decided out of order
    errors = point_errors(tag_dir, rows)
    assert errors.se == pytest.approx({0: SIGMA / math.sqrt(3), 1: SIGMA / math.sqrt(2), 2: SIGMA})
    assert "pooled noise sigma" in errors.source and "(3 df)" in errors.source
    fig = draw_progress("t1", rows, errors)
    try:
        bars = _bars(fig)
        assert bars == pytest.approx({0.0: 2 * SIGMA / math.sqrt(3), 1.0: 2 * SIGMA / math.sqrt(2), 2.0: 2 * SIGMA})
        ax = fig.axes[0]
        kept = next(c for c in ax.collections if c.get_label().startswith("kept"))
        assert [list(p) for p in kept.get_offsets().tolist()] == [[0.0, pytest.approx(1.2)], [1.0, pytest.approx(1.11)]]
        assert "experiment number" in ax.get_xlabel()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    plot = write_report(tag_dir)
    assert plot.points == 4 and plot.bars == 3 and plot.replicated == 2 and not plot.verified


def test_replays_join_the_pooled_noise(tag_dir: Path) -> None:
    class Plus(FakeRunner):
        def __call__(self, spec):
            result = super().__call__(spec)
            result.score.val_bpb = 1.31 if len(self.specs) == 1 else 1.29  # the discarded #2 again: 1.31, 1.29
            return result

    settings = load_settings(
        tag="t1", repo=tag_dir.parent.parent, runs_dir=tag_dir.parent, data_dir=tag_dir.parent.parent / "data"
    )
    from controller.replay import replay

    rows = Ledger(tag_dir).by_number()
    runner = Plus()
    for _ in range(2):
        replay(settings, rows[2].commit, runner, image_id="sha256:fake")
    pooled = math.sqrt((0.0002 + 0.0002 + 0.0002) / 5)
    assert point_errors(tag_dir, Ledger(tag_dir).rows()).se[2] == pytest.approx(pooled)


def test_verify_is_drawn_at_the_right_edge(tag_dir: Path) -> None:
    settings = load_settings(
        tag="t1", repo=tag_dir.parent.parent, runs_dir=tag_dir.parent, data_dir=tag_dir.parent.parent / "data"
    )
    verify_tag(settings, FakeRunner(), "sha256:fake", runs=2)
    plot = write_report(tag_dir)
    assert plot.verified and plot.points == 4


def test_a_deterministic_profile_gets_no_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "repo")
    loop, *_ = build_loop(repo, "t2", SCRIPT, max_experiments=2, max_fix_attempts=0)
    loop.run()
    errors = point_errors(repo / "runs" / "t2", Ledger(repo / "runs" / "t2").rows())
    assert errors.se == {} and "deterministic" in errors.source


def test_old_ledgers_still_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    tag = tmp_path / "runs" / "old"
    tag.mkdir(parents=True)
    (tag / "results.tsv").write_text(
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\ttrain_s\n"
        "a000000\t1.200000\t2.0\tkeep\tbaseline\t45.1\n"
        "a000001\t1.250000\t2.0\tdiscard\tworse\t45.0\n"
        "a000002\t0.000000\t0.0\tcrash\toom\t3.0\n"
        "a000003\t1.100000\t2.1\tkeep\tbetter\t45.2\n"
    )
    rows = read_rows(tag)
    assert [r.n for r in rows] == [0, 1, 2, 3] and rows[3].train_s == 45.2
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "--tag", "old"]) == 0
    assert "wrote runs/old/progress.png: 4 experiments (2 kept, 1 discarded, 1 failed)" in capsys.readouterr().out
    (tag / "results.tsv").write_text("commit\tval_bpb\tsomething else\n")
    assert cli.main(["report", "--tag", "old"]) == 2
    assert "does not start with the ledger's header line" in capsys.readouterr().err
