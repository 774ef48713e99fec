"""Several experiments in flight (issue 13): the agent prepares the next proposal while a slot
trains; a prepared proposal is committed on the current best (rebased when the best moved); a
candidate that beats a best kept after it started is merged onto that best and the merged commit is
measured before it lands; a merge conflict sends the idea back to the agent; nothing unmeasured is
ever kept; a kill -9 with two runs in flight loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from controller_fakes import (
    HANG_ENV,
    MARKER_ENV,
    REPO_ROOT,
    ScriptedAgent,
    build_loop,
    check_consistent,
    make_repo,
)

from controller import git as g
from controller.agents.base import Proposal, ProposalContext
from controller.ledger import Ledger

TRAIN = "programs/default/train.py"
# The two constants the fake runner scores (LR, DEPTH) are far apart, so changes to each merge cleanly.
SPREAD_TRAIN_PY = '''"""A toy train.py: the fake runner scores it from its constants."""

LR = 0.001  # learning rate

WIDTH = 64  # model width

DEPTH = 4  # layers

print("training", LR, DEPTH, WIDTH)
'''


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return False


class GatedAgent(ScriptedAgent):
    """A scripted agent whose proposal for experiment n waits until gates[n]() is true, and that
    notes when each proposal was asked for."""

    def __init__(self, script: dict, gates: dict[int, Callable[[], bool]] | None = None) -> None:
        super().__init__(script)
        self.gates = gates or {}
        self.asked_at: dict[int, float] = {}

    def propose(self, context: ProposalContext) -> Proposal:
        self.asked_at.setdefault(context.experiment, time.monotonic())
        gate = self.gates.get(context.experiment)
        if gate is not None:
            assert wait_until(gate), f"gate of proposal {context.experiment} never opened"
        return super().propose(context)


def night(
    tmp_path: Path,
    script: dict,
    max_experiments: int,
    slots: int,
    delays: dict[int, float],
    gates: dict | None = None,
    train_py: str = SPREAD_TRAIN_PY,
):
    repo = make_repo(tmp_path / "repo", train_py=train_py)
    loop, _, runner, observer = build_loop(
        repo, "t1", script, max_experiments=max_experiments, overlap=True, slots=slots
    )
    agent = GatedAgent(script, gates)
    loop.d.agent = agent
    runner.delays = delays
    return repo, loop, agent, runner, observer


def finished(runner, n: int) -> bool:
    return any(spec.labels.get("overnight.experiment") == str(n) for spec, _, _ in list(runner.windows))


def window(runner, n: int) -> tuple[float, float]:
    (found,) = [(a, b) for spec, a, b in runner.windows if spec.labels.get("overnight.experiment") == str(n)]
    return found


def record_of(repo: Path, n: int):
    ledger = Ledger(repo / "runs" / "t1")
    row = ledger.by_number()[n]
    return row, ledger.read_record(n, row.commit)


def assert_every_keep_was_measured(repo: Path, runner, before: frozenset[int] = frozenset()) -> None:
    """Each kept commit's exact train.py went through the runner (no unmeasured commit lands);
    `before`: experiments decided by an earlier process."""
    refs = g.experiment_refs(repo, "t1")
    measured = {Path(spec.train_py).read_bytes() for spec in runner.specs}
    for row in Ledger(repo / "runs" / "t1").rows():
        if row.status == "keep" and row.n not in before:
            assert g.file_at(repo, refs[row.n], TRAIN) in measured, row


def test_a_candidate_that_beats_a_newer_best_is_merged_onto_it_and_run_before_it_lands(tmp_path: Path) -> None:
    script = {1: {"set": {"DEPTH": 8}, "desc": "DEPTH 8"}, 2: {"set": {"LR": 0.01}, "desc": "LR 0.01"}}
    repo, loop, agent, runner, observer = night(
        tmp_path, script, max_experiments=3, slots=2, delays={1: 0.5, 2: 1.5}, gates={3: lambda: finished(runner, 2)}
    )  # the next proposal waits until #2 is done
    loop.run()
    rows = check_consistent(repo, "t1")
    assert {r.n: r.status for r in rows} == {0: "keep", 1: "keep", 2: "discard", 3: "keep"}
    a1, b1 = window(runner, 1)
    a2, b2 = window(runner, 2)
    assert a2 < b1  # #1 and #2 ran at the same time, on two slots
    refs = g.experiment_refs(repo, "t1")
    assert g.git(repo, "rev-parse", f"{refs[2]}^") == refs[0]  # #2 was built on the baseline...
    _, r2 = record_of(repo, 2)
    assert "merged as #3" in (r2.reason or "")  # ...beat #1 only after #1 was kept: merged, not kept
    row3, r3 = record_of(repo, 3)
    assert r3.kind == "merge" and r3.merge_of == 2 and r3.parent == refs[1]
    merged = g.file_at(repo, refs[3], TRAIN)
    assert b"LR = 0.01" in merged and b"DEPTH = 8" in merged
    assert g.resolve(repo, "refs/heads/autoresearch/t1") == refs[3]
    assert finished(runner, 3) and row3.val_bpb < record_of(repo, 1)[0].val_bpb
    assert_every_keep_was_measured(repo, runner)
    assert any("not run" in m for m in observer.messages)  # the proposal prepared meanwhile found no number left


def test_a_merge_conflict_sends_the_idea_back_to_the_agent(tmp_path: Path) -> None:
    script = {
        1: {"set": {"DEPTH": 8}, "desc": "DEPTH 8"},
        2: {"set": {"DEPTH": 6, "LR": 0.01}, "desc": "DEPTH 6 and LR 0.01"},
        4: {"set": {"LR": 0.01}, "desc": "LR 0.01 again, on the new best"},
    }
    repo, loop, agent, runner, observer = night(
        tmp_path, script, max_experiments=4, slots=2, delays={1: 0.5, 2: 1.5}, gates={3: lambda: finished(runner, 2)}
    )
    loop.run()
    rows = check_consistent(repo, "t1")
    status = {r.n: r.status for r in rows}
    assert status[1] == "keep" and status[2] == "discard" and status[4] == "keep"
    _, r2 = record_of(repo, 2)
    assert "conflicts" in (r2.reason or "") and "proposed again" in r2.reason
    (asked,) = [c for c in agent.contexts if c.fix_attempt is not None]
    assert asked.experiment == 4 and asked.fix_attempt.status == "conflict" and asked.fix_attempt.n == 2
    refs = g.experiment_refs(repo, "t1")
    _, r4 = record_of(repo, 4)
    assert r4.kind == "proposal" and r4.fix_of is None and r4.parent == refs[1]  # re-proposed, on the best
    assert_every_keep_was_measured(repo, runner)


def test_one_slot_overlaps_the_agent_with_training_and_commits_on_the_decided_best(tmp_path: Path) -> None:
    script = {
        1: {"set": {"DEPTH": 8}, "desc": "DEPTH 8 (kept)"},
        2: {"set": {"LR": 0.01}, "desc": "LR 0.01"},
        3: {"set": {"DEPTH": 2}, "desc": "DEPTH 2 (discarded)"},
        4: {"set": {"WIDTH": 65}, "desc": "W"},
    }
    repo, loop, agent, runner, observer = night(
        tmp_path, script, max_experiments=4, slots=1, delays={1: 0.6, 2: 0.6, 3: 0.6, 4: 0.1}
    )
    loop.run()
    rows = check_consistent(repo, "t1")
    assert [r.n for r in rows] == [0, 1, 2, 3, 4]  # one slot: decided in order
    for n in (1, 2, 3):  # the agent was asked for n+1 while n trained
        start, end = window(runner, n)
        assert start < agent.asked_at[n + 1] < end, n
    spans = sorted((a, b) for _, a, b in runner.windows)
    # never two runs at once on the slot
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    refs = g.experiment_refs(repo, "t1")
    parent = {n: g.git(repo, "rev-parse", f"{refs[n]}^") for n in (2, 3, 4)}
    assert parent[2] == refs[1]  # #1 was kept after #2 was prepared: #2 was rebased onto it
    assert b"DEPTH = 8" in g.file_at(repo, refs[2], TRAIN) and b"LR = 0.01" in g.file_at(repo, refs[2], TRAIN)
    assert rows[3].status == "discard" and parent[4] == refs[2]  # #3 discarded: #4 stays on the best (#2)
    assert_every_keep_was_measured(repo, runner)


def test_kill_9_with_two_runs_in_flight_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", train_py=SPREAD_TRAIN_PY)
    script = {1: {"set": {"LR": 0.01}, "desc": "LR 0.01"}, 2: {"set": {"DEPTH": 8}, "desc": "DEPTH 8"}}
    (tmp_path / "script.json").write_text(json.dumps(script))
    marker = tmp_path / "hung"
    env = {**os.environ, HANG_ENV: "in-run:1,in-run:2", MARKER_ENV: str(marker), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "tests" / "controller_fakes.py"),
            "--repo",
            str(repo),
            "--tag",
            "t1",
            "--script",
            str(tmp_path / "script.json"),
            "--max-experiments",
            "4",
            "--slots",
            "2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    both = lambda: all(Path(f"{marker}-in-run-{n}").exists() for n in (1, 2))  # noqa: E731
    try:
        assert wait_until(both, 60), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "not reached"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stderr.close()
    journal = Ledger(repo / "runs" / "t1").read_journal()
    assert journal is not None and {p.n for p in journal.pending} == {1, 2}  # two experiments in flight
    assert [r.n for r in Ledger(repo / "runs" / "t1").rows()] == [0]

    loop, agent, runner, _ = build_loop(repo, "t1", script, max_experiments=4, overlap=True, slots=2)
    loop.run()
    rows = check_consistent(repo, "t1")
    assert sorted(r.n for r in rows) == [0, 1, 2, 3, 4]
    ran = [spec.run_id for spec in runner.specs]
    assert "t1-0001" in ran and "t1-0002" in ran  # both redone, each once
    assert ran.count("t1-0001") == 1 and ran.count("t1-0002") == 1
    interrupted = sorted(p.name for p in (repo / "runs" / "t1" / "interrupted").iterdir())
    assert any(name.startswith("0001-") for name in interrupted) and any(
        name.startswith("0002-") for name in interrupted
    )
    merges = sum(record_of(repo, n)[1].kind == "merge" for n in (3, 4))
    assert agent.calls == 2 - merges  # #1 and #2 were not proposed again; only #3 and #4 (unless merges took them)
    assert_every_keep_was_measured(repo, runner, before=frozenset({0}))


def test_the_agent_is_told_what_is_in_flight(tmp_path: Path) -> None:
    script = {1: {"set": {"DEPTH": 8}, "desc": "DEPTH 8"}, 2: {"set": {"LR": 0.01}, "desc": "LR 0.01"}}
    repo, loop, agent, runner, _ = night(tmp_path, script, max_experiments=2, slots=2, delays={1: 1.0})
    loop.run()
    (second,) = [c for c in agent.contexts if c.experiment == 2]
    assert [f.n for f in second.in_flight] == [1]
    assert second.in_flight[0].description == "DEPTH 8" and "+DEPTH = 8" in second.in_flight[0].diff


def test_the_loop_threads_are_gone_when_the_night_ends(tmp_path: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    repo, loop, _, runner, _ = night(tmp_path, {}, max_experiments=3, slots=2, delays={1: 0.2, 2: 0.2})
    loop.run()
    assert wait_until(lambda: not ({t.name for t in threading.enumerate()} - before), 5)
