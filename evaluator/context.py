"""What a training process is told by whoever launched it (the sandbox or the bare runner).

Everything arrives through the environment, set explicitly by the launcher. The evaluator does
not read any of this back: it gets its own arguments from the controller.

The deadline. The budget counts from the container's start, as the host measures it (start-up,
imports and compilation count), so train.py is told the budget (OVERNIGHT_BUDGET_S) and when its
clock started: in a container (OVERNIGHT_CLOCK=container) that is the start of the container's
first process, PID 1 of its PID namespace, read from /proc, so it holds whatever the scheduler
did before the container ran (a Kubernetes pod may wait minutes for a GPU); the bare runner
passes its own start time (OVERNIGHT_STARTED). Times are the host's clock, which containers share
and cannot set. By the deadline train.py must have called submit(); the host kills the container
at the deadline plus the profile's export allowance, whatever train.py believes the time is.
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
BUDGET_ENV = "OVERNIGHT_BUDGET_S"  # seconds from the clock's start until submit() must be called
CLOCK_ENV = "OVERNIGHT_CLOCK"  # "container": the clock starts with the container's PID 1
STARTED_ENV = "OVERNIGHT_STARTED"  # otherwise: unix time the launcher started the clock


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


_IMPORTED = time.time()


def container_started(proc: Path = Path("/proc")) -> float:
    """Unix time the first process of this PID namespace (the container's) started."""
    stat = (proc / "1" / "stat").read_text()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the command name
    boot = next(
        float(line.split()[1]) for line in (proc / "stat").read_text().splitlines() if line.startswith("btime ")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def clock_started() -> float:
    if os.environ.get(CLOCK_ENV) == "container":
        return container_started()
    if os.environ.get(STARTED_ENV):
        return float(os.environ[STARTED_ENV])
    return _IMPORTED  # launched by hand: the budget counts from here


def run_context() -> RunContext:
    profile = active_profile()
    budget = float(os.environ.get(BUDGET_ENV) or profile.time_budget_s)
    return RunContext(
        profile=profile,
        data_dir=Path(os.environ.get(DATA_DIR_ENV, "data/cpu")),
        out_dir=Path(os.environ.get(OUT_DIR_ENV, "out")),
        seed=int(os.environ.get(SEED_ENV, "0")),
        deadline=clock_started() + budget,
    )
