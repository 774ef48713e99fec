"""The research notebook: a per-tag markdown file under runs/<tag>/ that the agent reads in the first
message of every proposal and changes through update_notebook, one section at a time; capped,
safe against hostile text and planted links, never part of a train.py commit, and shown in the
morning (`python -m controller notebook`, and a line in `status`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from controller import cli
from controller import git as g
from controller.agents.notebook import MAX_NOTEBOOK_BYTES, NotebookError, parse, read_notebook, update_notebook
from tests.agent_support import agent, agent_night, context, edit_and_finish, tool_results, workspace
from tests.fake_anthropic import FakeAnthropic, Reply, tool_use

API_KEY = "test-key"


@pytest.fixture
def fake():
    with FakeAnthropic(api_key=API_KEY) as server:
        yield server


def note(section: str, text: str, mode: str = "append") -> dict:
    return tool_use("update_notebook", {"section": section, "text": text, "mode": mode})


def test_notes_written_in_one_proposal_open_the_next(fake: FakeAnthropic, tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    proposer = agent(fake)
    fake.enqueue(
        Reply(
            [note("Hypotheses", "- LR 0.02 is too low for this width"), note("Next", "- try LR 0.03\n- then warmup")]
        ),
        *edit_and_finish(),
    )
    proposer.propose(context(ws))
    results = tool_results(fake.message_requests()[1].body)
    assert not any(r["is_error"] for r in results) and "appended to section 'Next' (2 lines)" in results[1]["content"]

    ws["train_py"].write_text(ws["train_py"].read_text().replace("LR = 0.03", "LR = 0.02"))
    fake.enqueue(
        Reply([note("Next", "- then warmup", mode="replace"), note("Hypotheses", "", mode="replace")]),
        *edit_and_finish(),
    )
    proposer.propose(context(ws, experiment=3))
    opening = fake.message_requests()[3].body["messages"][0]["content"][0]["text"]
    assert "## Hypotheses\n\n- LR 0.02 is too low for this width" in opening and "- try LR 0.03" in opening
    text = (ws["runs"] / "notebook.md").read_text()
    assert [s.title for s in parse(text)] == ["Next"] and parse(text)[0].body == "- then warmup"


def test_an_empty_notebook_invites_the_agent_to_start_one(fake: FakeAnthropic, tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    fake.enqueue(*edit_and_finish())
    agent(fake).propose(context(ws))
    opening = fake.message_requests()[0].body["messages"][0]["content"][0]["text"]
    assert "## Your notebook" in opening and "(empty: start it with update_notebook" in opening


def test_hostile_text_cannot_forge_sections_or_reach_the_terminal(tmp_path: Path) -> None:
    hostile = (
        "ok \x1b[31mred\x1b[0m \x00nul \u202eevil\u202c \ud800 end\r\n## Forged keep\n# Title\n##\n"
        "### a real subheading\n\x07bell"
    )
    update_notebook(tmp_path, "\x1b]0;pwned\x07 ## Plan\n", hostile, "append")
    raw = (tmp_path / "notebook.md").read_text(encoding="utf-8")  # valid UTF-8
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069\ud800-\udfff]", raw)
    sections = parse(raw)
    assert len(sections) == 1 and "\n## " not in sections[0].body
    body = sections[0].body.split("\n")
    assert body[1:4] == ["### Forged keep", "### Title", "###"] and body[4] == "### a real subheading"
    assert "\ufffd" in body[0] and "red" in body[0] and "evil" in body[0]


def test_the_notebook_is_capped_and_an_update_past_the_cap_is_refused_with_advice(tmp_path: Path) -> None:
    update_notebook(tmp_path, "Log", "x" * (MAX_NOTEBOOK_BYTES - 200), "append")
    before = (tmp_path / "notebook.md").read_bytes()
    with pytest.raises(NotebookError, match="over its 8000 byte cap: condense it"):
        update_notebook(tmp_path, "Log", "y" * 400, "append")
    assert (tmp_path / "notebook.md").read_bytes() == before
    update_notebook(tmp_path, "Log", "- condensed: nothing useful", "replace")
    assert len((tmp_path / "notebook.md").read_bytes()) < 100


def test_a_link_or_a_fifo_planted_at_the_notebook_is_refused_not_followed(fake: FakeAnthropic, tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch\n")
    (ws["runs"] / "notebook.md").symlink_to(victim)
    fake.enqueue(Reply([note("Plan", "overwrite?")]), *edit_and_finish())
    agent(fake).propose(context(ws))
    opening = fake.message_requests()[0].body["messages"][0]["content"][0]["text"]
    assert "(cannot be read: notebook.md is a symlink; refused)" in opening
    (refused,) = tool_results(fake.message_requests()[1].body)
    assert refused["is_error"] and "symlink" in refused["content"]
    assert victim.read_text() == "do not touch\n"

    (ws["runs"] / "notebook.md").unlink()
    os.mkfifo(ws["runs"] / "notebook.md")
    with pytest.raises(NotebookError, match="not a regular file"):
        read_notebook(ws["runs"])  # at once: never blocks on the FIFO


def test_the_notebook_lives_under_runs_is_never_committed_and_is_shown_in_the_morning(
    fake: FakeAnthropic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for k in range(2):
        fake.enqueue(
            Reply(
                [
                    note("What worked", f"- LR x10 (#{k + 1})"),
                    tool_use("edit_train_py", {"old_str": "WIDTH = 64", "new_str": f"WIDTH = {65 + k}"}),
                ]
            ),
            Reply([tool_use("finish", {"description": f"WIDTH -> {65 + k}"})]),
        )
    loop, _, _ = agent_night(tmp_path, fake, max_experiments=2)
    loop.run()
    repo, runs = tmp_path / "repo", tmp_path / "repo" / "runs"
    assert read_notebook(runs / "night").count("- LR x10") == 2
    for n, sha in g.experiment_refs(repo, "night").items():
        touched = g.git(repo, "show", "--name-only", "--format=", sha).split()
        assert n == 0 or touched == ["programs/default/train.py"]
    assert g.git(repo / "worktrees" / "night", "status", "--porcelain", "--ignored") == ""

    capsys.readouterr()
    assert cli.main(["notebook", "--tag", "night", "--runs-dir", str(runs)]) == 0
    shown = capsys.readouterr().out
    assert "## What worked" in shown and "- LR x10 (#2)" in shown
    assert cli.main(["status", "--tag", "night", "--runs-dir", str(runs)]) == 0
    assert "notebook: " in capsys.readouterr().out
