"""The overnight loop with a fake runner and a scripted agent, on real git in a temporary repo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from controller_fakes import FakeRunner, build_loop, check_consistent, git, make_repo

from controller import git as g
from controller.agents.base import AgentError
from controller.ledger import Ledger
from controller.loop import AgentFatalError, SetupError, resume_settings, tag_lock
from controller.settings import load_settings

LR_UP = {"set": {"LR": 0.01}, "desc": "LR 0.001 -> 0.01"}
LR_TOO_HIGH = {"set": {"LR": 1.0}, "desc": "LR -> 1.0"}
CRASH = {"append": "CRASH = 1", "desc": "crashes"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def ledger_of(repo: Path, tag: str = "t1") -> Ledger:
    return Ledger(repo / "runs" / tag)


def test_baseline_then_keep_advances_and_discard_resets(repo: Path) -> None:
    loop, agent, runner, observer = build_loop(repo, "t1", {1: LR_UP, 2: LR_TOO_HIGH}, max_experiments=2)
    summary = loop.run()
    assert summary.reason == "max-experiments"
    rows = check_consistent(repo, "t1")
    assert [(r.status, r.description) for r in rows] == [
        ("keep", "baseline"),
        ("keep", "LR 0.001 -> 0.01"),
        ("discard", "LR -> 1.0"),
    ]
    assert rows[0].val_bpb > rows[1].val_bpb < rows[2].val_bpb
    refs = g.experiment_refs(repo, "t1")
    user_head = git(repo, "rev-parse", "main")
    assert refs[0] == user_head  # the baseline is the unmodified seed: the user's HEAD
    assert git(repo, "rev-parse", "autoresearch/t1") == refs[1]  # kept: the branch advanced
    assert git(repo, "rev-parse", f"{refs[2]}^") == refs[1]  # discarded: parent is the best, branch reset
    assert b"LR = 1.0" in g.file_at(repo, refs[2], "programs/default/train.py")  # still replayable by its ref
    assert git(repo, "rev-parse", "HEAD") == user_head and git(repo, "status", "--porcelain") == ""
    assert [(n, status) for n, _, status in agent.observed] == [(0, "keep"), (1, "keep"), (2, "discard")]
    assert [v for _, v, _ in agent.observed] == pytest.approx([r.val_bpb for r in rows], abs=1e-6)
    assert [s.run_id for s in runner.specs] == ["t1-0000", "t1-0001", "t1-0002"]
    assert runner.specs[1].labels == {"overnight.tag": "t1", "overnight.experiment": "1", "overnight.replicate": "0"}
    assert runner.specs[1].run_dir == (repo / "runs" / "t1" / f"0001-{rows[1].commit}").resolve()


def test_run_json_and_transcript_are_written_per_run(repo: Path) -> None:
    loop, *_ = build_loop(repo, "t1", {1: LR_UP}, max_experiments=1)
    loop.run()
    ledger = ledger_of(repo)
    row = ledger.rows()[1]
    record = ledger.read_record(1, g.experiment_refs(repo, "t1")[1])
    assert record.status == "keep" and record.val_bpb == pytest.approx(row.val_bpb)
    assert record.parent == g.experiment_refs(repo, "t1")[0]
    assert record.agent == "fake" and record.usage.cost_usd == pytest.approx(0.001)
    assert record.profile == "test" and record.image_id == "sha256:fake" and record.data_manifest_sha256
    assert record.timings.train == 1.0 and record.timings.total >= 0
    transcript = json.loads((ledger.row_run_dir(1, row) / "transcript.json").read_text())
    assert transcript["transcript"] == [{"role": "user", "content": "go"}]
    baseline = ledger.read_record(0, g.experiment_refs(repo, "t1")[0])
    assert baseline.agent == "seed" and baseline.description == "baseline"


def test_a_proposal_touching_other_files_is_refused_reset_and_asked_again(repo: Path) -> None:
    script = {1: [{"touch": "evaluator/score.py", "set": {"LR": 0.01}, "desc": "sneaky"}, LR_UP]}
    loop, agent, runner, observer = build_loop(repo, "t1", script, max_experiments=1)
    loop.run()
    rows = check_consistent(repo, "t1")
    assert [r.description for r in rows] == ["baseline", "LR 0.001 -> 0.01"]
    assert len(runner.specs) == 2  # the refused edit never ran
    retry = agent.contexts[1]
    assert retry.fix_attempt is not None and retry.fix_attempt.status == "refused"
    assert "evaluator/score.py" in retry.fix_attempt.log_tail
    commit = g.experiment_refs(repo, "t1")[1]
    assert git(repo, "show", "--name-only", "--format=", commit) == "programs/default/train.py"


def test_a_non_compiling_edit_is_refused_without_running(repo: Path) -> None:
    typo = {"append": "def broken(:", "desc": "typo"}
    script = {1: [typo, typo, typo, LR_UP]}
    loop, agent, runner, observer = build_loop(repo, "t1", script, max_experiments=1)
    loop.run()
    rows = check_consistent(repo, "t1")
    # 1 + max_fix_attempts (2) tries for experiment 1, all refused: dropped; then a fresh proposal.
    assert agent.calls_for[1] == 3 + 1
    assert [c.fix_attempt is None for c in agent.contexts] == [True, False, False, True]
    assert [r.description for r in rows] == ["baseline", "LR 0.001 -> 0.01"]
    assert len(runner.specs) == 2
    assert any("does not compile" in m for m in observer.messages)


def test_a_crash_goes_back_to_the_agent_with_the_log_tail_and_each_fix_is_a_row(repo: Path) -> None:
    fix_crash = {"replace": ["CRASH = 1", "FIXED = 1"], "desc": "fix the crash"}
    loop, agent, runner, _ = build_loop(repo, "t1", {1: CRASH, 2: fix_crash}, max_experiments=2)
    loop.run()
    rows = check_consistent(repo, "t1")
    assert [r.status for r in rows] == ["keep", "crash", "discard"]
    assert (rows[1].val_bpb, rows[1].memory_gb) == (0.0, 0.0)
    ctx = agent.contexts[1]
    assert ctx.fix_attempt is not None and ctx.fix_attempt.n == 1 and ctx.fix_attempt.status == "crash"
    assert "RuntimeError: boom" in ctx.fix_attempt.log_tail
    refs = g.experiment_refs(repo, "t1")
    fixed = g.file_at(repo, refs[2], "programs/default/train.py")
    assert b"FIXED = 1" in fixed and b"CRASH" not in fixed  # the fix started from the crashed version
    assert git(repo, "rev-parse", f"{refs[2]}^") == refs[0]  # and sits on the best, not on the crash
    record = ledger_of(repo).read_record(2, refs[2])
    assert (record.fix_of, record.fix_attempt) == (1, 1)


def test_fix_attempts_are_bounded_then_the_loop_moves_on(repo: Path) -> None:
    still_broken = {"append": "# still CRASH", "desc": "try again"}
    loop, agent, runner, _ = build_loop(
        repo, "t1", {1: CRASH, 2: still_broken, 3: still_broken, 4: LR_UP}, max_experiments=4
    )
    loop.run()
    rows = check_consistent(repo, "t1")
    assert [r.status for r in rows] == ["keep", "crash", "crash", "crash", "keep"]
    fixes = [(c.experiment, c.fix_attempt.n if c.fix_attempt else None) for c in agent.contexts]
    assert fixes == [(1, None), (2, 1), (3, 2), (4, None)]  # two fixes (max_fix_attempts=2), then fresh
    records = [ledger_of(repo).read_record(n, g.experiment_refs(repo, "t1")[n]) for n in (2, 3)]
    assert [(r.fix_of, r.fix_attempt) for r in records] == [(1, 1), (1, 2)]


def test_timeouts_are_not_sent_back_for_fixing(repo: Path) -> None:
    loop, agent, _, _ = build_loop(repo, "t1", {1: {"append": "TIMEOUT = 1", "desc": "slow"}}, max_experiments=2)
    loop.run()
    assert [r.status for r in check_consistent(repo, "t1")] == ["keep", "timeout", "discard"]
    assert agent.contexts[1].fix_attempt is None


def test_rejected_models_are_recorded_as_rejected(repo: Path) -> None:
    loop, *_ = build_loop(
        repo, "t1", {1: {"append": "REJECT = 1", "desc": "peeks"}}, max_experiments=1, max_fix_attempts=0
    )
    loop.run()
    rows = check_consistent(repo, "t1")
    assert rows[1].status == "rejected" and rows[1].val_bpb == 0.0
    record = ledger_of(repo).read_record(1, g.experiment_refs(repo, "t1")[1])
    assert record.reason == "future tokens changed logits"


def test_agent_errors_wait_with_backoff_and_go_on(repo: Path) -> None:
    loop, agent, _, observer = build_loop(
        repo, "t1", {1: [{"error": "529 overloaded"}, {"error": "429"}, LR_UP]}, max_experiments=1
    )
    slept: list[float] = []
    loop.d.sleep = slept.append
    loop.run()
    assert [r.status for r in check_consistent(repo, "t1")] == ["keep", "keep"]
    assert agent.calls_for[1] == 3
    assert sum(slept) == pytest.approx(10 + 20)  # capped exponential backoff: 10 s, then 20 s
    assert sum("agent error: 529 overloaded" in m for m in observer.messages) == 1


def test_a_fatal_agent_error_ends_the_night_with_a_message(repo: Path) -> None:
    class Fatal(AgentError):
        fatal = True

    loop, agent, _, _ = build_loop(repo, "t1", {}, max_experiments=3)
    agent.propose = lambda ctx: (_ for _ in ()).throw(Fatal("invalid x-api-key"))
    with pytest.raises(AgentFatalError, match="invalid x-api-key"):
        loop.run()
    assert len(check_consistent(repo, "t1")) == 1  # the baseline ran and was recorded


def test_sandbox_errors_are_retried_after_a_wait(repo: Path) -> None:
    loop, _, runner, observer = build_loop(repo, "t1", {}, max_experiments=0)
    loop.d.runner = FakeRunner(fail_first=2)
    removed: list[str] = []
    loop.d.remove_orphans = removed.append
    loop.run()
    assert [r.status for r in check_consistent(repo, "t1")] == ["keep"]
    assert sum("sandbox error: no Docker engine reachable" in m for m in observer.messages) == 2
    assert removed == ["t1", "t1", "t1"]  # at start, and after each failure


def test_max_experiments_counts_the_tags_experiments_after_the_baseline(repo: Path) -> None:
    loop, *_ = build_loop(repo, "t1", {}, max_experiments=2)
    assert loop.run().reason == "max-experiments"
    assert len(check_consistent(repo, "t1")) == 3
    loop, agent, runner, _ = build_loop(repo, "t1", {}, max_experiments=2)
    assert loop.run().reason == "max-experiments"
    assert agent.calls == 0 and runner.specs == []  # already done: nothing more runs
    loop, *_ = build_loop(repo, "t1", {}, max_experiments=4)
    loop.run()
    assert len(check_consistent(repo, "t1")) == 5


def test_the_night_ends_at_its_deadline(repo: Path) -> None:
    import datetime as dt

    loop, agent, runner, _ = build_loop(repo, "t1", {}, max_experiments=None, hours="1")
    clock = [dt.datetime(2025, 11, 23, 22, 0)]
    loop.d.now = lambda: clock[0]
    real_runner = loop.d.runner

    def runner_that_takes_25_minutes(spec):
        clock[0] += dt.timedelta(minutes=25)
        return real_runner(spec)

    loop.d.runner = runner_that_takes_25_minutes
    assert loop.run().reason == "deadline"
    assert len(check_consistent(repo, "t1")) == 3  # started at 0, 25 and 50 minutes; none after 60


def test_a_stop_request_finishes_the_experiment_in_flight(repo: Path) -> None:
    loop, agent, runner, _ = build_loop(repo, "t1", {}, max_experiments=None)
    real_runner = loop.d.runner

    def runner_then_ctrl_c(spec):
        result = real_runner(spec)
        if len(real_runner.specs) == 2:
            loop.d.stop.request()
        return result

    loop.d.runner = runner_then_ctrl_c
    assert loop.run().reason == "stopped"
    assert len(check_consistent(repo, "t1")) == 2


def test_context_holds_history_best_diff_and_failures(repo: Path) -> None:
    loop, agent, _, _ = build_loop(
        repo, "t1", {1: LR_UP, 2: CRASH, 3: LR_TOO_HIGH}, max_experiments=3, max_fix_attempts=0
    )
    loop.run()
    ctx = agent.contexts[2]
    assert ctx.experiment == 3 and ctx.tag == "t1" and ctx.profile == "test"
    assert [(h.n, h.status) for h in ctx.history] == [(0, "keep"), (1, "keep"), (2, "crash")]
    assert ctx.history[2].val_bpb is None and ctx.history[1].val_bpb is not None
    assert "-LR = 0.001" in ctx.best_diff and "+LR = 0.01" in ctx.best_diff
    assert [f.n for f in ctx.failures] == [2] and "boom" in ctx.failures[0].log_tail
    assert ctx.program_md.startswith("# toy program")
    assert ctx.train_py == (repo / "worktrees" / "t1" / "programs/default/train.py").resolve()
    assert ctx.runs_dir == (repo / "runs" / "t1").resolve()


def test_the_search_agent_is_not_asked_to_fix_crashes(repo: Path) -> None:
    loop, agent, _, _ = build_loop(repo, "t1", {1: CRASH}, max_experiments=2)
    agent.can_fix_crashes = False
    loop.run()
    assert agent.contexts[1].fix_attempt is None


def test_resuming_a_tag_takes_its_program_and_profile_and_refuses_others(repo: Path) -> None:
    loop, *_ = build_loop(repo, "t1", {}, max_experiments=0)
    loop.run()
    base = dict(tag="t1", repo=repo, runs_dir=repo / "runs")
    resumed = resume_settings(load_settings(**base))
    assert resumed.profile == "test" and resumed.data_dir == repo / "data"
    with pytest.raises(SetupError, match="tag t1 was started with profile test, not cpu"):
        resume_settings(load_settings(**base, profile="cpu"))


def test_a_new_tag_refuses_an_existing_branch(repo: Path) -> None:
    git(repo, "branch", "autoresearch/t9")
    loop, *_ = build_loop(repo, "t9", {}, max_experiments=0)
    with pytest.raises(SetupError, match="branch autoresearch/t9 exists"):
        loop.run()


def test_one_controller_per_tag(repo: Path) -> None:
    loop, *_ = build_loop(repo, "t1", {}, max_experiments=0)
    with tag_lock(repo / "runs" / "t1"):
        with pytest.raises(SetupError, match="another controller is running tag t1"):
            loop.run()


def test_uncommitted_changes_in_the_users_checkout_are_not_used(repo: Path) -> None:
    (repo / "programs/default/train.py").write_text("LR = 123\n")
    loop, _, _, observer = build_loop(repo, "t1", {}, max_experiments=0)
    loop.run()
    assert any("uncommitted changes" in m for m in observer.messages)
    run_dir = ledger_of(repo).row_run_dir(0, ledger_of(repo).rows()[0])
    assert b"LR = 0.001" in (run_dir / "train.py").read_bytes()
    assert (repo / "programs/default/train.py").read_text() == "LR = 123\n"  # untouched


def test_a_hard_stop_is_not_mistaken_for_a_sandbox_error(repo: Path) -> None:
    """A second Ctrl-C raises KeyboardInterrupt inside the runner; if the sandbox's cleanup replaces
    it with its own exception on the way up, the loop still stops instead of retrying."""
    loop, _, _, observer = build_loop(repo, "t1", {}, max_experiments=3)

    def runner_interrupted_during_cleanup(spec):
        loop.d.stop.request_now()
        try:
            raise KeyboardInterrupt
        finally:
            raise ConnectionError("409 removal already in progress")  # noqa: B012

    loop.d.runner = runner_interrupted_during_cleanup
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    assert not any("sandbox error" in m for m in observer.messages)
    journal = ledger_of(repo).read_journal()
    assert ledger_of(repo).rows() == [] and [p.n for p in journal.pending] == [0]  # redone on resume
