"""The numbers one experiment is held to, measured from outside its containers."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from evaluator.profiles import Profile

MiB = 2**20
GiB = 2**30


@dataclass(frozen=True)
class Limits:
    train_cap_s: float  # hard wall clock of the train container: budget + startup grace
    eval_cap_s: float  # hard wall clock of the eval container
    log_max_bytes: int = 50 * MiB  # per log file; then a truncation marker and the rest dropped
    artifact_max_bytes: int = 4 * GiB  # model.pt2 larger than this is refused
    out_max_bytes: int = 8 * GiB  # disk /out may use while training runs; over = killed
    out_max_entries: int = 10_000  # files and directories in /out; over = killed
    score_max_bytes: int = 1 * MiB  # score.json larger than this is refused
    train_py_max_bytes: int = 4 * MiB
    tick_s: float = 0.25  # how often the watchers look

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> Limits:
        return replace(cls(train_cap_s=profile.train_cap_s, eval_cap_s=profile.eval_timeout_s),
                       **overrides)
