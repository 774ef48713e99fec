"""The `anthropic` agent, driven for real through the `anthropic` client against a fake Messages API
on loopback (tests/fake_anthropic.py) that speaks the real wire format."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from controller.agents import AgentConfigError, is_fatal, make_agent
from controller.agents.anthropic_agent import NUDGE_NO_FINISH, AnthropicAgent, AnthropicSettings
from controller.agents.base import AgentError, Failure, HistoryRow, ProposalContext
from controller.agents.pricing import PRICES
from controller.agents.tools import MAX_LOG_TAIL_BYTES, MAX_TRAIN_PY_BYTES
from tests.fake_anthropic import (
    FakeAnthropic,
    Raw,
    Reply,
    Slow,
    overloaded,
    rate_limited,
    server_error,
    text,
    tool_use,
)

API_KEY = "test-key"
PROGRAM_MD = "# program: test\nMake val_bpb low. MARKER-PROGRAM-7f3a"
TRAIN_PY = """\
import torch
from evaluator import submit

LR = 0.02  # learning rate
DEPTH = 4  # layers

model = torch.nn.Linear(DEPTH, DEPTH)
submit(model)
"""
TOOL_NAMES = [
    "view_train_py",
    "edit_train_py",
    "write_train_py",
    "read_history",
    "history_summary",
    "search_history",
    "show_experiment",
    "read_run_log",
    "update_notebook",
    "give_up",
    "finish",
]


@pytest.fixture
def fake():
    with FakeAnthropic(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, Path]:
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    (worktree / "train.py").write_text(TRAIN_PY)
    runs = tmp_path / "runs" / "night"
    for n in (0, 1):
        run_dir = runs / f"{n:04d}"
        run_dir.mkdir(parents=True)
        (run_dir / "train.log").write_text("".join(f"step {i} loss {5 - i / 100:.3f}\n" for i in range(300)))
        (run_dir / "eval.log").write_text(f"val_bpb: 1.{n}00\n")
    return {"root": tmp_path, "train_py": worktree / "train.py", "runs": runs}


def history(runs: Path) -> list[HistoryRow]:
    return [
        HistoryRow(
            n=0,
            commit="aaaaaaa",
            val_bpb=1.25,
            memory_gb=0.5,
            status="keep",
            description="baseline",
            run_dir=runs / "0000",
        ),
        HistoryRow(
            n=1,
            commit="bbbbbbb",
            val_bpb=1.31,
            memory_gb=0.5,
            status="discard",
            description="DEPTH 4 -> 2",
            run_dir=runs / "0001",
        ),
    ]


def make_context(ws: dict[str, Path], experiment: int = 2, **overrides: Any) -> ProposalContext:
    fields: dict[str, Any] = dict(
        tag="night",
        experiment=experiment,
        train_py=ws["train_py"],
        program_md=PROGRAM_MD,
        profile="test",
        history=history(ws["runs"]),
        best_diff="--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-LR = 0.01\n+LR = 0.02\n",
        runs_dir=ws["runs"],
    )
    fields.update(overrides)
    return ProposalContext(**fields)


def make(fake: FakeAnthropic, sleeps: list[float] | None = None, **settings: Any) -> AnthropicAgent:
    defaults: dict[str, Any] = dict(
        api_key=API_KEY,
        base_url=fake.url,
        request_timeout_s=5.0,
        patience_s=10.0,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )
    defaults.update(settings)
    if sleeps is None:
        return AnthropicAgent(AnthropicSettings(**defaults))
    return AnthropicAgent(AnthropicSettings(**defaults), sleep=sleeps.append)


def edit_and_finish(description: str = "LR 0.02 -> 0.03") -> list[Reply]:
    return [
        Reply([tool_use("edit_train_py", {"old_str": "LR = 0.02", "new_str": "LR = 0.03"})]),
        Reply([text("Done."), tool_use("finish", {"description": description})]),
    ]


def tool_results(request_body: dict[str, Any]) -> list[dict[str, Any]]:
    last = request_body["messages"][-1]
    assert last["role"] == "user"
    return [b for b in last["content"] if b["type"] == "tool_result"]


# --- a whole proposal -------------------------------------------------------------------------


def test_scripted_session_views_edits_and_finishes(fake: FakeAnthropic, workspace: dict[str, Path]) -> None:
    usages = [
        {"input_tokens": 1200, "output_tokens": 80, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 0},
        {
            "input_tokens": 300,
            "output_tokens": 120,
            "cache_creation_input_tokens": 400,
            "cache_read_input_tokens": 3000,
        },
        {"input_tokens": 150, "output_tokens": 40, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 3400},
    ]
    fake.enqueue(
        Reply(
            [text("Let me look."), tool_use("view_train_py", {"start_line": 4, "end_line": 5}, id="toolu_view")],
            usage=usages[0],
        ),
        Reply(
            [tool_use("edit_train_py", {"old_str": "LR = 0.02", "new_str": "LR = 0.03"}, id="toolu_edit")],
            usage=usages[1],
        ),
        Reply([tool_use("finish", {"description": "LR 0.02 -> 0.03\tfaster\nwarmup"})], usage=usages[2]),
    )
    proposal = make(fake).propose(make_context(workspace))

    assert workspace["train_py"].read_text() == TRAIN_PY.replace("LR = 0.02", "LR = 0.03")
    assert proposal.description == "LR 0.02 -> 0.03 faster warmup"
    u = proposal.usage
    assert (u.input_tokens, u.output_tokens) == (1650, 240)
    assert (u.cache_creation_input_tokens, u.cache_read_input_tokens) == (3600, 6400)
    assert (u.api_calls, u.retries) == (3, 0)
    price = PRICES["claude-sonnet-5-5"]
    expected = (1650 * price.input + 240 * price.output + 3600 * price.cache_write + 6400 * price.cache_read) / 1e6
    assert u.cost_usd == pytest.approx(expected)

    requests = fake.message_requests()
    assert len(requests) == 3
    first = requests[0].body
    assert first["model"] == "claude-sonnet-5-5"
    assert [t["name"] for t in first["tools"]] == TOOL_NAMES
    assert not any("cache_control" in t for t in first["tools"])  # the system breakpoint covers them (tools come first)
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}  # the test profile: 5-minute lifetime
    assert "MARKER-PROGRAM-7f3a" in first["system"][0]["text"]
    opening = first["messages"][0]["content"][0]["text"]
    assert "Experiment 2" in opening and "DEPTH 4 -> 2" in opening and "+LR = 0.02" in opening
    # the view result went back to the model with line numbers
    (view_result,) = tool_results(requests[1].body)
    assert view_result["tool_use_id"] == "toolu_view" and not view_result["is_error"]
    assert view_result["content"] == "4| LR = 0.02  # learning rate\n5| DEPTH = 4  # layers"
    (edit_result,) = tool_results(requests[2].body)
    assert "LR = 0.03" in edit_result["content"] and not edit_result["is_error"]
    # the key travels only in the auth header, never in a body or the transcript
    for r in requests:
        assert API_KEY in (r.headers.get("x-api-key"), r.headers.get("authorization", "").removeprefix("Bearer "))
        assert API_KEY.encode() not in r.raw
        assert r.headers["x-stainless-retry-count"] == "0"
    dumped = json.dumps(proposal.transcript)
    assert API_KEY not in dumped
    assert proposal.transcript[0]["role"] == "system"
    assert any(m["role"] == "assistant" for m in proposal.transcript)


def test_a_crash_to_fix_is_put_to_the_model_with_its_log_tail(fake: FakeAnthropic, workspace: dict[str, Path]) -> None:
    fix = Failure(n=2, description="add dropout", status="crash", log_tail="NameError: name 'drop' is not defined")
    fake.enqueue(*edit_and_finish("add dropout (fixed NameError)"))
    proposal = make(fake).propose(make_context(workspace, fix_attempt=fix, failures=[fix]))
    assert proposal.description == "add dropout (fixed NameError)"
    opening = fake.message_requests()[0].body["messages"][0]["content"][0]["text"]
    assert "Fix request" in opening and "NameError: name 'drop' is not defined" in opening


# --- retries --------------------------------------------------------------------------------


def test_rate_limit_then_overload_then_success(fake: FakeAnthropic, workspace: dict[str, Path]) -> None:
    fake.enqueue(rate_limited(retry_after="7"), overloaded(), *edit_and_finish())
    sleeps: list[float] = []
    proposal = make(fake, sleeps=sleeps).propose(make_context(workspace))
    assert proposal.description == "LR 0.02 -> 0.03"
    assert proposal.usage.retries == 2 and proposal.usage.api_calls == 2
    assert sleeps[0] == 7.0  # retry-after honoured
    assert 0 <= sleeps[1] <= 0.05  # then jittered exponential backoff, capped
    assert len(fake.message_requests()) == 4


def test_server_error_and_a_slow_response_are_retried(fake: FakeAnthropic, workspace: dict[str, Path]) -> None:
    first, second = edit_and_finish()
    fake.enqueue(server_error(), Slow(5.0, then=first), first, second)
    t0 = time.monotonic()
    proposal = make(fake, request_timeout_s=0.5).propose(make_context(workspace))
    assert proposal.usage.retries == 2
    assert time.monotonic() - t0 < 4.0  # gave up on the slow one at the timeout, did not wait it out
    assert workspace["train_py"].read_text().count("LR = 0.03") == 1


def test_a_body_that_is_not_json_is_retried_like_a_server_error(
    fake: FakeAnthropic, workspace: dict[str, Path]
) -> None:
    fake.enqueue(Raw(502, b"<html>bad gateway</html>", {"content-type": "text/html"}), *edit_and_finish())
    proposal = make(fake).propose(make_context(workspace))
    assert proposal.usage.retries == 1


def test_api_down_beyond_patience_raises_agent_error(workspace: dict[str, Path]) -> None:
    with FakeAnthropic(api_key=API_KEY, default=overloaded()) as down:
        agent = make(down, patience_s=0.4)
        t0 = time.monotonic()
        with pytest.raises(AgentError, match="unavailable") as caught:
            agent.propose(make_context(workspace))
        assert time.monotonic() - t0 < 3.0
        assert not is_fatal(caught.value)
        assert caught.value.usage.retries >= 2  # type: ignore[attr-defined]
        assert len(down.message_requests()) == caught.value.usage.retries + 1  # type: ignore[attr-defined]
    assert workspace["train_py"].read_text() == TRAIN_PY


def test_connection_refused_beyond_patience_raises_agent_error(workspace: dict[str, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = AnthropicAgent(
        AnthropicSettings(
            api_key=API_KEY,
            base_url=f"http://127.0.0.1:{port}",
            patience_s=0.3,
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
        )
    )
    with pytest.raises(AgentError, match="unreachable") as caught:
        agent.propose(make_context(workspace))
    assert caught.value.usage.retries >= 1  # type: ignore[attr-defined]


def test_a_bad_api_key_is_fatal_and_not_retried(fake: FakeAnthropic, workspace: dict[str, Path]) -> None:
    with pytest.raises(AgentError, match="401") as caught:
        make(fake, api_key="wrong-key").propose(make_context(workspace))
    assert is_fatal(caught.value)
    assert len(fake.message_requests()) == 1


# --- tool calls -------------------------------------------------------------------------------


def test_malformed_tool_calls_get_error_results_and_the_session_goes_on(
    fake: FakeAnthropic, workspace: dict[str, Path]
) -> None:
    fake.enqueue(
        Reply(
            [
                tool_use("run_shell", {"cmd": "cat /etc/passwd"}),
                tool_use("edit_train_py", {"old": "LR"}),
                tool_use("view_train_py", "not an object"),
                tool_use("edit_train_py", {"old_str": "NOT IN FILE", "new_str": "x"}),
                tool_use("edit_train_py", {"old_str": "= ", "new_str": "="}),
                tool_use("view_train_py", {"start_line": "3"}),
            ]
        ),
        *edit_and_finish(),
    )
    proposal = make(fake).propose(make_context(workspace))
    assert proposal.description == "LR 0.02 -> 0.03"
    results = tool_results(fake.message_requests()[1].body)
    assert len(results) == 6 and all(r["is_error"] for r in results)
    messages = [r["content"] for r in results]
    assert "unknown tool 'run_shell'" in messages[0] and "finish" in messages[0]
    assert "bad input for edit_train_py" in messages[1] and "old_str" in messages[1]
    assert "expected a JSON object" in messages[2]
    assert "not found" in messages[3]
    assert "occurs" in messages[4] and "unique" in messages[4]
    assert "start_line" in messages[5]


def test_read_run_log_refuses_paths_outside_runs_dir_and_symlinks(
    fake: FakeAnthropic, workspace: dict[str, Path]
) -> None:
    runs, root = workspace["runs"], workspace["root"]
    secret = root / "secret.txt"
    secret.write_text("API_KEY=sk-do-not-leak\n")
    outside = root / "elsewhere"
    outside.mkdir()
    (outside / "train.log").write_text("sk-do-not-leak\n")
    (runs / "0002").mkdir()
    (runs / "0002" / "train.log").symlink_to(secret)  # the log is a symlink
    (runs / "0003").symlink_to(outside, target_is_directory=True)  # the run folder is a symlink
    (runs / "0005").mkdir()
    os.mkfifo(runs / "0005" / "train.log")  # not a regular file (and would block a plain open)
    (runs / "0006").mkdir()
    (runs / "0006" / "train.log").write_text("x" * (3 * MAX_LOG_TAIL_BYTES) + "\nLAST LINE\n")
    rows = history(runs) + [
        HistoryRow(n=2, commit="c2", val_bpb=None, memory_gb=0, status="crash", description="d", run_dir=runs / "0002"),
        HistoryRow(n=3, commit="c3", val_bpb=None, memory_gb=0, status="crash", description="d", run_dir=runs / "0003"),
        HistoryRow(n=4, commit="c4", val_bpb=None, memory_gb=0, status="crash", description="d", run_dir=outside),
        HistoryRow(n=5, commit="c5", val_bpb=None, memory_gb=0, status="crash", description="d", run_dir=runs / "0005"),
        HistoryRow(n=6, commit="c6", val_bpb=None, memory_gb=0, status="crash", description="d", run_dir=runs / "0006"),
        HistoryRow(
            n=7,
            commit="c7",
            val_bpb=None,
            memory_gb=0,
            status="crash",
            description="d",
            run_dir=runs / ".." / "night" / "0000",
        ),
    ]
    calls = [tool_use("read_run_log", {"run": n, "log": "train", "lines": 5}) for n in range(8)]
    calls.append(tool_use("read_run_log", {"run": 99}))
    calls.append(tool_use("read_history", {}))
    calls.append(tool_use("write_train_py", {"content": "x" * (MAX_TRAIN_PY_BYTES + 1)}))
    fake.enqueue(Reply(calls, stop_reason="tool_use"), *edit_and_finish())  # (a 512 kB write passes max_tokens: forced)
    make(fake).propose(make_context(workspace, experiment=8, history=rows))

    results = tool_results(fake.message_requests()[1].body)
    *results, table, too_big = results
    assert not table["is_error"] and "1.250000" in table["content"] and "<- best" in table["content"]
    assert "DEPTH 4 -> 2" in table["content"] and len(table["content"].splitlines()) == 1 + len(rows)
    assert too_big["is_error"] and "cap" in too_big["content"]
    by_run = dict(zip([*range(8), 99], results, strict=False))
    assert not by_run[0]["is_error"] and "step 299" in by_run[0]["content"] and "step 294" not in by_run[0]["content"]
    assert not by_run[1]["is_error"]
    assert by_run[2]["is_error"] and "symlink" in by_run[2]["content"]
    assert by_run[3]["is_error"] and "symlink" in by_run[3]["content"]
    assert by_run[4]["is_error"] and "outside" in by_run[4]["content"]
    assert by_run[5]["is_error"] and "not a regular file" in by_run[5]["content"]
    assert not by_run[6]["is_error"] and by_run[6]["content"].endswith("LAST LINE")
    assert len(by_run[6]["content"]) <= MAX_LOG_TAIL_BYTES + 200
    assert by_run[7]["is_error"] and ".." in by_run[7]["content"]
    assert by_run[99]["is_error"] and "no run 99" in by_run[99]["content"]
    assert all("sk-do-not-leak" not in r["content"] for r in results)


def test_write_train_py_replaces_the_file_but_not_through_a_symlink(
    fake: FakeAnthropic, workspace: dict[str, Path]
) -> None:
    target = workspace["root"] / "victim.py"
    target.write_text("untouched\n")
    link_dir = workspace["root"] / "linked"
    link_dir.mkdir()
    link = link_dir / "train.py"
    link.symlink_to(target)
    new_text = TRAIN_PY.replace("DEPTH = 4", "DEPTH = 6")
    fake.enqueue(
        Reply([tool_use("write_train_py", {"content": new_text})]),
        Reply([tool_use("finish", {"description": "DEPTH 4 -> 6"})]),
    )
    with pytest.raises(AgentError, match="cannot read train.py"):
        make(fake).propose(make_context(workspace, train_py=link))
    assert target.read_text() == "untouched\n"
    proposal = make(fake).propose(make_context(workspace))
    assert proposal.description == "DEPTH 4 -> 6"
    assert workspace["train_py"].read_text() == new_text


# --- ending a proposal ---------------------------------------------------------------------------


def test_a_session_that_never_finishes_raises_after_the_turn_bound(workspace: dict[str, Path]) -> None:
    with FakeAnthropic(api_key=API_KEY, default=Reply([tool_use("view_train_py", {})])) as looping:
        with pytest.raises(AgentError, match="4 turns") as caught:
            make(looping, max_turns=4).propose(make_context(workspace))
        assert len(looping.message_requests()) == 4
        assert caught.value.usage.api_calls == 4  # type: ignore[attr-defined]
        assert caught.value.transcript  # type: ignore[attr-defined]


def test_ending_without_finish_is_nudged_once_then_fails_and_restores_train_py(
    fake: FakeAnthropic, workspace: dict[str, Path]
) -> None:
    fake.enqueue(
        Reply([tool_use("edit_train_py", {"old_str": "DEPTH = 4", "new_str": "DEPTH = 8"})]),
        Reply([text("I raised the depth.")]),
        Reply([text("All done.")]),
    )
    with pytest.raises(AgentError, match="without calling finish"):
        make(fake).propose(make_context(workspace))
    requests = fake.message_requests()
    assert len(requests) == 3
    assert requests[2].body["messages"][-1]["content"][0]["text"] == NUDGE_NO_FINISH
    assert workspace["train_py"].read_text() == TRAIN_PY


def test_a_nudge_can_rescue_a_proposal(fake: FakeAnthropic, workspace: dict[str, Path]) -> None:
    fake.enqueue(Reply([text("Thinking about the learning rate...")]), *edit_and_finish())
    proposal = make(fake).propose(make_context(workspace))
    assert proposal.description == "LR 0.02 -> 0.03"


def test_finish_without_a_change_is_refused(fake: FakeAnthropic, workspace: dict[str, Path]) -> None:
    fake.enqueue(Reply([tool_use("finish", {"description": "nothing"})]), *edit_and_finish())
    proposal = make(fake).propose(make_context(workspace))
    assert proposal.description == "LR 0.02 -> 0.03"
    (refused,) = tool_results(fake.message_requests()[1].body)
    assert refused["is_error"] and "unchanged" in refused["content"]

    fake.enqueue(Reply([tool_use("finish", {"description": "a"})]), Reply([tool_use("finish", {"description": "b"})]))
    workspace["train_py"].write_text(TRAIN_PY)
    with pytest.raises(AgentError, match="without changing"):
        make(fake).propose(make_context(workspace))


def test_finish_refuses_a_train_py_that_does_not_compile(fake: FakeAnthropic, workspace: dict[str, Path]) -> None:
    fake.enqueue(
        Reply([tool_use("edit_train_py", {"old_str": "LR = 0.02", "new_str": "LR = (0.03"})]),
        Reply([tool_use("finish", {"description": "LR up"})]),
        Reply([tool_use("edit_train_py", {"old_str": "LR = (0.03", "new_str": "LR = 0.03"})]),
        Reply([tool_use("finish", {"description": "LR up"})]),
    )
    proposal = make(fake).propose(make_context(workspace))
    assert proposal.description == "LR up"
    (refused,) = tool_results(fake.message_requests()[2].body)
    assert refused["is_error"] and "does not compile" in refused["content"]


# --- prompt caching ---------------------------------------------------------------------------


def test_the_cached_prefix_is_identical_across_proposals(fake: FakeAnthropic, workspace: dict[str, Path]) -> None:
    """Usage is simulated by the fake from the cache breakpoints: a prefix it has seen is a cache read."""
    agent = make(fake)
    fake.enqueue(Reply([tool_use("view_train_py", {})]), *edit_and_finish())
    first = agent.propose(make_context(workspace, experiment=2))
    workspace["train_py"].write_text(TRAIN_PY)
    fake.enqueue(*edit_and_finish("LR again"))
    more_history = history(workspace["runs"]) + [
        HistoryRow(
            n=2,
            commit="ccccccc",
            val_bpb=1.2,
            memory_gb=0.5,
            status="keep",
            description="LR 0.02 -> 0.03",
            run_dir=workspace["runs"] / "0000",
        )
    ]
    second = agent.propose(make_context(workspace, experiment=3, history=more_history))

    bodies = [r.body for r in fake.message_requests()]
    assert len(bodies[3]["messages"]) == 1  # a fresh conversation per experiment
    assert bodies[0]["system"] == bodies[3]["system"] and bodies[0]["tools"] == bodies[3]["tools"]
    assert first.usage.cache_creation_input_tokens > 0
    assert first.usage.cache_read_input_tokens > 0  # later turns of a proposal read the earlier ones
    # the next experiment starts by reading tools + system from the cache
    assert second.usage.cache_read_input_tokens >= first.usage.cache_creation_input_tokens // 2
    breakpoints = sum(
        1
        for b in [*bodies[1]["tools"], *bodies[1]["system"], *[c for m in bodies[1]["messages"] for c in m["content"]]]
        if "cache_control" in b
    )
    assert breakpoints == 3


# --- the factory --------------------------------------------------------------------------------


def test_make_agent_builds_the_anthropic_agent_and_explains_bad_settings(fake: FakeAnthropic) -> None:
    agent = make_agent("anthropic", api_key=API_KEY, base_url=fake.url, model=None, max_turns=5)
    assert agent.name == "anthropic" and agent.settings.max_turns == 5  # type: ignore[attr-defined]
    assert agent.settings.model == "claude-sonnet-5-5"  # type: ignore[attr-defined]
    with pytest.raises(AgentConfigError, match="ANTHROPIC_API_KEY"):
        make_agent("anthropic", api_key=None)
    with pytest.raises(AgentConfigError, match="max_turn"):
        make_agent("anthropic", api_key=API_KEY, max_turn=5)
    with pytest.raises(AgentConfigError, match="unknown agent 'gpt'"):
        make_agent("gpt")
    assert API_KEY not in repr(agent.settings)  # type: ignore[attr-defined]


def test_thinking_blocks_go_back_to_the_model_unchanged(fake: FakeAnthropic, workspace: dict[str, Path]) -> None:
    thinking = {"type": "thinking", "thinking": "The LR looks low.", "signature": "c2lnbmF0dXJl"}
    fake.enqueue(
        Reply([thinking, tool_use("edit_train_py", {"old_str": "LR = 0.02", "new_str": "LR = 0.03"})]),
        Reply([tool_use("finish", {"description": "LR 0.02 -> 0.03"})]),
    )
    make(fake).propose(make_context(workspace))
    echoed = fake.message_requests()[1].body["messages"][1]
    assert echoed["role"] == "assistant" and echoed["content"][0] == thinking
