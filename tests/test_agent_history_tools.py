"""The history tools, on the refs of a real night (real git, real loop): any experiment's diff against
its parent (or the best, or the baseline), search by words and by constant, a summary; and the
compact table of the first message, which keeps the baseline and every kept change however long
the night."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.agents.anthropic_agent import first_message
from controller.agents.base import HistoryRow, ProposalContext
from controller.agents.history import compact_table
from controller.agents.tools import TrainPyTools
from tests.controller_fakes import build_loop, make_repo

SCRIPT = {
    1: {"set": {"LR": 0.01}, "desc": "LR 0.001 -> 0.01"},
    2: {"set": {"DEPTH": 8}, "desc": "DEPTH 4 -> 8"},
    3: {"set": {"LR": 0.1}, "desc": "LR 0.01 -> 0.1"},
    4: {"append": "CRASH = 1", "desc": "a crashing idea"},
    5: {"set": {"WIDTH": 128}, "desc": "wider model"},
}


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> ProposalContext:
    """The context the agent was given for experiment 6, after five real experiments."""
    repo = make_repo(tmp_path_factory.mktemp("history") / "repo")
    loop, agent, _, _ = build_loop(
        repo, "hist", {**SCRIPT, 6: {"set": {"WIDTH": 32}, "desc": "narrower"}}, max_experiments=6, max_fix_attempts=0
    )
    loop.run()
    return agent.contexts[-1]


def run(ctx: ProposalContext, tool: str, **args: object) -> str:
    outcome = TrainPyTools(ctx).run(tool, args)
    assert not outcome.is_error, outcome.text
    return outcome.text


def test_the_loop_gives_the_tools_the_repository_and_every_full_commit(night: ProposalContext) -> None:
    assert night.experiment == 6 and [r.status for r in night.history] == [
        "keep",
        "keep",
        "keep",
        "discard",
        "crash",
        "discard",
    ]
    assert night.repo is not None and night.train_rel == "programs/default/train.py"
    assert all(r.full_commit and len(r.full_commit) == 40 and r.full_commit.startswith(r.commit) for r in night.history)
    assert "LR = 0.001" in night.seed_train_py


def test_show_experiment_gives_what_an_experiment_changed(night: ProposalContext) -> None:
    third = run(night, "show_experiment", run=3)
    assert third.startswith("experiment 3 (") and "discard" in third and "LR 0.01 -> 0.1" in third
    assert "-LR = 0.01  # learning rate" in third and "+LR = 0.1  # learning rate" in third
    assert "DEPTH" not in third.split("diff of train.py", 1)[1].replace("DEPTH = 8", "")  # only its own change
    against_best = run(night, "show_experiment", run=5, against="best")
    assert "+WIDTH = 128" in against_best and "-WIDTH = 64" in against_best
    against_seed = run(night, "show_experiment", run=2, against="baseline")
    assert "+LR = 0.01" in against_seed and "+DEPTH = 8" in against_seed
    assert "baseline" in run(night, "show_experiment", run=0)
    missing = TrainPyTools(night).run("show_experiment", {"run": 42})
    assert missing.is_error and "no run 42" in missing.text


def test_search_by_constant_lists_every_change_of_it_with_old_and_new_values(night: ProposalContext) -> None:
    found = run(night, "search_history", constant="LR")
    assert found.startswith("2 experiments match constant LR")
    assert "LR 0.001 -> 0.01" in found and "LR 0.01 -> 0.1" in found and "DEPTH 4 -> 8" not in found
    assert "no experiment matches" in run(night, "search_history", constant="DROPOUT")
    bad = TrainPyTools(night).run("search_history", {"constant": "LR; rm -rf /"})
    assert bad.is_error and "Python name" in bad.text


def test_search_by_words_reads_descriptions_and_changed_lines(night: ProposalContext) -> None:
    assert "wider model" in run(night, "search_history", words="WIDER")
    crash = run(night, "search_history", words="crash = 1")  # a changed line, not the description
    assert crash.startswith("1 experiments match") and "a crashing idea" in crash
    assert "no experiment matches" in run(night, "search_history", words="wider lr")


def test_the_summary_counts_the_night_and_names_the_best(night: ProposalContext) -> None:
    summary = run(night, "history_summary")
    assert "experiments: 5 after the baseline (1 crash, 2 discard, 2 keep)" in summary
    assert "best: val_bpb" in summary and "(#2: DEPTH 4 -> 8)" in summary and "% vs the baseline" in summary
    assert "noise: not measured" in summary and "trend (best so far)" in summary
    assert "LR 2/1" in summary  # LR changed twice, kept once
    measured = TrainPyTools(night.model_copy(update={"noise_bpb": 0.0021})).run("history_summary", {})
    assert "about 0.002100 (measured)" in measured.text


def test_read_history_gives_a_range(night: ProposalContext) -> None:
    rows = run(night, "read_history", first=2, last=3).splitlines()
    assert len(rows) == 3 and rows[1].startswith("2\t") and rows[2].startswith("3\t")


def test_the_compact_table_keeps_the_baseline_and_every_keep_of_a_long_night(tmp_path: Path) -> None:
    statuses = ["keep" if n % 17 == 0 else ("crash" if n % 5 == 0 else "discard") for n in range(300)]
    history = [
        HistoryRow(
            n=n,
            commit=f"{n:07x}",
            val_bpb=None if s == "crash" else 2.0 - n / 1000,
            memory_gb=1.0,
            status=s,
            description=f"idea {n}",
            run_dir=tmp_path,
        )
        for n, s in enumerate(statuses)
    ]
    table = compact_table(history)
    shown = [int(line.split("\t")[0]) for line in table.splitlines()[1:] if not line.startswith("[")]
    keeps = [n for n, s in enumerate(statuses) if s == "keep"]
    assert shown == sorted({0, *keeps, *range(270, 300)})
    assert "rows left out (" in table and "read_history" in table
    ctx = ProposalContext(
        tag="t",
        experiment=300,
        train_py=tmp_path / "train.py",
        program_md="",
        profile="gpu",
        history=history,
        best_diff="",
        runs_dir=tmp_path,
    )
    opening = first_message(ctx)
    assert "\n0\t0000000\t" in opening and f"\n{keeps[-1]}\t{keeps[-1]:07x}" in opening and "<- best" in opening
    assert len(opening) < 12_000  # it grows with the keeps, not with the night
