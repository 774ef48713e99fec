"""What the night benchmarks share: a throwaway project checkout holding the real seed, the real
loop (git, ledger, journal, the keep rule) over the real sandbox (two containers per run on the
local Docker engine), and a scripted agent that "thinks" for a fixed time and then makes a no-op
change to train.py. Used by bench_throughput.py and bench_null_keeps.py.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.agents.base import BaseAgent, Proposal, ProposalContext, Usage
from controller.ledger import Ledger
from controller.loop import LoopDeps, NightLoop, NightSummary
from controller.records import RunRecord
from controller.settings import load_settings
from controller.slots import Slot
from evaluator.manifest import manifest_sha256

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "programs" / "default"
TRAIN_REL = "programs/default/train.py"
# Lines of the seed the no-op edits touch: a comment and the seeding call.
COMMENT_LINE = "# Setup: profile, device, seed"
SEED_LINE = "torch.manual_seed(context.seed)"
COMMENT_RE = re.compile(r"^" + re.escape(COMMENT_LINE) + r".*$", re.M)
SEED_RE = re.compile(r"torch\.manual_seed\(context\.seed[^)\n]*\)")


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.org",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.org",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_checkout(root: Path) -> Path:
    """A git checkout whose programs/default/ is the real seed (train.py, program.md)."""
    if root.exists():
        shutil.rmtree(root)
    (root / "programs").mkdir(parents=True)
    shutil.copytree(SEED, root / "programs" / "default", ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".gitignore").write_text("runs/\nworktrees/\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "seed")
    return root


def comment_only(source: str, n: int) -> str:
    """A change that does nothing: one comment reworded (also on a best where it was reworded)."""
    new, count = COMMENT_RE.subn(f"{COMMENT_LINE} (pass {n})", source, count=1)
    assert count == 1, "the seed's setup comment moved: update benchmarks/night_kit.py"
    return new


def seed_only(source: str, n: int) -> str:
    """A change that only moves the random seed: same model, same data, other draws (also on a
    best whose seed was moved already)."""
    new, count = SEED_RE.subn(f"torch.manual_seed(context.seed + {1000 + n})", source, count=1)
    assert count == 1, "the seed's seeding call moved: update benchmarks/night_kit.py"
    return new


class ThinkingAgent(BaseAgent):
    """Takes `think_s` per proposal, then applies `edit(source, n)` to the best train.py."""

    name = "bench"
    can_fix_crashes = False

    def __init__(self, think_s: float, edit: Callable[[str, int], str], describe: Callable[[int], str]) -> None:
        self.think_s = think_s
        self.edit = edit
        self.describe = describe
        self.calls = 0

    def propose(self, context: ProposalContext) -> Proposal:
        self.calls += 1
        time.sleep(self.think_s)
        path = Path(context.train_py)
        path.write_text(self.edit(path.read_text(), context.experiment))
        return Proposal(description=self.describe(context.experiment), usage=Usage(api_calls=1))

    def observe(self, n: int, val_bpb: float | None, status: str) -> None:
        pass


class Quiet:
    """A loop observer that keeps the records and prints one line per decided experiment."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.records: list[RunRecord] = []

    def phase(self, n: int, phase: str) -> None:
        pass

    def finished(self, record: RunRecord, best: Any) -> None:
        self.records.append(record)
        runs = ", ".join(
            ("best " if r.of_commit else "") + (f"{r.val_bpb:.4f}" if r.val_bpb is not None else r.status)
            for r in record.replicates
        )
        print(f"[{self.label}] #{record.n} {record.status} ({runs}) {record.description}", flush=True)

    def say(self, text: str, level: str = "info") -> None:
        if level != "info":
            print(f"[{self.label}] {level}: {text}", flush=True)


@dataclass
class NightRun:
    summary: NightSummary
    records: list[RunRecord]
    wall_s: float
    tag_dir: Path


def run_night(
    root: Path,
    *,
    label: str,
    profile: str,
    data_dir: Path,
    agent: ThinkingAgent,
    cpusets: list[str],
    overlap: bool,
    hours: float | None = None,
    max_experiments: int | None = None,
    **settings: Any,
) -> NightRun:
    """One night in containers: `cpusets` gives the slots (one pinned set of cores each)."""
    from controller.cli import remove_tag_containers
    from sandbox.experiment import run_experiment

    repo = make_checkout(root / label)
    s = load_settings(
        tag=label,
        profile=profile,
        agent="search",
        repo=repo,
        runs_dir=repo / "runs",
        worktrees_dir=repo / "worktrees",
        data_dir=data_dir,
        hours=hours,
        max_experiments=max_experiments,
        overlap=overlap,
        slots=len(cpusets),
        **settings,
    )
    observer = Quiet(label)
    deps = LoopDeps(
        agent=agent,
        runner=functools.partial(run_experiment),
        observer=observer,
        remove_orphans=remove_tag_containers,
        manifest_sha256=manifest_sha256(data_dir),
    )
    slots = [Slot(i, cpuset=cpuset) for i, cpuset in enumerate(cpusets)]
    started = time.monotonic()
    summary = NightLoop(s, deps, slots=slots).run()
    return NightRun(summary, observer.records, time.monotonic() - started, s.tag_dir)


def all_records(tag_dir: Path) -> list[RunRecord]:
    """Every decided experiment's run.json, in decision order."""
    ledger = Ledger(tag_dir)
    out = []
    for row in ledger.rows():
        record = ledger.read_record(row.n, row.commit)
        if record is not None:
            out.append(record)
    return out
