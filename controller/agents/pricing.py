"""What the Messages API costs, per model, for the cost column of run.json.

PRICES ARE IN US DOLLARS PER MILLION TOKENS. They change: keep this table up to date with
Anthropic's pricing page. Checked against the published documentation (platform.claude.com):
the pricing page's model table ("Base input tokens | 5m cache writes | 1h cache writes | Cache
hits and refreshes | Output tokens") and the model pages of Claude Sonnet 5.5 ($2 / $10, 5m write
$2.50, 1h write $4, cache read $0.20) and Claude Opus 5.5 ($4 / $20, 5m write $5, 1h write $8,
cache read $0.20). A 5-minute cache write costs 1.25x the base input price and a 1-hour write 2x
(build-with-claude/prompt-caching, "pricing"); usage.cache_creation splits the writes of a
response into ephemeral_5m_input_tokens and ephemeral_1h_input_tokens.

A model missing from the table has an unknown cost: cost_usd returns None (recorded as null in
run.json, shown as "cost unknown") and the controller log says so once, never a silent $0.

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
    cache_write: float  # 5-minute cache writes (1.25x input)
    cache_write_1h: float  # 1-hour cache writes (2x input)
    cache_read: float  # cache hits and refreshes


_OPUS_4 = Price(input=15.0, output=75.0, cache_write=18.75, cache_write_1h=30.0, cache_read=1.50)
_OPUS_45 = Price(input=5.0, output=25.0, cache_write=6.25, cache_write_1h=10.0, cache_read=0.50)
_SONNET_4 = Price(input=3.0, output=15.0, cache_write=3.75, cache_write_1h=6.0, cache_read=0.30)
_SONNET_5 = Price(input=2.0, output=10.0, cache_write=2.50, cache_write_1h=4.0, cache_read=0.20)
_HAIKU_45 = Price(input=1.0, output=5.0, cache_write=1.25, cache_write_1h=2.0, cache_read=0.10)
_FABLE_5 = Price(input=10.0, output=50.0, cache_write=12.50, cache_write_1h=20.0, cache_read=1.0)
_FABLE_51 = Price(input=10.0, output=50.0, cache_write=12.50, cache_write_1h=20.0, cache_read=0.25)

PRICES: dict[str, Price] = {
    "claude-opus-5-5": Price(input=4.0, output=20.0, cache_write=5.0, cache_write_1h=8.0, cache_read=0.20),
    "claude-sonnet-5-5": _SONNET_5,
    "claude-sonnet-5": _SONNET_5,
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
    "claude-3-5-haiku": Price(input=0.80, output=4.0, cache_write=1.0, cache_write_1h=1.6, cache_read=0.08),
    "claude-fable-5": _FABLE_5,
    "claude-mythos-5": _FABLE_5,
    "claude-fable-5-1": _FABLE_51,
    "claude-mythos-5-1": _FABLE_51,
}

_DATE_SUFFIX = re.compile(r"-\d{8}$")
_warned: set[str] = set()


def price_for(model: str) -> Price | None:
    return PRICES.get(_DATE_SUFFIX.sub("", model.strip()))


def cost_usd(model: str, usage: Usage) -> float | None:
    """Dollar cost of `usage` on `model`; None (and one warning per model) when it has no price here."""
    price = price_for(model)
    if price is None:
        if model not in _warned:
            _warned.add(model)
            log.warning(
                "no_price_for_model",
                model=model,
                cost="unknown",
                hint="add it to controller/agents/pricing.py; costs are recorded as null until then",
            )
        return None
    writes_1h = min(usage.cache_creation_1h_input_tokens, usage.cache_creation_input_tokens)
    total = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + (usage.cache_creation_input_tokens - writes_1h) * price.cache_write
        + writes_1h * price.cache_write_1h
        + usage.cache_read_input_tokens * price.cache_read
    )
    return total / PER_TOKENS
