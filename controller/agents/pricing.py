"""What the Messages API costs, per model, for the cost column of run.json.

PRICES ARE IN US DOLLARS PER MILLION TOKENS. They change: keep this table up to date with
Anthropic's pricing page (last checked 2026-11 for the models below; cache writes here are the
default 5-minute cache, which is the only kind this project asks for). A model missing from the
table is recorded with cost 0.0 and a warning in the controller log, never guessed.

Model ids with a date suffix (`claude-sonnet-4-5-20250929`) are priced as their alias. Left out on
purpose: models whose price depends on the prompt length (Claude Haiku 5.5 has two bands), which a
flat per-token table would get wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import structlog

from controller.agents.base import Usage

log = structlog.get_logger(__name__)

PER_TOKENS = 1_000_000


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float  # 5-minute cache writes
    cache_read: float  # cache hits and refreshes


_OPUS_4 = Price(input=15.0, output=75.0, cache_write=18.75, cache_read=1.50)
_OPUS_45 = Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50)
_SONNET_4 = Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30)
_HAIKU_45 = Price(input=1.0, output=5.0, cache_write=1.25, cache_read=0.10)

PRICES: dict[str, Price] = {
    "claude-opus-5-5": Price(input=4.0, output=20.0, cache_write=5.0, cache_read=0.20),
    "claude-sonnet-5-5": Price(input=2.0, output=10.0, cache_write=2.50, cache_read=0.20),
    "claude-sonnet-5": Price(input=2.0, output=10.0, cache_write=2.50, cache_read=0.20),
    "claude-opus-5": _OPUS_45,
    "claude-opus-4-8": _OPUS_45,
    "claude-opus-4-7": _OPUS_45,
    "claude-opus-4-6": _OPUS_45,
    "claude-opus-4-5": _OPUS_45,
    "claude-opus-4-1": _OPUS_4,
    "claude-opus-4-0": _OPUS_4,
    "claude-opus-4": _OPUS_4,
    "claude-sonnet-4-6": _SONNET_4,
    "claude-sonnet-4-5": _SONNET_4,
    "claude-sonnet-4-0": _SONNET_4,
    "claude-sonnet-4": _SONNET_4,
    "claude-3-7-sonnet": _SONNET_4,
    "claude-haiku-4-5": _HAIKU_45,
    "claude-3-5-haiku": Price(input=0.80, output=4.0, cache_write=1.0, cache_read=0.08),
    "claude-fable-5": Price(input=10.0, output=50.0, cache_write=12.50, cache_read=1.0),
    "claude-mythos-5": Price(input=10.0, output=50.0, cache_write=12.50, cache_read=1.0),
    "claude-fable-5-1": Price(input=10.0, output=50.0, cache_write=12.50, cache_read=0.25),
    "claude-mythos-5-1": Price(input=10.0, output=50.0, cache_write=12.50, cache_read=0.25),
}

_DATE_SUFFIX = re.compile(r"-\d{8}$")


def price_for(model: str) -> Price | None:
    return PRICES.get(_DATE_SUFFIX.sub("", model.strip()))


def cost_usd(model: str, usage: Usage) -> float:
    """Dollar cost of `usage` on `model`; 0.0 (and a warning) when the model has no price here."""
    price = price_for(model)
    if price is None:
        log.warning("no_price_for_model", model=model, hint="add it to controller/agents/pricing.py")
        return 0.0
    total = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
    )
    return total / PER_TOKENS
