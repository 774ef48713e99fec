"""A night on several slots: experiments run at the same time, never two at once on one slot,
each with its slot's GPU or cores; the `overnight` command plans the slots, prints them and
hands them to the loop. Fake agent and runner (controller_fakes); the runner takes a while so
runs overlap."""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time
from pathlib import Path

import pytest
from controller_fakes import (
    FakeRunner,
    ScriptedAgent,
    build_loop,
    check_consistent,
    make_data_dir,
    make_repo,
)

from controller import cli
from controller.loop import NightLoop
from controller.slots import GiB, Slot, plan_slots
from sandbox.result import ExperimentResult, ExperimentSpec

RUN_SECONDS = 0.4


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OVERNIGHT_") or name == "ANTHROPIC_API_KEY":
            monkeypatch.delenv(name)


class Window:
    def __init__(self, spec: ExperimentSpec, start: float, end: float) -> None:
        self.spec, self.start, self.end = spec, start, end

    @property
    def where(self) -> tuple[int | None, str | None]:
        return self.spec.gpu, self.spec.cpuset

    def overlaps(self, other: Window) -> bool:
        return self.start < other.end and other.start < self.end


class TimedRunner:
    """The fake runner, taking RUN_SECONDS; records each spec and the time window it ran in."""

    def __init__(self) -> None:
        self.fake = FakeRunner()
        self.windows: list[Window] = []
        self.lock = threading.Lock()

    def __call__(self, spec: ExperimentSpec) -> ExperimentResult:
        start = time.monotonic()
        time.sleep(RUN_SECONDS)
        result = self.fake(spec)
        with self.lock:
            self.windows.append(Window(spec, start, time.monotonic()))
        return result


def night_on(slots: list[Slot], tmp_path: Path, experiments: int = 5) -> tuple[NightLoop, TimedRunner]:
    repo = make_repo(tmp_path / "repo")
    loop, *_ = build_loop(repo, "slots", {}, max_experiments=experiments, overlap=True, slots=str(len(slots)))
    runner = TimedRunner()
    return NightLoop(loop.s, dataclasses.replace(loop.d, runner=runner), slots=slots), runner


def cpu_slots() -> list[Slot]:
    from controller.settings import load_settings

    return plan_slots(load_settings(profile="test", slots="2"), cpus={0, 1}, host_memory_bytes=64 * GiB)


@pytest.mark.parametrize("slots", [cpu_slots(), [Slot(0, gpu=1), Slot(1, gpu=3)]], ids=["cpusets", "gpus"])
def test_two_slots_run_two_experiments_at_once_each_on_its_own_slot(slots: list[Slot], tmp_path: Path) -> None:
    loop, runner = night_on(slots, tmp_path)
    summary = loop.run()
    assert summary.reason == "max-experiments" and len(summary.rows) == 6
    windows = runner.windows
    assert len(windows) == 6
    # every run went where a slot said, and both slots were used
    assert {w.where for w in windows} == {(s.gpu, s.cpuset) for s in slots}
    # two experiments ran at the same time, on different slots ...
    pairs = [(a, b) for i, a in enumerate(windows) for b in windows[i + 1 :] if a.overlaps(b)]
    assert pairs, [(w.spec.run_id, w.start, w.end) for w in windows]
    # ... and never two at once on one slot
    assert all(a.where != b.where for a, b in pairs)
    assert len(check_consistent(loop.s.repo, "slots")) == 6


def test_one_slot_never_runs_two_experiments_at_once(tmp_path: Path) -> None:
    loop, runner = night_on([Slot(0, cpuset="0")], tmp_path, experiments=3)
    loop.run()
    windows = sorted(runner.windows, key=lambda w: w.start)
    assert len(windows) == 4 and {w.where for w in windows} == {(None, "0")}
    assert all(a.end <= b.start for a, b in itertools.pairwise(windows))


# -- the command ---------------------------------------------------------------------------------


def overnight_with_fakes(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[ExperimentSpec]]:
    """`python -m controller overnight ...` with the fake agent and a fake runner that records
    the specs it was given (no containers, no key)."""
    runner = TimedRunner()
    monkeypatch.setattr(cli, "make_backend", lambda settings: None)
    monkeypatch.setattr(cli, "make_runner", lambda settings, backend=None: runner)
    monkeypatch.setattr(cli, "make_agent_for", lambda settings: ScriptedAgent({}))
    monkeypatch.setattr(cli, "current_image_id", lambda settings, backend=None: "sha256:fake")
    monkeypatch.setattr(cli, "remove_tag_containers", lambda tag, backend=None: [])
    code = cli.main(["overnight", *argv])
    return code, [w.spec for w in runner.windows]


def test_the_overnight_command_prints_its_slots_and_runs_on_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("two CPU slots need two usable cores; this process may use one")
    repo = make_repo(tmp_path / "repo")
    make_data_dir(repo / "data" / "test")
    monkeypatch.chdir(repo)
    code, specs = overnight_with_fakes(
        ["--tag", "t2", "--profile", "test", "--slots", "2", "--max-experiments", "3", "--memory-limit-gb", "1"],
        monkeypatch,
    )
    out = capsys.readouterr().out
    assert code == 0, out
    half = len(cores) // 2
    first, second = cores[:half], cores[half : 2 * half]
    lines = [line for line in out.splitlines() if line.startswith("slot ")]
    assert lines[:2] == [
        f"slot 0: CPUs {_cpuset(first)}, 1 GB RAM per container",
        f"slot 1: CPUs {_cpuset(second)}, 1 GB RAM per container",
    ]
    assert {spec.cpuset for spec in specs} == {_cpuset(first), _cpuset(second)}
    assert len(check_consistent(repo, "t2")) == 4


def _cpuset(cores: list[int]) -> str:
    from controller.slots import cpuset_string

    return cpuset_string(cores)


def test_a_slot_plan_that_cannot_work_stops_the_command_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    repo = make_repo(tmp_path / "repo")
    make_data_dir(repo / "data" / "test")
    monkeypatch.chdir(repo)
    code, specs = overnight_with_fakes(["--tag", "t3", "--profile", "test", "--gpus", "0"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and specs == []
    assert err == (
        "error: --gpus is for the gpu profile, and this night's profile is test: drop --gpus "
        "(use --slots N for N experiments at once, each on its own cores)\n"
    )
    too_many = len(os.sched_getaffinity(0)) + 1
    code, _ = overnight_with_fakes(["--tag", "t3", "--profile", "test", "--slots", str(too_many)], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(
        f"error: --slots {too_many} needs {too_many} CPU cores, and this process may use {too_many - 1} "
    )
    assert not (repo / "runs" / "t3").exists()  # nothing started
