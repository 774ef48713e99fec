"""What a training process is told by whoever launched it (the sandbox or the bare runner).

Everything arrives through the environment, set explicitly by the launcher. The evaluator does
not read any of this back: it gets its own arguments from the controller.

The deadline is wall-clock time (time.time(), the host's clock: containers share it and cannot
set it). By then train.py must have called submit(); the host kills the container at the
deadline plus the profile's export allowance, whatever train.py believes the time is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from evaluator.profiles import Profile, active_profile

DATA_DIR_ENV = "OVERNIGHT_DATA_DIR"
OUT_DIR_ENV = "OVERNIGHT_OUT_DIR"
SEED_ENV = "OVERNIGHT_SEED"
DEADLINE_ENV = "OVERNIGHT_DEADLINE"  # unix time (seconds) by which submit() must be called


@dataclass(frozen=True)
class RunContext:
    profile: Profile
    data_dir: Path
    out_dir: Path
    seed: int
    deadline: float  # unix time by which train.py must call submit(model)

    def seconds_left(self) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self.deadline - time.time()


_STARTED = time.time()  # first import: a launcher that sets no deadline gets the profile's budget from here


def run_context() -> RunContext:
    profile = active_profile()
    raw_deadline = os.environ.get(DEADLINE_ENV)
    deadline = float(raw_deadline) if raw_deadline else _STARTED + profile.time_budget_s
    return RunContext(
        profile=profile,
        data_dir=Path(os.environ.get(DATA_DIR_ENV, "data/cpu")),
        out_dir=Path(os.environ.get(OUT_DIR_ENV, "out")),
        seed=int(os.environ.get(SEED_ENV, "0")),
        deadline=deadline,
    )
