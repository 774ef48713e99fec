"""The `search` agent: optuna TPE over the constants block of train.py, persisted per tag."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from controller.agents import AgentConfigError, make_agent
from controller.agents.base import AgentError, Failure, HistoryRow, ProposalContext
from controller.agents.constants_block import constant_values, parse_constants
from controller.agents.search_agent import (
    DB_NAME,
    STUDY_NAME,
    ParamSpec,
    SearchAgent,
    SearchSettings,
    SpaceFile,
    build_space,
)

SEED = """\
import torch
from evaluator import submit

LR = 0.02  # learning rate
DEPTH = 8  # layers
WIDTH = 96  # model width
WARMUP = 0.1  # warmup fraction
USE_NORM = True  # normalise
DROPOUT = 0.0  # zero: not searched unless named
OFFSET = -2  # negative: not searched

model = torch.nn.Linear(WIDTH, WIDTH)
submit(model)
"""
SEARCHED = ["LR", "DEPTH", "WIDTH", "WARMUP", "USE_NORM"]


def objective(values: dict[str, Any]) -> float:
    """A smooth made-up val_bpb with its optimum away from the seed."""
    return (
        1.0
        + math.log(values["LR"] / 0.05) ** 2
        + 0.3 * math.log2(values["DEPTH"] / 16) ** 2
        + math.log(values["WIDTH"] / 150) ** 2
        + (0.0 if values["USE_NORM"] else 0.5)
    )


@pytest.fixture
def program(tmp_path: Path) -> Path:
    folder = tmp_path / "programs" / "toy"
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(SEED)
    return folder / "train.py"


def agent_for(runs: Path, seed_train_py: Path, **settings: Any) -> SearchAgent:
    return SearchAgent(SearchSettings(runs_dir=runs, seed_train_py=seed_train_py, **settings))


def context(
    n: int, train_py: Path, runs: Path, history: list[HistoryRow] | None = None, **extra: Any
) -> ProposalContext:
    return ProposalContext(
        tag="toy",
        experiment=n,
        train_py=train_py,
        program_md="",
        profile="test",
        history=history or [],
        best_diff="",
        runs_dir=runs,
        **extra,
    )


class Night:
    """The controller's side, reduced to what the agent sees: keep the best, observe every result."""

    def __init__(self, agent: SearchAgent, work: Path, runs: Path) -> None:
        self.agent, self.work, self.runs = agent, work, runs
        self.best_text = SEED
        self.best_val = objective(constant_values(SEED))
        self.results: list[tuple[int, float, str, str]] = []

    def baseline(self) -> None:
        self.agent.observe(0, self.best_val, "keep")

    def experiment(self, n: int) -> str:
        self.work.write_text(self.best_text)
        proposal = self.agent.propose(context(n, self.work, self.runs))
        text = self.work.read_text()
        value = objective(constant_values(text))
        status = "keep" if value < self.best_val else "discard"
        self.agent.observe(n, value, status)
        if status == "keep":
            self.best_text, self.best_val = text, value
        self.results.append((n, value, status, proposal.description))
        return proposal.description


# --- the search space ---------------------------------------------------------------------


def test_space_is_derived_from_the_seed_values() -> None:
    space = build_space(SEED + "MOMENTUM = 0.95\nSTEPS = 6\n", None)
    assert sorted(space) == sorted(SEARCHED + ["MOMENTUM", "STEPS"])
    assert space["DEPTH"] == ParamSpec(kind="pow2", low=2, high=32)  # powers of two stay powers of two
    assert space["STEPS"] == ParamSpec(kind="int", low=2, high=24, log=True)
    assert space["LR"] == ParamSpec(kind="float", low=0.005, high=0.08, log=True)
    assert space["MOMENTUM"].high == pytest.approx(0.975)  # a fraction stays below 1
    assert space["USE_NORM"].kind == "bool"


