"""The controller's JSON records, defined once: run.json (one experiment, with each of its runs),
replicate.json (one run), tag.json (what a night was started with), state.json (the journal of the
experiments in flight), replay.json, and fix-declined.json (the agent gave up fixing a failed run)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.agents.base import Proposal, Usage
from controller.noise import Decision as NoiseDecision

Decision = Literal["keep", "discard", "crash", "timeout", "rejected"]
RunStatus = Literal["ok", "crash", "timeout", "rejected"]  # what the sandbox said of one run
Kind = Literal["baseline", "proposal", "fix", "merge"]
FIXABLE: frozenset[str] = frozenset({"crash", "rejected"})  # failures the agent may try to fix
FIX_DECLINED_JSON = "fix-declined.json"  # next to run.json of a failed run the agent gave up on


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Timings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    propose: float = 0.0  # seconds the agent took (all its tries for this run)
    train: float = 0.0  # train container wall clock, measured from outside
    eval: float = 0.0  # eval container wall clock, measured from outside
    total: float = 0.0  # propose + run + record
    train_budget: float = 0.0  # train.py's deadline, seconds from the train container's start
    train_cap: float = 0.0  # where the host kills the train container: budget + export allowance


class ReplicateRecord(BaseModel):
    """One run of an experiment (replicate.json in its folder): the first run, a calibration run
    of the baseline, a confirmation run of the candidate with a fresh seed, or a run of the best
    made alongside the candidate's (`of_commit`: the best's commit) so that a drift of the
    machine's speed cancels in the comparison."""

    model_config = ConfigDict(extra="forbid")

    k: int  # 0 = the first run; 1.. the later runs of the experiment
    of_commit: str | None = None  # None: the experiment's own commit; else the best run alongside it
    seed: int  # chosen by the controller: the night's seed + k
    status: RunStatus
    reason: str | None = None
    val_bpb: float | None = None
    run_dir: str  # its folder's name under runs/<tag>/
    slot: int | None = None  # the slot it ran on
    memory_gb: float = 0.0
    memory_kind: Literal["vram", "ram"] = "ram"
    train_seconds: float = 0.0  # train container wall clock, measured from outside
    eval_seconds: float = 0.0
    train_budget: float = 0.0
    train_cap: float = 0.0
    image_id: str | None = None
    data_manifest_sha256: str | None = None
    train_exit_code: int | None = None
    eval_exit_code: int | None = None
    preflight: bool = False  # ended by the CPU preflight, before any slot was used
    started: dt.datetime
    finished: dt.datetime


class RunRecord(BaseModel):
    """run.json: everything about one experiment (one row of results.tsv), with each of its runs."""

    model_config = ConfigDict(extra="forbid")

    n: int  # experiment number within the tag, given when it was committed; 0 = baseline
    kind: Kind = "proposal"
    commit: str  # full sha of the experiment commit
    parent: str  # full sha of the best commit it was compared against (its git parent)
    tag: str
    program: str
    profile: str
    seed: int
    agent: str  # "seed" for the baseline
    model: str | None = None
    image_id: str | None = None  # evaluator image content id; None for bare runs
    data_manifest_sha256: str | None = None
    data_dir: str | None = None
    gpu: int | None = None
    status: Decision
    reason: str | None = None  # one line for a person when the run did not score
    val_bpb: float | None = None
    memory_gb: float = 0.0
    memory_kind: Literal["vram", "ram"] = "ram"
    timings: Timings = Field(default_factory=Timings)
    usage: Usage = Field(default_factory=Usage)  # agent tokens and cost for this proposal
    description: str
    fix_of: int | None = None  # the crashed experiment this one tries to fix
    fix_attempt: int = 0  # 1.. for fix tries, 0 for fresh proposals
    merge_of: int | None = None  # kind merge: the experiment whose change was merged onto the best
    train_exit_code: int | None = None
    eval_exit_code: int | None = None
    slot: int | None = None  # the slot its first run used
    replicates: list[ReplicateRecord] = Field(default_factory=list)  # every run, the best's alongside too
    decision: NoiseDecision | None = None  # the keep rule's evidence (scored experiments)
    started: dt.datetime
    finished: dt.datetime

    @property
    def own_replicates(self) -> list[ReplicateRecord]:
        """The runs of this experiment's own commit (not the best's runs alongside it)."""
        return [r for r in self.replicates if r.of_commit is None]


