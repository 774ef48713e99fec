"""No secret reaches a file or the terminal. Tracebacks are logged without local variables; any
exception while talking to the model becomes an agent error whose message names no request and
no header; a canary API key driven through every agent error path of a real night (the real loop,
the real `anthropic` client, the fake Messages API) is found nowhere under runs/ nor in the
terminal output. The SDK's minimum version is the one tested here."""

from __future__ import annotations

import io
import json
import re
import secrets
from importlib.metadata import version
from pathlib import Path

import pytest
import structlog
from rich.console import Console

from controller.agents.base import AgentError
from controller.loop import AgentFatalError
from controller.status import ConsoleObserver
from tests.agent_support import REPO_ROOT, TRAIN_PY, agent, agent_night, context, controller_log, workspace
from tests.fake_anthropic import (
    Error,
    FakeAnthropic,
    Raw,
    Reply,
    Slow,
    overloaded,
    rate_limited,
    refusal,
    server_error,
    text,
    tool_use,
)

CANARY = "sk-ant-api03-CANARY-" + secrets.token_hex(16)


def _edit(old: str, new: str, description: str, note: str = "") -> list[Reply]:
    said = [text(note)] if note else []
    return [
        Reply([*said, tool_use("edit_train_py", {"old_str": old, "new_str": new})]),
        Reply([tool_use("finish", {"description": description})]),
    ]


def test_tracebacks_in_the_controller_log_carry_no_local_variables(tmp_path: Path) -> None:
    def send(headers: dict[str, str]) -> None:
        api_key = headers["x-api-key"]  # noqa: F841  (a local, as in an HTTP client's frame)
        raise RuntimeError("request failed")

    with controller_log(tmp_path) as path:
        try:
            send({"x-api-key": CANARY})
        except RuntimeError:
            structlog.get_logger("test").error("agent_failed", exc_info=True)
    logged = path.read_text()
    assert "request failed" in logged and "send" in logged  # the traceback is there...
    assert CANARY not in logged and '"locals"' not in logged  # ...without the frames' variables