def test_an_override_file_adds_narrows_and_removes_constants(tmp_path: Path) -> None:
    override = SpaceFile.model_validate(
        {
            "params": {
                "DROPOUT": {"kind": "float", "low": 0.0, "high": 0.3},
                "DEPTH": {"kind": "int", "low": 2, "high": 12},
                "WARMUP": None,
            }
        }
    )
    space = build_space(SEED, override)
    assert space["DROPOUT"] == ParamSpec(kind="float", low=0.0, high=0.3)
    assert space["DEPTH"] == ParamSpec(kind="int", low=2, high=12)
    assert "WARMUP" not in space and "LR" in space
    only = build_space(
        SEED,
        SpaceFile.model_validate(
            {"derive_others": False, "params": {"LR": {"kind": "float", "low": 0.01, "high": 0.1, "log": True}}}
        ),
    )
    assert list(only) == ["LR"]


def test_a_bad_override_file_is_a_one_line_error(tmp_path: Path, program: Path) -> None:
    bad = program.parent / "search_space.json"
    bad.write_text(json.dumps({"params": {"NOPE": {"kind": "int", "low": 1, "high": 2}}}))
    with pytest.raises(AgentConfigError, match="NOPE"):
        make_agent("search", runs_dir=tmp_path / "runs", seed_train_py=program)
    bad.write_text(json.dumps({"params": {"LR": {"kind": "float", "low": 0.0, "high": 1.0, "log": True}}}))
    with pytest.raises(AgentConfigError, match="low > 0"):
        make_agent("search", runs_dir=tmp_path / "runs2", seed_train_py=program)
    bad.write_text(json.dumps({"params": {"USE_NORM": {"kind": "int", "low": 0, "high": 1}}}))
    with pytest.raises(AgentConfigError, match="USE_NORM is bool"):
        make_agent("search", runs_dir=tmp_path / "runs3", seed_train_py=program)
    assert not any((tmp_path / name).exists() for name in ("runs", "runs2", "runs3")), "a bad space left a study behind"


def test_a_profile_specific_space_file_wins(tmp_path: Path, program: Path) -> None:
    (program.parent / "search_space.json").write_text(
        json.dumps({"derive_others": False, "params": {"LR": {"kind": "bool"}}})
    )
    (program.parent / "search_space.cpu.json").write_text(
        json.dumps({"derive_others": False, "params": {"DEPTH": {"kind": "pow2", "low": 4, "high": 16}}})
    )
    agent = make_agent("search", runs_dir=tmp_path / "runs", seed_train_py=program, profile="cpu", seed=None)
    assert list(agent.space) == ["DEPTH"]  # type: ignore[attr-defined]


# --- proposals ----------------------------------------------------------------------------------


def test_a_proposal_changes_one_to_three_constants_of_the_current_best(tmp_path: Path, program: Path) -> None:
    runs = tmp_path / "runs" / "toy"
    agent = agent_for(runs, program)
    best = SEED.replace("LR = 0.02", "LR = 0.03").replace("WIDTH = 96", "WIDTH = 128")  # not the seed any more
    work = tmp_path / "train.py"
    for n in range(1, 9):
        work.write_text(best)
        proposal = agent.propose(context(n, work, runs))
        new = constant_values(work.read_text())
        old = constant_values(best)
        changed = [k for k in old if new[k] != old[k]]
        assert 1 <= len(changed) <= 3
        assert set(changed) <= set(SEARCHED)
        consts = parse_constants(best)
        for name in changed:  # the description says what changed, in the constants' own notation
            assert f"{name} {consts[name].text} -> " in proposal.description
        assert proposal.description.count("->") == len(changed)
        # only literal spans were rewritten
        new_consts = parse_constants(work.read_text())
        assert _strip(best, [consts[k] for k in changed]) == _strip(work.read_text(), [new_consts[k] for k in changed])
        agent.observe(n, 1.0 + n / 100, "discard")


def _strip(text: str, constants: list) -> str:
    for c in sorted(constants, key=lambda c: c.start, reverse=True):
        text = text[: c.start] + text[c.end :]
    return text


