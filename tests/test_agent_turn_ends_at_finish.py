"""The agent's turn ends at `finish` (and at `give_up`): tool calls after a successful one in the same
assistant turn are refused, not run, and the proposal is train.py as it was at finish. A finish
that failed (train.py does not compile) ends nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.agents.base import Failure, FixDeclined
from tests.agent_support import TRAIN_PY, agent, context, workspace
from tests.fake_anthropic import FakeAnthropic, Reply, tool_use

API_KEY = "test-key"


@pytest.fixture
def fake():
    with FakeAnthropic(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def ws(tmp_path: Path) -> dict[str, Path]:
    return workspace(tmp_path)


def test_tool_calls_after_finish_in_the_same_turn_are_refused_not_run(fake: FakeAnthropic, ws: dict[str, Path]) -> None:
    fake.enqueue(
        Reply(
            [
                tool_use("edit_train_py", {"old_str": "LR = 0.02", "new_str": "LR = 0.03"}),
                tool_use("finish", {"description": "LR 0.02 -> 0.03"}),
                tool_use("write_train_py", {"content": "print('not what was finished')\n"}),
                tool_use("edit_train_py", {"old_str": "LR = 0.03", "new_str": "LR = 9.0"}),
                tool_use("update_notebook", {"section": "Sneaky", "text": "written after finish"}),
            ]
        )
    )
    proposal = agent(fake).propose(context(ws))

    assert len(fake.message_requests()) == 1
    assert proposal.description == "LR 0.02 -> 0.03"
    assert ws["train_py"].read_text() == TRAIN_PY.replace("LR = 0.02", "LR = 0.03")  # as it was at finish
    assert not (ws["runs"] / "notebook.md").exists()
    results = proposal.transcript[-1]["content"]
    assert [r["is_error"] for r in results] == [False, False, True, True, True]
    assert all("not run: finish ended this proposal" in r["content"] for r in results[2:])


def test_a_finish_that_failed_does_not_end_the_turn(fake: FakeAnthropic, ws: dict[str, Path]) -> None:
    fake.enqueue(
        Reply(
            [
                tool_use("edit_train_py", {"old_str": "LR = 0.02", "new_str": "LR = (0.03"}),
                tool_use("finish", {"description": "LR up"}),
                tool_use("edit_train_py", {"old_str": "LR = (0.03", "new_str": "LR = 0.03"}),
                tool_use("finish", {"description": "LR up, fixed"}),
            ]
        )
    )
    proposal = agent(fake).propose(context(ws))
    assert proposal.description == "LR up, fixed"
    assert [r["is_error"] for r in proposal.transcript[-1]["content"]] == [False, True, False, False]
    assert ws["train_py"].read_text() == TRAIN_PY.replace("LR = 0.02", "LR = 0.03")


def test_give_up_ends_the_turn_too(fake: FakeAnthropic, ws: dict[str, Path]) -> None:
    fix = Failure(n=1, description="DEPTH 4 -> 2", status="crash", log_tail="CUDA out of memory")
    fake.enqueue(
        Reply(
            [
                tool_use("give_up", {"reason": "out of memory: the idea needs a smaller model"}),
                tool_use("edit_train_py", {"old_str": "LR = 0.02", "new_str": "LR = 0.5"}),
            ]
        )
    )
    with pytest.raises(FixDeclined) as caught:
        agent(fake).propose(context(ws, fix_attempt=fix))
    assert caught.value.reason == "out of memory: the idea needs a smaller model"
    assert ws["train_py"].read_text() == TRAIN_PY
    results = caught.value.transcript[-1]["content"]  # type: ignore[attr-defined]
    assert [r["is_error"] for r in results] == [False, True]
    assert "not run: give_up ended" in results[1]["content"]
    assert len(fake.message_requests()) == 1
