"""One hostile run never stops the night: descriptions with escapes, NUL, lone surrogates and rich
markup are cleaned before git, the TSV, the terminal and JSON; a sandbox that raises something
unexpected (a cleanup that overflows the stack) is that experiment's crash; the night goes on with
a row for every experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from controller_fakes import FakeRunner, build_loop, check_consistent, git, make_repo
from rich.console import Console

from controller.status import ledger_table
from sandbox.result import ExperimentResult, ExperimentSpec

HOSTILE_DESCRIPTIONS = [
    "\x1b[2J\x1b[1;1Hkeep\tforged\n0000000\t0.1\t0.0\tkeep\tforged row",
    "nul\x00in the middle",
    "a lone surrogate \ud800 here",
    "[bold red]markup[/] and [link=file:///etc/passwd]a link[/link]",
    "\u202eright-to-left override\u202c and \x9b2J",
]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


class CleanupRaises(FakeRunner):
    """The second experiment's run ends in an exception nobody foresaw (once: a recursive
    cleanup of a deep folder chain raised RecursionError and the loop retried it forever)."""

    def __call__(self, spec: ExperimentSpec) -> ExperimentResult:
        if spec.labels.get("overnight.experiment") == "2":
            super().__call__(spec)
            raise RecursionError("maximum recursion depth exceeded while removing out/")
        return super().__call__(spec)


def test_hostile_descriptions_and_a_raising_cleanup_leave_a_row_each_and_the_night_goes_on(repo: Path) -> None:
    script = {n + 1: {"set": {"WIDTH": 64 + n + 1}, "desc": text} for n, text in enumerate(HOSTILE_DESCRIPTIONS)}
    loop, agent, _, observer = build_loop(repo, "t1", script, max_experiments=len(HOSTILE_DESCRIPTIONS))
    loop.d.runner = CleanupRaises()
    summary = loop.run()
    assert summary.reason == "max-experiments"
    rows = check_consistent(repo, "t1")  # the branch and the refs agree with the ledger
    assert len(rows) == 1 + len(HOSTILE_DESCRIPTIONS)
    assert rows[2].status == "crash"
    record = json.loads((loop.ledger.row_run_dir(2, rows[2]) / "run.json").read_text())
    assert record["reason"].startswith("the sandbox failed on this experiment (RecursionError)")
    assert agent.calls == len(HOSTILE_DESCRIPTIONS)  # each proposal asked once: no loop on one experiment

    text = (repo / "runs" / "t1" / "results.tsv").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) == 2 + len(HOSTILE_DESCRIPTIONS)  # header + baseline + one per experiment: no forged row
    for line in lines[1:]:
        cells = line.split("\t")
        assert len(cells) == 10 and cells[4].isprintable(), repr(line)
        assert "\x1b" not in line and "\x00" not in line and "\u202e" not in line and "\x9b" not in line
    text.encode("utf-8", "strict")  # no lone surrogate reached the file
    log = git(repo, "log", "--format=%B", "autoresearch/t1")
    assert "\x1b" not in log and "\x00" not in log
    for n in range(1, len(rows)):
        run_json = (loop.ledger.row_run_dir(n, rows[n]) / "run.json").read_text(encoding="utf-8")
        assert json.loads(run_json)["description"].isprintable()

    console = Console(record=True, width=200, color_system=None)
    console.print(ledger_table("t1", loop.ledger.rows()))  # rich markup is not interpreted, and it does not raise
    shown = console.export_text()
    assert "[bold red]markup[/]" in shown and "\x1b" not in shown


def test_an_unexpected_error_while_recording_is_that_experiments_crash(repo: Path, monkeypatch) -> None:
    loop, *_ = build_loop(repo, "t1", {}, max_experiments=2)
    real = loop._record_run
    calls = {"n": 0}

    def flaky_record(pending, task, slot, result, started, t0):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if pending.n == 1 and calls["n"] == 2:  # the first try of experiment 1 (after the baseline)
            raise ValueError("a record nobody foresaw")
        return real(pending, task, slot, result, started, t0)

    monkeypatch.setattr(loop, "_record_run", flaky_record)
    summary = loop.run()
    rows = check_consistent(repo, "t1")
    assert summary.reason == "max-experiments" and len(rows) == 3
    assert rows[1].status == "crash"
    reason = json.loads((loop.ledger.row_run_dir(1, rows[1]) / "run.json").read_text())["reason"]
    assert reason.startswith("internal error (ValueError)")


def test_infrastructure_errors_stop_the_night_after_a_bound_with_what_to_do(repo: Path) -> None:
    from controller.loop import INFRA_ATTEMPTS, InfrastructureError

    loop, _, _, observer = build_loop(repo, "t1", {}, max_experiments=3)
    loop.d.runner = FakeRunner(fail_first=10_000)  # the engine never comes back
    with pytest.raises(InfrastructureError, match="the sandbox failed 6 times in a row"):
        loop.run()
    assert INFRA_ATTEMPTS == 6
    assert sum("sandbox error" in m for m in observer.messages) == INFRA_ATTEMPTS - 1
    assert loop.ledger.rows() == []  # nothing recorded for the run that never ran...
    journal = loop.ledger.read_journal()
    assert journal is not None and [p.n for p in journal.pending] == [0]  # ...a resume redoes it
    assert journal.pending[0].replicates == []