def test_the_study_resumes_across_agent_instances_and_never_repeats(tmp_path: Path, program: Path) -> None:
    runs = tmp_path / "runs" / "toy"
    work = tmp_path / "train.py"
    night = Night(agent_for(runs, program), work, runs)
    night.baseline()
    for n in range(1, 6):
        night.experiment(n)
    night.agent = agent_for(runs, program)  # the controller restarted
    for n in range(6, 12):
        night.experiment(n)

    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{runs / DB_NAME}")
    trials = study.get_trials()
    assert [t.user_attrs["experiment"] for t in trials] == list(range(12))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    configs = [json.dumps(sorted(t.params.items())) for t in trials]
    assert len(set(configs)) == len(configs), "a configuration was proposed twice"
    assert [t.value for t in trials[1:]] == pytest.approx([r[1] for r in night.results])


def test_a_restarted_controller_gets_the_same_proposal_for_an_unfinished_experiment(
    tmp_path: Path, program: Path
) -> None:
    runs = tmp_path / "runs" / "toy"
    work = tmp_path / "train.py"
    work.write_text(SEED)
    first = agent_for(runs, program).propose(context(1, work, runs))
    changed_text = work.read_text()
    work.write_text(SEED)  # killed before the run: the worktree was reset
    again = agent_for(runs, program).propose(context(1, work, runs))
    assert again.description == first.description and work.read_text() == changed_text
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{runs / DB_NAME}")
    assert len(study.trials) == 1


def test_observe_feeds_results_and_tpe_takes_over_after_the_random_start(tmp_path: Path, program: Path) -> None:
    runs = tmp_path / "runs" / "toy"
    night = Night(agent_for(runs, program, n_startup_trials=4, seed=1), tmp_path / "train.py", runs)
    night.baseline()
    baseline = night.best_val
    for n in range(1, 21):
        night.experiment(n)
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{runs / DB_NAME}")
    trials = study.get_trials()
    hows = [t.user_attrs["how"] for t in trials]
    assert hows[0] == "seed" and hows[1:4] == ["random"] * 3 and hows[-1] == "tpe"
    assert study.best_value == pytest.approx(min([baseline] + [r[1] for r in night.results]))
    assert night.best_val < baseline - 0.2, f"no real improvement found: {night.results}"
    assert sum(status == "keep" for _, _, status, _ in night.results) >= 2


def test_crashes_fail_their_trial_and_are_not_proposed_again(tmp_path: Path, program: Path) -> None:
    runs = tmp_path / "runs" / "toy"
    agent = agent_for(runs, program)
    work = tmp_path / "train.py"
    agent.observe(0, 1.5, "keep")
    work.write_text(SEED)
    agent.propose(context(1, work, runs))
    crashed = work.read_text()
    agent.observe(1, None, "crash")
    agent.observe(1, 1.2, "keep")  # a second, late report for the same experiment changes nothing
    study = agent.study
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.FAIL]
    for n in range(2, 10):
        work.write_text(SEED)
        agent.propose(context(n, work, runs))
        assert work.read_text() != crashed
        agent.observe(n, 2.0, "discard")


def test_a_missed_observe_is_recovered_from_the_history(tmp_path: Path, program: Path) -> None:
    runs = tmp_path / "runs" / "toy"
    work = tmp_path / "train.py"
    work.write_text(SEED)
    agent_for(runs, program).propose(context(1, work, runs))  # killed before observe()
    rows = [
        HistoryRow(
            n=0, commit="a", val_bpb=1.9, memory_gb=0, status="keep", description="baseline", run_dir=runs / "0"
        ),
        HistoryRow(n=1, commit="b", val_bpb=1.7, memory_gb=0, status="keep", description="x", run_dir=runs / "1"),
    ]
    agent = agent_for(runs, program)
    work.write_text(SEED)
    agent.propose(context(2, work, runs, history=rows))
    trials = agent.study.get_trials()
    by_n = {t.user_attrs["experiment"]: t for t in trials}
    assert by_n[0].value == 1.9 and by_n[1].value == 1.7 and by_n[2].state == TrialState.RUNNING


