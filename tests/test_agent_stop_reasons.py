"""Every stop reason of the Messages API has a defined outcome (real `anthropic` client, fake API):
a turn cut at max_tokens is continued (a tool call cut off mid-way is never run), up to a bound;
a refusal fails the proposal (or gives a fix up); pause_turn continues; a full context window
fails; stop_sequence and values not known yet count as the end of the turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.agents import is_fatal
from controller.agents.anthropic_agent import CUT_NOTE, NUDGE_NO_FINISH, PAUSE_NOTE
from controller.agents.base import AgentError, Failure, FixDeclined
from tests.agent_support import TRAIN_PY, agent, context, edit_and_finish, tool_results, workspace
from tests.fake_anthropic import FakeAnthropic, Reply, refusal, text, tool_use

API_KEY = "test-key"


@pytest.fixture
def fake():
    with FakeAnthropic(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def ws(tmp_path: Path) -> dict[str, Path]:
    return workspace(tmp_path)


def test_a_turn_cut_at_max_tokens_in_its_text_is_continued(fake: FakeAnthropic, ws: dict[str, Path]) -> None:
    fake.enqueue(Reply([text("The learning rate looks low because")], stop_reason="max_tokens"), *edit_and_finish())
    proposal = agent(fake, max_tokens=1000).propose(context(ws))

    assert proposal.description == "LR 0.02 -> 0.03" and proposal.usage.continuations == 1
    second = fake.message_requests()[1].body
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"][0]["text"] == "The learning rate looks low because"  # sent back as it was
    note = second["messages"][2]["content"][0]["text"]
    assert note.startswith(CUT_NOTE) and "Continue from where you stopped" in note
    assert second["max_tokens"] == 2000  # raised for the continuation


def test_a_tool_call_cut_off_mid_way_is_dropped_not_run_and_the_model_is_told(
    fake: FakeAnthropic, ws: dict[str, Path]
) -> None:
    fake.enqueue(
        Reply(
            [
                text("Rewriting."),
                tool_use("view_train_py", {"start_line": 4, "end_line": 4}, id="toolu_view"),
                tool_use("write_train_py", {"content": "import torch\n# half a fi"}, id="toolu_cut"),
            ],
            stop_reason="max_tokens",
        ),
        *edit_and_finish(),
    )
    proposal = agent(fake).propose(context(ws))

    assert proposal.description == "LR 0.02 -> 0.03"
    assert ws["train_py"].read_text() == TRAIN_PY.replace("LR = 0.02", "LR = 0.03")  # the cut write never ran
    second = fake.message_requests()[1].body
    echoed = second["messages"][1]["content"]
    assert [b.get("id") for b in echoed if b["type"] == "tool_use"] == ["toolu_view"]  # the cut call is not sent back
    (view,) = tool_results(second)
    assert view["tool_use_id"] == "toolu_view" and not view["is_error"] and "LR = 0.02" in view["content"]
    note = second["messages"][-1]["content"][-1]
    assert note["type"] == "text" and "write_train_py" in note["text"] and "NOT run" in note["text"]


def test_a_reply_longer_than_max_tokens_is_cut_by_the_api_and_the_turn_retried_larger(
    fake: FakeAnthropic, ws: dict[str, Path]
) -> None:
    """The fake cuts like the API: the long write comes back cut off, with stop_reason max_tokens."""
    long_file = TRAIN_PY + "# " + "x" * 3000 + "\n"
    write = Reply([tool_use("write_train_py", {"content": long_file})])  # about 780 tokens
    fake.enqueue(write, write, write, Reply([tool_use("finish", {"description": "a long comment"})]))
    proposal = agent(fake, max_tokens=300).propose(context(ws))

    requests = fake.message_requests()
    assert [r.body["max_tokens"] for r in requests] == [300, 600, 1200, 1200]
    assert proposal.usage.continuations == 2
    assert proposal.description == "a long comment" and ws["train_py"].read_text() == long_file


def test_continuations_are_bounded(ws: dict[str, Path]) -> None:
    with FakeAnthropic(api_key=API_KEY, default=Reply([text("and so on")], stop_reason="max_tokens")) as looping:
        looping.enqueue(Reply([tool_use("edit_train_py", {"old_str": "LR = 0.02", "new_str": "LR = 0.5"})]))
        with pytest.raises(AgentError, match="cut at max_tokens more than 2 times") as caught:
            agent(looping, max_continuations=2).propose(context(ws))
        assert len(looping.message_requests()) == 4
    assert not is_fatal(caught.value) and caught.value.usage.continuations == 3  # type: ignore[attr-defined]
    assert ws["train_py"].read_text() == TRAIN_PY  # the edit is undone


def test_a_refusal_fails_a_fresh_proposal_and_restores_train_py(fake: FakeAnthropic, ws: dict[str, Path]) -> None:
    fake.enqueue(
        Reply([tool_use("edit_train_py", {"old_str": "LR = 0.02", "new_str": "LR = 0.3"})]),
        refusal("I can't help with that."),
    )
    with pytest.raises(AgentError, match="refused") as caught:
        agent(fake).propose(context(ws))
    assert not isinstance(caught.value, FixDeclined) and not is_fatal(caught.value)
    assert len(fake.message_requests()) == 2  # the refused conversation is not asked again
    assert ws["train_py"].read_text() == TRAIN_PY
    assert "I can't help with that." in str(caught.value.transcript)  # type: ignore[attr-defined]


def test_a_refusal_on_a_fix_request_gives_the_fix_up(fake: FakeAnthropic, ws: dict[str, Path]) -> None:
    fix = Failure(n=1, description="DEPTH 4 -> 2", status="crash", log_tail="RuntimeError: boom")
    fake.enqueue(refusal())
    with pytest.raises(FixDeclined, match="refused"):
        agent(fake).propose(context(ws, fix_attempt=fix))


def test_pause_turn_is_continued(fake: FakeAnthropic, ws: dict[str, Path]) -> None:
    fake.enqueue(Reply([text("Checking.")], stop_reason="pause_turn"), *edit_and_finish())
    proposal = agent(fake).propose(context(ws))
    assert proposal.description == "LR 0.02 -> 0.03" and proposal.usage.continuations == 1
    assert fake.message_requests()[1].body["messages"][-1]["content"][0]["text"].startswith(PAUSE_NOTE)


def test_a_full_context_window_fails_the_proposal(fake: FakeAnthropic, ws: dict[str, Path]) -> None:
    fake.enqueue(Reply([text("...")], stop_reason="model_context_window_exceeded"))
    with pytest.raises(AgentError, match="context window"):
        agent(fake).propose(context(ws))


@pytest.mark.parametrize("stop", ["end_turn", "stop_sequence", "a_reason_added_later"])
def test_other_stop_reasons_end_the_turn_and_get_one_reminder(
    fake: FakeAnthropic, ws: dict[str, Path], stop: str
) -> None:
    fake.enqueue(Reply([text("Thinking about it.")], stop_reason=stop), *edit_and_finish())
    proposal = agent(fake).propose(context(ws))
    assert proposal.description == "LR 0.02 -> 0.03"
    assert fake.message_requests()[1].body["messages"][-1]["content"][0]["text"] == NUDGE_NO_FINISH
