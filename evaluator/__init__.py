"""The trusted evaluator: fixed profiles, data preparation, tokenizer, dataloader, submit() and
scoring. train.py imports what it needs from here; the host side imports only the torch-free
modules (profiles, layout, records), so names that need torch are loaded on first use."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "submit": "evaluator.submission",
    "train_batches": "evaluator.dataloader",
    "run_context": "evaluator.context",
    "RunContext": "evaluator.context",
    "Profile": "evaluator.profiles",
    "get_profile": "evaluator.profiles",
    "active_profile": "evaluator.profiles",
    "load_tokenizer": "evaluator.tokenizer",
    "load_token_bytes": "evaluator.tokenizer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evaluator' has no attribute {name!r}")
