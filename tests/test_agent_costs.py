"""Honest costs: a model with no price in controller/agents/pricing.py has an unknown cost (None in
Usage, null in run.json, "cost unknown" on the terminal) and one warning in the log, never $0."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import structlog
from rich.console import Console

from controller.agents import pricing
from controller.agents.base import Usage
from controller.ledger import Ledger
from controller.status import ConsoleObserver
from tests.agent_support import agent_night, controller_log
from tests.fake_anthropic import FakeAnthropic, Reply, tool_use

API_KEY = "test-key"


def test_an_unknown_model_costs_none_with_one_warning_never_zero() -> None:
    usage = Usage(input_tokens=1000, output_tokens=100)
    pricing._warned.discard("claude-unreleased-9")
    with structlog.testing.capture_logs() as logs:
        assert pricing.cost_usd("claude-unreleased-9", usage) is None
        assert pricing.cost_usd("claude-unreleased-9", usage) is None
    assert [e["event"] for e in logs] == ["no_price_for_model"] and logs[0]["cost"] == "unknown"
    assert pricing.cost_usd("claude-sonnet-4-5-20250929", usage) == pytest.approx((1000 * 3.0 + 100 * 15.0) / 1e6)


def test_an_unknown_cost_stays_unknown_when_usages_add_up() -> None:
    known, unknown = Usage(input_tokens=1, cost_usd=0.5), Usage(input_tokens=2, cost_usd=None)
    assert (known + known).cost_usd == 1.0 and (known + known).input_tokens == 2
    assert (known + unknown).cost_usd is None and (unknown + known).input_tokens == 3
    assert Usage().cost_usd == 0.0  # no API call (the offline search agent): a true zero


def test_a_night_on_an_unpriced_model_records_and_shows_the_cost_as_unknown(tmp_path: Path) -> None:
    terminal = io.StringIO()
    observer = ConsoleObserver(Console(file=terminal, width=200), "night", [], None, 1)
    pricing._warned.discard("claude-unreleased-9")  # (warned once per process)
    with FakeAnthropic(api_key=API_KEY) as fake:
        fake.enqueue(
            Reply([tool_use("edit_train_py", {"old_str": "LR = 0.001", "new_str": "LR = 0.01"})]),
            Reply([tool_use("finish", {"description": "LR 0.001 -> 0.01"})]),
        )
        with controller_log(tmp_path / "repo" / "runs" / "night") as log_path:
            loop, _, _ = agent_night(tmp_path, fake, max_experiments=1, observer=observer, model="claude-unreleased-9")
            loop.run()
    ledger = Ledger(loop.s.tag_dir)
    rows = ledger.rows()
    run_json = json.loads((ledger.row_run_dir(1, rows[1]) / "run.json").read_text())
    assert run_json["model"] == "claude-unreleased-9" and run_json["usage"]["cost_usd"] is None
    assert run_json["usage"]["api_calls"] == 2 and run_json["usage"]["cache_read_input_tokens"] > 0
    assert ledger.read_record(1, run_json["commit"]).usage.cost_usd is None  # and it reads back
    assert "cost unknown" in terminal.getvalue() and "$0.000" not in terminal.getvalue()
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert any(e["event"] == "no_price_for_model" and e["model"] == "claude-unreleased-9" for e in events)
    (done,) = [e for e in events if e["event"] == "experiment" and e["n"] == 1]
    assert done["cost_usd"] is None
