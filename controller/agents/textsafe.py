"""Model strings on their way back to the API, or into a file, kept encodable.

A JSON string may hold a lone UTF-16 surrogate; Python decodes it into a `str` that cannot be
encoded as UTF-8, and the SDK raised UnicodeEncodeError while building the next request (the
error that once carried the request, headers included, into the log). Text sent back to the
model is repaired here, character for character otherwise, so what the model said is kept.
Cleaning for a terminal, git, a TSV or a file a person reads is evaluator/hostile.py's job.
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def no_surrogates(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD, so it encodes as UTF-8."""
    return _SURROGATE.sub(REPLACEMENT, text)


def deep_no_surrogates(value: Any) -> Any:
    """A JSON-able value with lone surrogates replaced in every string (keys included)."""
    if isinstance(value, str):
        return no_surrogates(value)
    if isinstance(value, dict):
        return {no_surrogates(str(k)): deep_no_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_no_surrogates(v) for v in value]
    return value
