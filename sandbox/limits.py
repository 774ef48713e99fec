"""The numbers one experiment is held to, measured and enforced from outside its containers."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from evaluator.profiles import Profile

MiB = 2**20
GiB = 2**30


@dataclass(frozen=True)
class Limits:
    train_budget_s: float  # wall clock from the train job's start until train.py must submit
    train_allowance_s: float  # then time to export; the job is killed at budget + allowance
    eval_cap_s: float  # hard wall clock of the eval job
    log_max_bytes: int = 50 * MiB  # per log file; then a truncation marker and the rest dropped
    artifact_max_bytes: int = 2 * GiB  # model.pt2 larger than this (apparent size) is refused
    out_max_bytes: int = 2 * GiB  # the train job's /out: a tmpfs of this size (the kernel's cap)
    out_max_files: int = 10_000  # files and folders in /out (the tmpfs's inode cap)
    score_dir_max_bytes: int = 64 * MiB  # the eval job's /score (score.json, rows, detail log)
    score_max_bytes: int = 1 * MiB  # score.json larger than this is refused
    detail_max_bytes: int = 4 * MiB  # the evaluator's private detail log, as kept on the host
    train_py_max_bytes: int = 64 * 1024  # sandbox.trainpy: train.py larger than this is refused
    tick_s: float = 0.25  # how often the watchers look

    @property
    def train_cap_s(self) -> float:
        """Hard wall-clock cap on the train job: the budget plus the export allowance."""
        return self.train_budget_s + self.train_allowance_s

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> Limits:
        base = cls(
            train_budget_s=profile.time_budget_s,
            train_allowance_s=profile.export_allowance_s,
            eval_cap_s=profile.eval_timeout_s,
        )
        return replace(base, **overrides)
