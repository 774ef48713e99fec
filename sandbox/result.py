"""What one experiment is asked to do, and what came of it. Shared by every way of running one
(containers in sandbox.experiment, plain processes in sandbox.bare) and read by the controller."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from evaluator.records import ScoreRecord
from sandbox.specs import DEFAULT_IMAGE

Status = Literal["ok", "crash", "timeout", "rejected"]


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str  # unique and docker-name safe, e.g. "mytag-0007"; names containers and labels them
    train_py: Path  # the exact train.py to run; copied to run_dir/train.py before anything starts
    run_dir: Path  # host folder of this run: train.log, eval.log, score.json, nvml.jsonl, out/
    profile: str  # a name from evaluator.profiles.PROFILES
    data_dir: Path  # a prepared data directory (evaluator.layout)
    image: str = DEFAULT_IMAGE  # image both containers start from
    gpu: int | None = None  # index of the one GPU this run may use; None = CPU
    seed: int = 0
    vram_cap_gb: float | None = None  # NVML watchdog kills the run above this (GPU runs)
    memory_limit_gb: float = 8.0  # container memory limit (host RAM)
    cpuset: str | None = None  # CPUs the run's containers are pinned to, e.g. "0-1" (CPU slots)
    labels: dict[str, str] = Field(default_factory=dict)  # extra labels, e.g. {specs.LABEL_TAG: tag}
    # The night's warm compile cache (sandbox.compile_cache.warm_compile_cache: written by the
    # trusted seed only), copied into the train job's own tmpfs; never given to the eval job.
    compile_cache: Path | None = None


class ExperimentResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Status  # "ok" means scored; keep/discard is the controller's call
    reason: str | None = None  # one line for a person when status is not ok
    score: ScoreRecord | None = None
    train_seconds: float = 0.0  # wall clock of the train container, measured from outside
    train_budget_s: float = 0.0  # train.py's deadline, from the container's start
    train_cap_s: float = 0.0  # where the train container is killed: the budget plus the export allowance
    eval_seconds: float = 0.0  # wall clock of the eval container, measured from outside
    peak_memory_gb: float = 0.0  # peak VRAM (NVML) on GPU runs, peak container RAM on CPU runs
    memory_kind: Literal["vram", "ram"] = "ram"
    image_id: str | None = None  # the image's content id (sha256:...), None for bare runs
    train_exit_code: int | None = None
    eval_exit_code: int | None = None
    run_dir: Path

    @property
    def val_bpb(self) -> float | None:
        return self.score.val_bpb if self.score is not None and self.score.status == "ok" else None