def test_a_lone_surrogate_that_reaches_the_sdk_is_a_safe_agent_error(tmp_path: Path) -> None:
    """A signed thinking block is sent back unchanged; with a lone surrogate in it, the SDK raises
    UnicodeEncodeError while encoding the request (the error that once carried the headers)."""
    ws = workspace(tmp_path)
    thinking = {"type": "thinking", "thinking": "hmm \ud800", "signature": "c2ln"}
    with FakeAnthropic(api_key=CANARY) as fake:
        fake.enqueue(Reply([thinking, tool_use("view_train_py", {})]))
        with pytest.raises(AgentError) as caught:
            agent(fake, api_key=CANARY).propose(context(ws))
    message = str(caught.value)
    assert message.startswith("could not talk to the Anthropic API: UnicodeEncodeError")
    assert CANARY not in message and "x-api-key" not in message.lower() and "messages" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_model_text_with_lone_surrogates_is_repaired_before_it_is_stored_or_sent(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    with FakeAnthropic(api_key=CANARY) as fake:
        fake.enqueue(*_edit("LR = 0.02", "LR = 0.03  # \udc00", "LR up \ud800", note="odd \ud83d text"))
        proposal = agent(fake, api_key=CANARY).propose(context(ws))
        sent = fake.message_requests()[1].raw
    assert ws["train_py"].read_text() == TRAIN_PY.replace("LR = 0.02", "LR = 0.03  # \ufffd")
    assert "odd \ufffd text" in sent.decode("utf-8")  # valid UTF-8, the surrogate replaced
    json.dumps(proposal.transcript).encode("utf-8")  # storable
    assert proposal.description == "LR up \ufffd"


def test_the_sdk_minimum_version_is_the_one_installed_and_tested() -> None:
    minimum = re.search(r'^\s*"anthropic>=([\d.]+)",', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert minimum is not None
    installed = tuple(int(x) for x in version("anthropic").split(".")[:2])
    assert tuple(int(x) for x in minimum.group(1).split(".")[:2]) == installed


def test_no_agent_error_path_leaves_the_api_key_in_a_file_or_on_the_terminal(tmp_path: Path, capfd) -> None:
    terminal = io.StringIO()
    observer = ConsoleObserver(Console(file=terminal, width=200), "night", [], None, None)
    thinking = {"type": "thinking", "thinking": "lone \ud800 surrogate", "signature": "c2ln"}
    with FakeAnthropic(api_key=CANARY) as fake:
        fake.enqueue(
            Error(400, "invalid_request_error", "messages: bad request"),  # 4xx: an agent error, asked again
            Error(413, "request_too_large", "Request exceeds the maximum allowed number of bytes."),
            server_error(),
            overloaded(),
            rate_limited(retry_after="0"),  # 5xx, 529, 429: retried inside
            Error(409, "conflict_error", "conflict"),
            Raw(502, b"<html>bad gateway</html>", {"content-type": "text/html"}),
            Slow(3.0, then=server_error()),  # a timeout: retried
            Reply([thinking, tool_use("view_train_py", {})]),  # UnicodeEncodeError in the SDK
            refusal("no"),  # a refusal
            *[Reply([text("cut")], stop_reason="max_tokens")] * 3,  # max_tokens beyond the bound
            *_edit("LR = 0.001", "LR = 0.01", "LR 0.001 -> 0.01 \ud800", note="text \udfff"),  # #1, repaired
            *_edit("WIDTH = 64", "WIDTH = 96\nCRASH = 1", "WIDTH 64 -> 96"),  # #2 crashes
            Reply([tool_use("give_up", {"reason": "cannot fix \ud800"})]),  # its fix is declined
            Error(401, "authentication_error", "invalid x-api-key"),  # fatal: the night ends
        )
        with controller_log(tmp_path / "repo" / "runs" / "night") as log_path:
            loop, _, _ = agent_night(
                tmp_path,
                fake,
                max_experiments=5,
                observer=observer,
                api_key=CANARY,
                request_timeout_s=0.5,
                patience_s=30.0,
                max_continuations=2,
            )
            with pytest.raises(AgentFatalError):
                loop.run()
        fake.enqueue(Error(404, "not_found_error", "model: claude-nonexistent"))  # fatal too, on resume
        with controller_log(tmp_path / "repo" / "runs" / "night"):
            loop, _, _ = agent_night(tmp_path, fake, max_experiments=5, observer=observer, api_key=CANARY)
            with pytest.raises(AgentFatalError):
                loop.run()
        assert fake.pending == 0
        sent = [
            (r.headers.get("x-api-key"), r.headers.get("authorization", "").removeprefix("Bearer "))
            for r in fake.message_requests()
        ]
        assert all(CANARY in pair for pair in sent)  # it was sent, in a header

    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    errors = " | ".join(e.get("error", "") for e in events if e["event"] in ("agent_error", "agent_fatal", "api_retry"))
    for seen in (
        "HTTP 400",
        "HTTP 413",
        "HTTP 500",
        "HTTP 529",
        "HTTP 429",
        "HTTP 409",
        "HTTP 502",
        "APITimeoutError",
        "UnicodeEncodeError",
        "refused",
        "max_tokens",
        "HTTP 401",
        "HTTP 404",
    ):
        assert seen in errors, seen  # every path was really driven
    assert any(e["event"] == "fix_declined" for e in events)

    out, err = capfd.readouterr()
    shown = terminal.getvalue() + out + err
    assert "agent error" in shown  # the terminal did report the errors
    assert CANARY not in shown
    files = [p for p in (tmp_path / "repo" / "runs").rglob("*") if p.is_file()]
    assert len(files) > 10
    leaked = [str(p) for p in files if CANARY.encode() in p.read_bytes()]
    assert leaked == []
