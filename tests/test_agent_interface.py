"""The agent interface is declared whole (controller/agents/base.py): every agent the loop is given,
built-in or fake, has `name`, `can_fix_crashes`, `propose` and `observe`, so the loop calls them
directly instead of probing with getattr."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.night_kit import ThinkingAgent
from controller.agents.anthropic_agent import AnthropicAgent
from controller.agents.base import Agent, BaseAgent, Proposal, ProposalContext
from controller.agents.search_agent import SearchAgent
from tests.adversarial.faults import StepsAgent
from tests.adversarial.night import CaseAgent
from tests.controller_fakes import ScriptedAgent

AGENTS = (SearchAgent, AnthropicAgent, ScriptedAgent, CaseAgent, StepsAgent, ThinkingAgent)


class Minimal(BaseAgent):
    name = "minimal"

    def propose(self, context: ProposalContext) -> Proposal:
        return Proposal(description="nothing")


@pytest.mark.parametrize("cls", AGENTS, ids=lambda c: c.__name__)
def test_every_agent_declares_the_whole_interface(cls: type) -> None:
    assert issubclass(cls, BaseAgent)
    for attribute in ("name", "can_fix_crashes", "propose", "observe"):
        assert hasattr(cls, attribute), f"{cls.__name__} lacks {attribute}"
    assert isinstance(cls.can_fix_crashes, bool)


def test_base_agent_defaults_ask_for_fixes_and_learn_nothing(tmp_path: Path) -> None:
    agent = Minimal()
    assert isinstance(agent, Agent)  # the runtime-checkable Protocol sees every member
    assert agent.can_fix_crashes is True
    assert agent.observe(3, 1.25, "keep") is None
    with pytest.raises(NotImplementedError):
        BaseAgent().propose(None)  # type: ignore[arg-type]


def test_the_search_agent_says_it_cannot_fix_crashes() -> None:
    assert SearchAgent.can_fix_crashes is False and AnthropicAgent.can_fix_crashes is True


def test_an_object_missing_an_optional_hook_is_not_an_agent() -> None:
    class OnlyPropose:
        name = "old"

        def propose(self, context: ProposalContext) -> Proposal:
            return Proposal(description="x")

    assert not isinstance(OnlyPropose(), Agent)
