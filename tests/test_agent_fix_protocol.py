"""The fix protocol: asked to fix a broken experiment, the agent may give up on it with a reason. The
reason is recorded next to the failed run (fix-declined.json) and in the controller log, and the
loop goes straight on to a fresh proposal from the best: it never asks for that fix again, not even
after a restart. (Before, a decline was an agent error and the same fix request was retried with
growing backoff, forever.)"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from controller.agents.base import Failure, FixDeclined
from controller.ledger import Ledger
from controller.loop import AgentFatalError
from controller.records import FIX_DECLINED_JSON, FixDeclinedRecord
from controller.status import ConsoleObserver
from tests.agent_support import (
    TRAIN_PY,
    agent,
    agent_night,
    context,
    controller_log,
    edit_and_finish,
    tool_results,
    workspace,
)
from tests.fake_anthropic import Error, FakeAnthropic, Reply, text, tool_use

API_KEY = "test-key"
CRASHING = [
    Reply([tool_use("edit_train_py", {"old_str": "WIDTH = 64", "new_str": "WIDTH = 96\nCRASH = 1"})]),
    Reply([tool_use("finish", {"description": "WIDTH 64 -> 96 (crashes)"})]),
]
GIVE_UP = Reply(
    [
        text("The idea cannot work."),
        tool_use("give_up", {"reason": "out of memory at this width;\tneeds\na smaller model"}),
    ]
)


def fresh_change(old: str, new: str, description: str) -> list[Reply]:
    return [
        Reply([tool_use("edit_train_py", {"old_str": old, "new_str": new})]),
        Reply([tool_use("finish", {"description": description})]),
    ]


@pytest.fixture
def fake():
    with FakeAnthropic(api_key=API_KEY) as server:
        yield server


# --- the agent ---------------------------------------------------------------------------------


def test_give_up_on_a_fix_request_declines_it_with_a_one_line_reason(fake: FakeAnthropic, tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    ws["train_py"].write_text(TRAIN_PY + "CRASH = 1\n")  # the crashed version the fix starts from
    fix = Failure(n=1, description="DEPTH 4 -> 2", status="crash", log_tail="RuntimeError: CUDA out of memory")
    fake.enqueue(Reply([tool_use("edit_train_py", {"old_str": "DEPTH = 4", "new_str": "DEPTH = 3"})]), GIVE_UP)
    with pytest.raises(FixDeclined) as caught:
        agent(fake).propose(context(ws, fix_attempt=fix, failures=[fix]))
    assert caught.value.reason == "out of memory at this width; needs a smaller model"
    assert ws["train_py"].read_text() == TRAIN_PY + "CRASH = 1\n"  # the half-made fix is undone
    opening = fake.message_requests()[0].body["messages"][0]["content"][0]["text"]
    assert "Fix request" in opening and "give_up" in opening


def test_give_up_without_a_fix_request_is_refused_and_the_proposal_goes_on(fake: FakeAnthropic, tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    fake.enqueue(Reply([tool_use("give_up", {"reason": "nothing to do"})]), *edit_and_finish())
    proposal = agent(fake).propose(context(ws))
    assert proposal.description == "LR 0.02 -> 0.03"
    (refused,) = tool_results(fake.message_requests()[1].body)
    assert refused["is_error"] and "only for a fix request" in refused["content"]


def test_stopping_twice_without_a_fix_counts_as_giving_up(fake: FakeAnthropic, tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    fix = Failure(n=1, description="DEPTH 4 -> 2", status="crash", log_tail="NaN loss")
    fake.enqueue(Reply([text("This diverges whatever the LR.")]), Reply([text("It diverges; I would not fix it.")]))
    with pytest.raises(FixDeclined, match="stopped without a fix: It diverges; I would not fix it."):
        agent(fake).propose(context(ws, fix_attempt=fix))
    assert "give_up" in fake.message_requests()[1].body["messages"][-1]["content"][0]["text"]  # the reminder says how


# --- the loop ----------------------------------------------------------------------------------


def test_a_declined_fix_is_recorded_and_the_loop_moves_on_to_a_fresh_proposal(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    buf = io.StringIO()
    observer = ConsoleObserver(Console(file=buf, width=200), "night", [], None, 2)
    fake.enqueue(*CRASHING, GIVE_UP, *fresh_change("LR = 0.001", "LR = 0.01", "LR 0.001 -> 0.01"))
    with controller_log(tmp_path / "repo" / "runs" / "night") as log_path:  # before the loop, as the CLI does
        loop, runner, sleeps = agent_night(tmp_path, fake, max_experiments=2, observer=observer)
        summary = loop.run()

    assert fake.pending == 0
    assert [r.status for r in summary.rows] == ["keep", "crash", "keep"]  # #2 ran from the best, not the crash
    requests = fake.message_requests()
    openings = [r.body["messages"][0]["content"][0]["text"] for r in requests if len(r.body["messages"]) == 1]
    assert ["Fix request" in o for o in openings] == [False, True, False]  # one fix request, then a fresh proposal
    assert sleeps == []  # no backoff: a decline is not an error
    assert len(runner.specs) == 3  # baseline, the crash, the fresh proposal; nothing ran for the decline

    ledger = Ledger(loop.s.tag_dir)
    rows = ledger.rows()
    record = FixDeclinedRecord.model_validate_json((ledger.row_run_dir(1, rows[1]) / FIX_DECLINED_JSON).read_text())
    assert record.n == 1 and record.fix_attempt == 1
    assert record.reason == "out of memory at this width; needs a smaller model"
    assert record.usage.api_calls == 1 and record.transcript
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    (declined,) = [e for e in events if e["event"] == "fix_declined"]
    assert declined["n"] == 1 and declined["reason"] == record.reason
    assert "#1: the agent gave up fixing it: out of memory" in buf.getvalue()


def test_a_restart_after_a_decline_does_not_ask_for_that_fix_again(fake: FakeAnthropic, tmp_path: Path) -> None:
    # The night ends (a bad key, say) right after the decline, before the fresh proposal runs.
    fake.enqueue(*CRASHING, GIVE_UP, Error(401, "authentication_error", "invalid x-api-key"))
    loop, _, _ = agent_night(tmp_path, fake, max_experiments=3)
    with pytest.raises(AgentFatalError):
        loop.run()
    asked = len(fake.message_requests())

    fake.enqueue(*fresh_change("LR = 0.001", "LR = 0.01", "LR 0.001 -> 0.01"))
    loop, _, _ = agent_night(tmp_path, fake, max_experiments=2)
    summary = loop.run()
    resumed = fake.message_requests()[asked:]
    assert "Fix request" not in resumed[0].body["messages"][0]["content"][0]["text"]
    assert [r.description for r in summary.rows] == ["baseline", "WIDTH 64 -> 96 (crashes)", "LR 0.001 -> 0.01"]


def test_five_declines_in_a_row_cost_five_fix_requests_not_an_endless_retry(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    """Each crash is asked about once; a decline is never repeated (the issue's trace: 5 declines
    led to 6 identical fix requests and 310 s of idle GPU)."""
    for _ in range(5):
        fake.enqueue(*CRASHING, GIVE_UP)
    loop, _, sleeps = agent_night(tmp_path, fake, max_experiments=5)
    summary = loop.run()
    fixes = [
        r
        for r in fake.message_requests()
        if len(r.body["messages"]) == 1 and "Fix request" in r.body["messages"][0]["content"][0]["text"]
    ]
    assert len(fixes) == 4  # crashes 1-4 were each asked about once; the 5th ended the night
    assert [r.status for r in summary.rows[1:]] == ["crash"] * 5 and sleeps == []
