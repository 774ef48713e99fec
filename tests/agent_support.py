"""Helpers for the `anthropic` agent's tests: a train.py in a folder, a runs folder with logs, a
ProposalContext, and the agent pointed at the fake Messages API (tests/fake_anthropic.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.agents.anthropic_agent import AnthropicAgent, AnthropicSettings
from controller.agents.base import HistoryRow, ProposalContext
from tests.fake_anthropic import FakeAnthropic, Reply, text, tool_use

REPO_ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key"
PROGRAM_MD = "# program: test\nMake val_bpb low."
TRAIN_PY = """\
import torch
from evaluator import submit

LR = 0.02  # learning rate
DEPTH = 4  # layers

model = torch.nn.Linear(DEPTH, DEPTH)
submit(model)
"""


def workspace(root: Path) -> dict[str, Path]:
    worktree = root / "worktree"
    worktree.mkdir()
    (worktree / "train.py").write_text(TRAIN_PY)
    runs = root / "runs" / "night"
    for n in (0, 1):
        (runs / f"{n:04d}").mkdir(parents=True)
        (runs / f"{n:04d}" / "train.log").write_text(f"step 1 loss 4.{n}\n")
    return {"root": root, "train_py": worktree / "train.py", "runs": runs}


def history(runs: Path) -> list[HistoryRow]:
    return [
        HistoryRow(
            n=0,
            commit="aaaaaaa",
            val_bpb=1.25,
            memory_gb=0.5,
            status="keep",
            description="baseline",
            run_dir=runs / "0000",
        ),
        HistoryRow(
            n=1,
            commit="bbbbbbb",
            val_bpb=1.31,
            memory_gb=0.5,
            status="discard",
            description="DEPTH 4 -> 2",
            run_dir=runs / "0001",
        ),
    ]


def context(ws: dict[str, Path], experiment: int = 2, **overrides: Any) -> ProposalContext:
    fields: dict[str, Any] = dict(
        tag="night",
        experiment=experiment,
        train_py=ws["train_py"],
        program_md=PROGRAM_MD,
        profile="test",
        history=history(ws["runs"]),
        best_diff="",
        runs_dir=ws["runs"],
    )
    fields.update(overrides)
    return ProposalContext(**fields)


def agent(fake: FakeAnthropic, **settings: Any) -> AnthropicAgent:
    sleep = settings.pop("sleep", lambda s: None)
    clock = settings.pop("clock", None)
    values: dict[str, Any] = dict(
        api_key=API_KEY,
        base_url=fake.url,
        request_timeout_s=5.0,
        patience_s=10.0,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )
    values.update(settings)
    if clock is None:
        return AnthropicAgent(AnthropicSettings(**values), sleep=sleep)
    return AnthropicAgent(AnthropicSettings(**values), sleep=sleep, clock=clock)


def edit_and_finish(description: str = "LR 0.02 -> 0.03") -> list[Reply]:
    return [
        Reply([tool_use("edit_train_py", {"old_str": "LR = 0.02", "new_str": "LR = 0.03"})]),
        Reply([text("Done."), tool_use("finish", {"description": description})]),
    ]


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of a request's last (user) message, in order."""
    last = body["messages"][-1]
    assert last["role"] == "user"
    return [b for b in last["content"] if b["type"] == "tool_result"]


class Clock:
    """A clock a test moves on (shared by the fake server and the agent)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def toy_train_py() -> str:
    from tests.controller_fakes import TOY_TRAIN_PY

    return TOY_TRAIN_PY + "submit(None)\n"


def agent_night(
    root: Path,
    fake: FakeAnthropic,
    max_experiments: int,
    *,
    tag: str = "night",
    observer: Any = None,
    clock: Any = None,
    **agent_settings: Any,
) -> tuple[Any, Any, list[float]]:
    """The real loop (real git, ledger, worktree) with the real `anthropic` agent against `fake`, and
    the fake runner of tests/controller_fakes.py (scores train.py from its constants; a train.py
    holding CRASH crashes). The repository is made once under root/repo and reused by later
    nights (a resume). Returns (loop, runner, the loop's sleeps)."""
    from controller.loop import LoopDeps, NightLoop, NullObserver
    from controller.settings import load_settings
    from tests.controller_fakes import FakeRunner, make_data_dir, make_repo

    repo = root / "repo"
    if not (repo / ".git").exists():
        make_repo(repo, train_py=toy_train_py())
    settings = load_settings(
        tag=tag,
        profile="test",
        agent="anthropic",
        repo=repo,
        runs_dir=repo / "runs",
        worktrees_dir=repo / "worktrees",
        data_dir=repo / "data",
        max_experiments=max_experiments,
        overlap=False,
    )  # one experiment at a time: the scripted replies come in order
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the loop's backoff takes no time; a test that loops fails
        sleeps.append(seconds)
        if len(sleeps) > 5000:
            raise RuntimeError("the loop keeps waiting: the scripted agent is stuck")

    if clock is not None:
        agent_settings["clock"] = clock
    deps = LoopDeps(
        agent=agent(fake, **agent_settings),
        runner=FakeRunner(),
        observer=observer or NullObserver(),
        sleep=sleep,
        manifest_sha256=make_data_dir(Path(settings.data_dir)),
    )
    return NightLoop(settings, deps), deps.runner, sleeps


@contextlib.contextmanager
def controller_log(tag_dir: Path) -> Iterator[Path]:
    """The controller's JSON log configured as `python -m controller overnight` does, then undone."""
    import structlog

    from controller.logs import close_logging, configure_logging

    path = configure_logging(tag_dir)
    try:
        yield path
    finally:
        close_logging()
        structlog.reset_defaults()
