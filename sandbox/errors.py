"""The sandbox's own error: a setup problem (no engine, no image, no data), said in one line."""

from __future__ import annotations


class SandboxError(RuntimeError):
    """What went wrong and what to do, in one line for a person."""