def test_the_same_seed_and_results_give_the_same_proposals(tmp_path: Path, program: Path) -> None:
    def run(name: str, seed: int) -> list[str]:
        runs = tmp_path / name
        night = Night(agent_for(runs, program, seed=seed, n_startup_trials=3), tmp_path / f"{name}.py", runs)
        night.baseline()
        return [night.experiment(n) for n in range(1, 9)]

    assert run("a", seed=7) == run("b", seed=7)
    assert run("c", seed=8) != run("a2", seed=7)


def test_an_exhausted_space_is_an_agent_error(tmp_path: Path) -> None:
    seed = tmp_path / "train.py"
    seed.write_text("USE_NORM = True\nsubmit(model)\n")
    runs = tmp_path / "runs"
    agent = agent_for(runs, seed)
    agent.observe(0, 1.0, "keep")
    work = tmp_path / "work.py"
    work.write_text(seed.read_text())
    assert agent.propose(context(1, work, runs)).description == "USE_NORM True -> False"
    agent.observe(1, 1.1, "discard")
    work.write_text(seed.read_text())
    with pytest.raises(AgentError, match="exhausted"):
        agent.propose(context(2, work, runs))


def test_asked_to_fix_a_crash_it_moves_on_from_the_best_configuration(tmp_path: Path, program: Path) -> None:
    """It cannot fix code (can_fix_crashes is False, so the loop should not ask); asked anyway, it
    proposes a fresh configuration from the best one instead of failing, so the night goes on."""
    runs = tmp_path / "runs" / "toy"
    agent = make_agent("search", runs_dir=runs, seed_train_py=program)
    assert agent.can_fix_crashes is False  # type: ignore[attr-defined]
    work = tmp_path / "train.py"
    agent.observe(0, 2.0, "keep")
    work.write_text(SEED)
    agent.propose(context(1, work, runs))
    kept = work.read_text()
    agent.observe(1, 1.5, "keep")
    agent.propose(context(2, work, runs))  # from the kept one
    crashed = work.read_text()
    agent.observe(2, None, "crash")
    rows = [
        HistoryRow(
            n=0, commit="a", val_bpb=2.0, memory_gb=0, status="keep", description="baseline", run_dir=runs / "0"
        ),
        HistoryRow(n=1, commit="b", val_bpb=1.5, memory_gb=0, status="keep", description="x", run_dir=runs / "1"),
        HistoryRow(n=2, commit="c", val_bpb=None, memory_gb=0, status="crash", description="y", run_dir=runs / "2"),
    ]
    fix = Failure(n=2, description="y", status="crash", log_tail="RuntimeError: out of memory")
    proposal = agent.propose(context(3, work, runs, history=rows, fix_attempt=fix))  # work holds the crashed file
    fixed = constant_values(work.read_text())
    best = constant_values(kept)
    changed = [k for k in best if fixed[k] != best[k]]
    assert 1 <= len(changed) <= 3 and work.read_text() not in (kept, crashed)
    for name in changed:
        assert f"{name} {parse_constants(kept)[name].text} -> " in proposal.description


def test_tpe_draws_move_toward_where_results_were_good(tmp_path: Path) -> None:
    """One constant, the best kept at the seed, so every proposal is a pure draw: after the random
    start, TPE's draws land much closer to the optimum (a random sampler averages ~1.2 here)."""
    seed = tmp_path / "train.py"
    seed.write_text("LR = 0.02\nsubmit(model)\n")
    runs = tmp_path / "runs"
    agent = agent_for(runs, seed, n_startup_trials=5, seed=0)

    def loss(lr: float) -> float:
        return math.log(lr / 0.06) ** 2

    agent.observe(0, loss(0.02), "keep")
    work = tmp_path / "work.py"
    distances = []
    for n in range(1, 21):
        work.write_text(seed.read_text())
        agent.propose(context(n, work, runs))
        lr = constant_values(work.read_text())["LR"]
        agent.observe(n, loss(lr), "discard")
        distances.append(abs(math.log(lr / 0.06)))
    tpe = distances[5:]
    assert sum(tpe) / len(tpe) < 0.9, distances
