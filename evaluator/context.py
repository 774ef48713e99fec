"""What a training process is told by whoever launched it (the sandbox or the bare runner).

Everything arrives through the environment, set explicitly by the launcher. The evaluator does
not read any of this back: it gets its own arguments from the controller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from evaluator.profiles import Profile, active_profile

DATA_DIR_ENV = "OVERNIGHT_DATA_DIR"
OUT_DIR_ENV = "OVERNIGHT_OUT_DIR"
SEED_ENV = "OVERNIGHT_SEED"


@dataclass(frozen=True)
class RunContext:
    profile: Profile
    data_dir: Path
    out_dir: Path
    seed: int


def run_context() -> RunContext:
    return RunContext(
        profile=active_profile(),
        data_dir=Path(os.environ.get(DATA_DIR_ENV, "data/cpu")),
        out_dir=Path(os.environ.get(OUT_DIR_ENV, "out")),
        seed=int(os.environ.get(SEED_ENV, "0")),
    )