class FixDeclinedRecord(BaseModel):
    """fix-declined.json in a failed run's folder: asked to fix it, the agent gave up, with a
    reason. Its presence means the loop never asks to fix that run again (resume included)."""

    model_config = ConfigDict(extra="forbid")

    n: int  # the failed experiment
    commit: str  # its full sha
    fix_attempt: int  # the fix attempt that was declined (1..max_fix_attempts)
    reason: str  # one line, from the agent
    usage: Usage = Field(default_factory=Usage)  # what asking cost
    transcript: list[dict] = Field(default_factory=list)
    declined: dt.datetime = Field(default_factory=utcnow)


class TagRecord(BaseModel):
    """tag.json: what a night was started with; a resume must agree on program and profile."""

    model_config = ConfigDict(extra="forbid")

    tag: str
    program: str
    profile: str
    seed: int
    base_commit: str  # the user's HEAD the branch was created from (= the baseline commit)
    data_dir: str
    data_manifest_sha256: str | None = None
    created: dt.datetime


class Pending(BaseModel):
    """An experiment committed but not yet decided (no row yet): what a restart needs to finish it."""

    model_config = ConfigDict(extra="forbid")

    n: int
    kind: Kind = "proposal"
    commit: str
    parent: str  # the best commit when the proposal started (its git parent)
    proposal: Proposal | None = None  # None for the baseline and merges
    attempts: list[dict] = Field(default_factory=list)  # refused tries before it (transcripts)
    propose_seconds: float = 0.0
    fix_of: int | None = None
    fix_attempt: int = 0
    merge_of: int | None = None
    wanted: int = 1  # runs it needs before it can be decided (calibration, confirmations)
    replicates: list[ReplicateRecord] = Field(default_factory=list)  # its runs that finished
    alongside: dict[int, str] = Field(default_factory=dict)  # run k -> the best's commit it measures
    started: dt.datetime = Field(default_factory=utcnow)

    @property
    def own_replicates(self) -> list[ReplicateRecord]:
        """The runs of this experiment's own commit (not the best's runs alongside it)."""
        return [r for r in self.replicates if r.of_commit is None]

    def commit_of(self, k: int) -> str:
        """The commit run k measures: the best's for a run alongside, else the experiment's."""
        return self.alongside.get(k, self.commit)


class Journal(BaseModel):
    """state.json: the experiments in flight, so a restart after kill -9 finishes or redoes them."""

    model_config = ConfigDict(extra="forbid")

    pending: list[Pending] = Field(default_factory=list)


class ReplayRecord(BaseModel):
    """replay.json in runs/<tag>/replays/<name>/: a re-run of a recorded commit."""

    model_config = ConfigDict(extra="forbid")

    tag: str
    n: int
    commit: str
    image_id: str | None
    data_manifest_sha256: str | None
    profile: str
    seed: int
    status: str  # the sandbox's status: ok | crash | timeout | rejected
    reason: str | None = None
    recorded_val_bpb: float | None
    replayed_val_bpb: float | None
    started: dt.datetime
    finished: dt.datetime
    run_dir: Path


class SlotState(BaseModel):
    """What one slot is doing (slots.json, rewritten on every change while a night runs)."""

    model_config = ConfigDict(extra="forbid")

    index: int
    label: str  # e.g. "slot 0 (GPU 0)"
    n: int | None = None  # the experiment it runs; None: idle
    k: int = 0  # which run of that experiment (0: the first; later: calibration or confirmation)
    what: str = "idle"  # e.g. "proposal", "confirmation run 2", "baseline calibration run 3/3"
    since: dt.datetime = Field(default_factory=utcnow)


class SlotsRecord(BaseModel):
    """slots.json: every slot's state, and the controller's pid (stale when that night ended)."""

    model_config = ConfigDict(extra="forbid")

    pid: int
    slots: list[SlotState]
    updated: dt.datetime = Field(default_factory=utcnow)
