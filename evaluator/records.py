"""score.json: the only record the controller trusts for a score. Written by evaluator.score.

Reasons carry no data. Once the model has run on validation tokens, what the evaluator says about
it (score.json, its log, hence the ledger and anything the agent can read) is a fixed category
with fixed text: where or how a model failed may depend on validation tokens (an out-of-bounds
index is a token value; the position a probe caught is a token's position). Reasons given before
the model ever runs (the archive and graph checks) may name what they refused (an op, an entry),
cleaned as hostile text: the archive was written by a process that never saw validation data.
The full trace of a failure goes to the eval job's private detail log, which no agent tool reads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Static refusals (before the model runs): the reason may name what was refused.
# Dynamic refusals (after it ran on validation tokens): the reason is exactly REJECT_TEXT[code].
RejectCode = Literal["archive", "graph", "model_error", "bad_logits", "non_causal"]
STATIC_CODES: frozenset[str] = frozenset({"archive", "graph"})
REJECT_TEXT: dict[str, str] = {
    "model_error": "the model raised an error on evaluation input",
    "bad_logits": "the model did not return finite float logits of shape (batch, seq_len, vocab)",
    "non_causal": (
        "causality probe: a prediction changed when tokens it may not see (later tokens "
        "of its row, or other rows of the batch) were replaced"
    ),
}


class ProbeResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    passed: bool
    checks: int = Field(ge=0)  # perturbed forward passes compared
    positions: int = Field(ge=0)  # positions tested (one per row per forward)
    max_abs_diff: float  # largest change seen in log-probabilities that had to stay fixed
    tolerance: float


class ScoreRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "rejected"]
    reason_code: RejectCode | None = None
    reason: str | None = None  # why a model was rejected, one line for a person (see above)
    profile: str
    val_bpb: float | None = None
    val_loss_nats: float | None = None  # mean cross-entropy per scored token
    tokens: int = 0  # tokens scored (targets with byte length > 0)
    bytes: int = 0  # UTF-8 bytes of those targets
    probe: ProbeResult | None = None
    forwards: int = 0  # forward passes in all: scoring batches plus probe checks
    eval_seconds: float = 0.0
    manifest_sha256: str | None = None  # hash of the data manifest the score was computed on
    artifact_sha256: str | None = None


# ---------------------------------------------------------------------------------------------
# preflight.json: the CPU preflight's verdict (evaluator.preflight). Written in a container where
# agent code ran, so the host reads it as hostile input and only ever uses it to stop an
# experiment early, never as a score.

PreflightCode = Literal[
    "train_exit", "no_model", "train_timeout", "archive", "graph", "model_error", "bad_logits", "non_causal"
]


class PreflightRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "crash", "rejected", "timeout"]
    reason_code: PreflightCode | None = None
    reason: str | None = Field(default=None, max_length=1000)  # one line for a person
    profile: str = Field(max_length=64)
    train_exit_code: int | None = None
    probe: ProbeResult | None = None
    train_seconds: float = Field(default=0.0, ge=0)  # train.py in the preflight, its child process
    check_seconds: float = Field(default=0.0, ge=0)  # the archive and graph checks
    probe_seconds: float = Field(default=0.0, ge=0)  # the probe's forwards on train rows
    total_seconds: float = Field(default=0.0, ge=0)  # from the container's start to this record
