"""Model-written strings made safe to store, show and send back (DESIGN.md threat model, point 14).

Everything a model writes is hostile input: it may hold terminal escape sequences, NUL bytes,
bidirectional overrides that make a line read differently from what it is, or lone UTF-16
surrogates (valid in a JSON string, invalid in UTF-8: encoding one raises, which once made the
SDK fail while building a request).
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 and C1 controls and DEL (tab and newline are kept where text may have lines), plus the
# Unicode bidirectional controls (LRM, RLM, ALM, embeddings, overrides, isolates).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def no_surrogates(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD, so it encodes as UTF-8."""
    return _SURROGATE.sub(REPLACEMENT, text)


def clean_text(text: str) -> str:
    """Text fit for a file a person reads: newlines kept (\\r\\n and \\r become \\n), tabs kept,
    other control and bidi characters dropped, lone surrogates replaced."""
    text = no_surrogates(text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def clean_line(text: str) -> str:
    """One line: controls (tab and newline included) become spaces, runs of spaces collapse."""
    return " ".join(_CONTROL_ONE_LINE.sub(" ", no_surrogates(text)).split())


def deep_no_surrogates(value: Any) -> Any:
    """A JSON-able value with lone surrogates replaced in every string (keys included)."""
    if isinstance(value, str):
        return no_surrogates(value)
    if isinstance(value, dict):
        return {no_surrogates(str(k)): deep_no_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_no_surrogates(v) for v in value]
    return value
