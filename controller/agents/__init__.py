"""Agents behind one small interface (controller/agents/base.py), made by name.

    make_agent("anthropic", api_key=..., model=..., base_url=..., max_turns=..., patience_s=...)
    make_agent("search", runs_dir=runs/<tag>, seed_train_py=programs/<name>/train.py, profile=..., seed=...)

Settings left as None take their defaults, so the controller can pass its settings through as
they are; an unknown or bad setting is an AgentConfigError with a one-line message. Each module
is imported only when its agent is asked for (the search agent needs no `anthropic`, the LLM
agent no `optuna`).

base.Agent declares the whole interface; base.BaseAgent gives its optional parts defaults, and
both agents derive from it:
- `observe(n: int, val_bpb: float | None, status: str) -> None`: called after every
  recorded experiment, the baseline (n=0) included, with the ledger's status. Idempotent. The
  search agent learns from it (keep/discard with a finite val_bpb completes the trial, anything
  else fails it); the anthropic agent ignores it. The search agent also replays
  `context.history` at each propose(), so a result missed by a killed controller is not lost.
- `can_fix_crashes: bool`: when False (search), do not ask for fix attempts: log the crash and go
  on. (Asked anyway, the search agent proposes a fresh configuration from the best instead.)
AgentErrors raised by the anthropic agent carry `.usage` (base.Usage, priced; cost None when the
model has no price) and `.transcript`; `is_fatal(error)` is True when waiting cannot help (bad key,
no access, unknown model). On a fix request (context.fix_attempt) it may raise base.FixDeclined
with a one-line `.reason`: the agent gave up on that broken experiment; the loop records it and
moves on, never asking again.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from controller.agents.base import Agent, AgentError

AGENT_NAMES = ("anthropic", "search")


class AgentConfigError(ValueError):
    """Bad agent settings; the message is one line saying what to fix."""


def make_agent(name: str, **settings: Any) -> Agent:
    given = {key: value for key, value in settings.items() if value is not None}
    try:
        if name == "anthropic":
            from controller.agents.anthropic_agent import AnthropicAgent, AnthropicSettings

            if "api_key" not in given:
                raise AgentConfigError(
                    "agent 'anthropic' needs an API key: set ANTHROPIC_API_KEY, or use --agent search"
                )
            return AnthropicAgent(AnthropicSettings(**given))
        if name == "search":
            from controller.agents.search_agent import SearchAgent, SearchSettings, SearchSpaceError

            try:
                return SearchAgent(SearchSettings(**given))
            except SearchSpaceError as exc:
                raise AgentConfigError(f"agent 'search': {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise AgentConfigError(f"agent {name!r}: {where}: {first['msg']}") from None
    raise AgentConfigError(f"unknown agent {name!r}; choose one of: {', '.join(AGENT_NAMES)}")


def is_fatal(error: BaseException) -> bool:
    """True for agent errors that waiting will not fix (bad API key, unknown model): stop and say so."""
    return isinstance(error, AgentError) and bool(getattr(error, "fatal", False))
