"""A scripted night of 10 experiments, 360 s apart (the `gpu` profile), through the real loop and the
real agent against the fake Messages API (benchmarks/bench_agent_tokens.py prints its figures):
the agent uses its notebook and the history tools, and after the first proposal the stable prefix
always comes from the one-hour cache."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_agent_tokens import hit_fraction, run_night
from controller.agents.notebook import parse


def test_a_scripted_night_uses_notebook_and_history_and_reads_its_prefix_from_the_cache(tmp_path: Path) -> None:
    night = run_night(tmp_path, experiments=10, gap_s=360.0)
    rows = night["rows"]
    assert len(rows) == 10 and all(u["api_calls"] == 3 for u in rows)
    calls = night["tool_calls"]
    assert calls["update_notebook"] == 20 and calls["history_summary"] == calls["search_history"] == 10
    assert calls["show_experiment"] == 9
    notebook = (tmp_path / "repo" / "runs" / "bench" / "notebook.md").read_text()
    assert [s.title for s in parse(notebook)] == ["Tried", "Next"] and notebook.count("- #") == 10

    first, later = rows[0], rows[1:]
    assert first["cache_creation_1h_input_tokens"] == night["prefix_tokens"] > 4096  # written once, for the hour
    for u in later:
        assert u["cache_creation_1h_input_tokens"] == 0
        assert u["cache_read_input_tokens"] >= 3 * night["prefix_tokens"]  # every call reads it
        assert hit_fraction(u) > 0.8
        assert u["cost_usd"] is not None and u["cost_usd"] < first["cost_usd"]
