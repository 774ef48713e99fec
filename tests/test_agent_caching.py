"""Prompt caching that pays: a stable prefix (tools, rules, program.md, the profile, the seed train.py)
large enough to cache; the 1-hour lifetime when proposals come more than five minutes apart, the
default 5-minute one otherwise; the right write rate in the cost. The fake Messages API models the
lifetimes on a clock the test moves on: a cached prefix is read only within its lifetime."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest

from controller.agents.anthropic_agent import expected_gap_s, system_prompt
from controller.agents.base import Usage
from controller.agents.pricing import PRICES, cost_usd
from controller.agents.tools import tool_specs
from evaluator.profiles import PROFILES
from tests.agent_support import REPO_ROOT, Clock, agent, context, edit_and_finish, workspace
from tests.fake_anthropic import FakeAnthropic, Reply, text, tool_use

API_KEY = "test-key"


def _ask(client: anthropic.Anthropic, system_ttl: str | None) -> object:
    control = {"type": "ephemeral", **({"ttl": system_ttl} if system_ttl else {})}
    return client.messages.create(
        model="claude-sonnet-5-5",
        max_tokens=100,
        system=[{"type": "text", "text": "rules " * 3000, "cache_control": control}],
        messages=[{"role": "user", "content": "go"}],
    )


@pytest.mark.parametrize("ttl, life", [(None, 300.0), ("1h", 3600.0)])
def test_the_fake_reads_a_cached_prefix_only_within_its_lifetime(ttl: str | None, life: float) -> None:
    clock = Clock()
    with FakeAnthropic(api_key=API_KEY, default=Reply([text("ok")]), clock=clock) as fake:
        client = anthropic.Anthropic(api_key=API_KEY, base_url=fake.url, max_retries=0)
        first = _ask(client, ttl).usage
        assert first.cache_read_input_tokens == 0 and first.cache_creation_input_tokens > 4000
        split = first.cache_creation
        assert (split.ephemeral_1h_input_tokens > 0) == (ttl == "1h") and (split.ephemeral_5m_input_tokens > 0) == (
            ttl is None
        )
        clock.advance(life - 1)
        assert _ask(client, ttl).usage.cache_read_input_tokens == first.cache_creation_input_tokens  # alive...
        clock.advance(life - 1)
        assert _ask(client, ttl).usage.cache_read_input_tokens > 0  # ...and each read refreshed it
        clock.advance(life + 1)
        late = _ask(client, ttl).usage
        assert (
            late.cache_read_input_tokens == 0 and late.cache_creation_input_tokens == first.cache_creation_input_tokens
        )


def test_the_fake_refuses_a_longer_lifetime_after_a_shorter_one() -> None:
    with FakeAnthropic(api_key=API_KEY, default=Reply([text("ok")])) as fake:
        client = anthropic.Anthropic(api_key=API_KEY, base_url=fake.url, max_retries=0)
        with pytest.raises(anthropic.BadRequestError, match="must not come after"):
            client.messages.create(
                model="m",
                max_tokens=10,
                system=[
                    {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                ],
                messages=[{"role": "user", "content": "go"}],
            )


def test_the_stable_prefix_of_the_default_program_is_above_every_minimum_cacheable_length(tmp_path: Path) -> None:
    """The largest documented minimum is 4,096 tokens (some Opus and Haiku models); below it
    nothing is cached, silently. Tokens estimated as the fake does (bytes / 4)."""
    ws = workspace(tmp_path)
    ctx = context(
        ws,
        profile="gpu",
        program_md=(REPO_ROOT / "programs/default/program.md").read_text(),
        seed_train_py=(REPO_ROOT / "programs/default/train.py").read_text(),
    )
    prefix = system_prompt(ctx) + str(tool_specs())
    assert len(prefix.encode()) // 4 > 4096
    other = context(
        ws,
        experiment=7,
        profile="gpu",
        program_md=ctx.program_md,
        seed_train_py=ctx.seed_train_py,
        best_diff="--- a\n+++ b\n",
    )
    assert system_prompt(other) == system_prompt(ctx)  # nothing of the experiment in it


def test_proposals_more_than_five_minutes_apart_read_the_prefix_from_a_one_hour_cache(tmp_path: Path) -> None:
    ws, clock = workspace(tmp_path), Clock()
    with FakeAnthropic(api_key=API_KEY, clock=clock) as fake:
        proposer = agent(fake, clock=clock)
        fake.enqueue(*edit_and_finish())
        first = proposer.propose(context(ws, profile="gpu"))  # the gpu profile's budget is 330 s: 1h from the start
        clock.advance(330)
        ws["train_py"].write_text(ws["train_py"].read_text().replace("LR = 0.03", "LR = 0.02"))
        fake.enqueue(*edit_and_finish())
        second = proposer.propose(context(ws, experiment=3, profile="gpu"))
        bodies = [r.body for r in fake.message_requests()]
    assert bodies[0]["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert all(
        c["cache_control"] == {"type": "ephemeral"}
        for b in bodies
        for m in b["messages"]
        for c in m["content"]
        if "cache_control" in c
    )  # the conversation itself: the default lifetime, after the 1h one
    assert first.usage.cache_creation_1h_input_tokens > 2000  # the prefix (tools, rules), written once for the hour
    assert second.usage.cache_creation_1h_input_tokens == 0
    assert second.usage.cache_read_input_tokens >= 2 * first.usage.cache_creation_1h_input_tokens
    price = PRICES["claude-sonnet-5-5"]
    u = first.usage
    expected = (
        u.input_tokens * price.input
        + u.output_tokens * price.output
        + u.cache_read_input_tokens * price.cache_read
        + (u.cache_creation_input_tokens - u.cache_creation_1h_input_tokens) * price.cache_write
        + u.cache_creation_1h_input_tokens * price.cache_write_1h
    ) / 1e6
    assert u.cost_usd == pytest.approx(expected)


def test_with_the_five_minute_lifetime_the_prefix_expires_between_slow_proposals(tmp_path: Path) -> None:
    ws, clock = workspace(tmp_path), Clock()
    with FakeAnthropic(api_key=API_KEY, clock=clock) as fake:
        proposer = agent(fake, clock=clock, cache_ttl="5m")
        fake.enqueue(*edit_and_finish())
        proposer.propose(context(ws, profile="gpu"))
        clock.advance(330)
        ws["train_py"].write_text(ws["train_py"].read_text().replace("LR = 0.03", "LR = 0.02"))
        fake.enqueue(*edit_and_finish())
        proposer.propose(context(ws, experiment=3, profile="gpu"))
        opening = fake.message_requests()[2]
    assert opening.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert len(opening.body["messages"]) == 1  # the second proposal's first request: nothing could be read


def test_the_lifetime_follows_the_gaps_measured_between_proposals(tmp_path: Path) -> None:
    assert expected_gap_s("test", []) == PROFILES["test"].time_budget_s < 240
    assert expected_gap_s("gpu", []) == PROFILES["gpu"].time_budget_s > 240
    assert expected_gap_s("gpu", [50.0, 70.0, 60.0]) == 60.0
    ws, clock = workspace(tmp_path), Clock()
    with FakeAnthropic(api_key=API_KEY, clock=clock) as fake:
        proposer = agent(fake, clock=clock)
        ttls = []
        for k in range(3):  # the `test` profile suggests short gaps, but these are 400 s
            fake.enqueue(
                Reply([tool_use("edit_train_py", {"old_str": "LR = 0.02", "new_str": f"LR = 0.0{k + 3}"})]),
                Reply([tool_use("finish", {"description": f"LR -> 0.0{k + 3}"})]),
            )
            ws["train_py"].write_text(ws["train_py"].read_text().replace(f"LR = 0.0{k + 2}", "LR = 0.02"))
            proposer.propose(context(ws, experiment=2 + k))
            ttls.append(fake.message_requests()[-1].body["system"][0]["cache_control"].get("ttl", "5m"))
            clock.advance(400)
    assert ttls == ["5m", "1h", "1h"]


def test_within_a_proposal_each_turn_reads_all_earlier_turns_however_many_blocks(tmp_path: Path) -> None:
    """The previous request's end keeps a breakpoint, so a turn of 25 tool calls (more blocks than
    the API looks back for a cached prefix) still reads everything before it from the cache."""
    ws = workspace(tmp_path)
    with FakeAnthropic(api_key=API_KEY) as fake:
        fake.enqueue(
            Reply([tool_use("view_train_py", {"start_line": 1, "end_line": 2}) for _ in range(25)]), *edit_and_finish()
        )
        agent(fake).propose(context(ws))
        requests = fake.message_requests()
    marks = [sum("cache_control" in c for m in r.body["messages"] for c in m["content"]) for r in requests]
    assert marks == [1, 2, 2]
    assert requests[1].body["messages"][0]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    for before, after in zip(fake.usages, fake.usages[1:], strict=False):
        assert (
            after["cache_read_input_tokens"]
            == before["cache_read_input_tokens"] + before["cache_creation_input_tokens"]
        )


def test_cache_writes_are_priced_at_the_rate_of_their_lifetime() -> None:
    usage = Usage(
        input_tokens=1000,
        output_tokens=500,
        cache_creation_input_tokens=10_000,
        cache_creation_1h_input_tokens=6000,
        cache_read_input_tokens=50_000,
    )
    p = PRICES["claude-sonnet-5-5"]
    assert (p.input, p.output, p.cache_write, p.cache_write_1h, p.cache_read) == (2.0, 10.0, 2.5, 4.0, 0.2)
    assert cost_usd("claude-sonnet-5-5", usage) == pytest.approx(
        (1000 * 2.0 + 500 * 10.0 + 4000 * 2.5 + 6000 * 4.0 + 50_000 * 0.2) / 1e6
    )
    for model, price in PRICES.items():  # the documented multipliers of the base input price
        assert price.cache_write == pytest.approx(1.25 * price.input), model
        assert price.cache_write_1h == pytest.approx(2 * price.input), model
