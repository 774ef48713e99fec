"""score.json: the only record the controller trusts for a score. Written by evaluator.score."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ProbeResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    passed: bool
    checks: int = Field(ge=0)  # number of perturbed forward passes compared
    max_abs_diff: float  # largest change seen in logits that had to stay fixed
    tolerance: float
    failure: str | None = None  # e.g. "future tokens changed logits before position 37"


class ScoreRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "rejected"]
    reason: str | None = None  # why a model was rejected, one line for a person
    profile: str
    val_bpb: float | None = None
    val_loss_nats: float | None = None  # mean cross-entropy per scored token
    tokens: int = 0  # tokens scored (targets with byte length > 0)
    bytes: int = 0  # UTF-8 bytes of those targets
    probe: ProbeResult | None = None
    eval_seconds: float = 0.0
    manifest_sha256: str | None = None  # hash of the data manifest the score was computed on
    artifact_sha256: str | None = None
