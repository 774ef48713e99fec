"""The one small interface every agent implements.

The controller hands an agent a ProposalContext; the agent edits the single file
`context.train_py` in place (nothing else: the controller refuses commits that touch anything but
train.py) and returns a Proposal. The controller then checks, commits and runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class HistoryRow(BaseModel):
    """One past experiment as the agent sees it (a row of results.tsv plus where its logs are)."""

    model_config = ConfigDict(extra="forbid")

    n: int  # experiment number within the tag, 0 = baseline
    commit: str  # short sha
    val_bpb: float | None
    memory_gb: float
    status: str  # keep | discard | crash | timeout | rejected
    description: str
    run_dir: Path  # folder with train.log, eval.log, score.json of that run
    full_commit: str | None = None  # full sha (refs/autoresearch/<tag>/<n>); its git parent is what it changed
    runs: int = 1  # runs of the commit its val_bpb averages
    evidence: str | None = None  # the keep rule's line, e.g. "delta -0.0007 +/- 0.0011 (1 run vs 3): within noise"


class InFlight(BaseModel):
    """An experiment committed and running (or waiting for a slot) while the agent proposes."""

    model_config = ConfigDict(extra="forbid")

    n: int
    description: str
    diff: str  # its change to train.py, against the best it started from (capped)


class Failure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int
    description: str
    status: str
    log_tail: str  # last lines of train.log / eval.log, capped


class ProposalContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str
    experiment: int  # number of the experiment being proposed
    train_py: Path  # the file to edit, inside the experiment worktree
    program_md: str  # the human's research directions (programs/<name>/program.md)
    profile: str  # profile name; its constants are fixed and known to the agent via program.md
    history: list[HistoryRow]  # compact history of this tag, oldest first
    best_diff: str  # unified diff of the current best train.py against the seed
    failures: list[Failure] = Field(default_factory=list)  # the last few failed experiments
    fix_attempt: Failure | None = None  # set when asking the agent to fix the crash just seen
    runs_dir: Path  # runs/<tag>: the agent's tools may read logs under it, nothing else
    in_flight: list[InFlight] = Field(default_factory=list)  # committed, not yet decided: don't duplicate them
    # For the history tools (None/empty when the caller has no repository, e.g. in unit tests):
    repo: Path | None = None  # the git repository holding refs/autoresearch/<tag>/<n>
    train_rel: str | None = None  # train.py's path inside the repository
    seed_train_py: str = ""  # train.py at the baseline commit: fixed for the whole tag
    noise_bpb: float | None = None  # run-to-run noise of val_bpb, when the night has measured it


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_tokens: int = 0  # uncached input
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0  # all cache writes, whatever their lifetime
    cache_creation_1h_input_tokens: int = 0  # of which written with the 1-hour lifetime
    cache_read_input_tokens: int = 0
    cost_usd: float | None = 0.0  # None: unknown (a model with no price), never a silent 0
    api_calls: int = 0
    retries: int = 0
    continuations: int = 0  # turns cut at max_tokens (or paused) and continued

    def __add__(self, other: Usage) -> Usage:
        """Field-wise sum; the cost is unknown when either side's is."""
        summed = {name: getattr(self, name) + getattr(other, name) for name in Usage.model_fields if name != "cost_usd"}
        cost = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        return Usage(**summed, cost_usd=cost)


class Proposal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str  # one short line for results.tsv (no tabs or newlines)
    usage: Usage = Field(default_factory=Usage)
    transcript: list[dict] = Field(default_factory=list)  # JSON-able messages, saved per run


@runtime_checkable
class Agent(Protocol):
    """What the loop uses of an agent, all of it. BaseAgent gives the optional parts defaults."""

    name: str
    # False: the loop does not ask for fix attempts after a crash; it logs the crash and goes on.
    can_fix_crashes: bool

    def propose(self, context: ProposalContext) -> Proposal:
        """Edit context.train_py in place and describe the change. May raise AgentError."""
        ...

    def observe(self, n: int, val_bpb: float | None, status: str) -> None:
        """Experiment n was recorded (the baseline, n=0, included) with the ledger's status.
        Called once per recorded experiment; must be idempotent. An exception is logged, never fatal."""
        ...


class BaseAgent:
    """The defaults of Agent's optional parts: asks for crash fixes, learns nothing from results."""

    name: str = "agent"
    can_fix_crashes: bool = True

    def propose(self, context: ProposalContext) -> Proposal:
        raise NotImplementedError

    def observe(self, n: int, val_bpb: float | None, status: str) -> None:
        """Nothing to learn by default."""


class AgentError(RuntimeError):
    """The agent could not produce a proposal (after its own retries); the loop waits and goes on."""


class FixDeclined(AgentError):
    """Asked to fix a broken experiment (context.fix_attempt), the agent gave up on it, with a
    one-line reason. The loop records that next to the failed run and moves on to a fresh
    proposal from the best; it does not ask again. Carries .usage and .transcript like AgentError."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
