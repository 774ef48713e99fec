"""A 2-slot night for real: the slot plan of the `test` profile, the real loop, the real sandbox
(containers on the local Docker engine), and an agent that thinks briefly and makes a no-op
change. Two experiments' train containers run at the same time, each created with its own
slot's cpuset, read back from the engine while it runs."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.night_kit import Quiet, ThinkingAgent, comment_only, make_checkout
from controller.settings import load_settings
from controller.slots import GiB, plan_slots
from sandbox import specs
from sandbox.experiment import run_experiment
from sandbox.result import ExperimentResult, ExperimentSpec

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OVERNIGHT_") or name == "ANTHROPIC_API_KEY":
            monkeypatch.delenv(name)


class Watched:
    """The real sandbox, noting each run's slot cpuset, its time window, and the CpusetCpus its
    train container was created with (read back from the engine while the run is in flight)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.runs: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def _watch(self, run_id: str, seen: dict[str, str], done: threading.Event) -> None:
        while not done.is_set():
            for c in self.client.containers.list(all=True, filters={"label": f"{specs.LABEL_RUN}={run_id}"}):
                if c.labels.get(specs.LABEL_PART) == "job" and c.labels.get(specs.LABEL_ROLE) == "train":
                    seen.setdefault("cpuset", c.attrs["HostConfig"]["CpusetCpus"])
            if "cpuset" in seen:
                return
            done.wait(0.2)

    def __call__(self, spec: ExperimentSpec) -> ExperimentResult:
        seen: dict[str, str] = {}
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(spec.run_id, seen, done), daemon=True)
        watcher.start()
        start = time.monotonic()
        try:
            result = run_experiment(spec)
        finally:
            end = time.monotonic()
            done.set()
            watcher.join(10)
        with self.lock:
            self.runs.append(
                {"spec": spec, "start": start, "end": end, "created": seen.get("cpuset"), "status": result.status}
            )
        return result


def test_a_two_slot_night_trains_two_experiments_at_once_on_their_own_cores(
    images: str, docker_client: Any, test_data_dir: Path, tmp_path: Path
) -> None:
    from controller.cli import remove_tag_containers
    from controller.loop import LoopDeps, NightLoop
    from evaluator.manifest import manifest_sha256

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two CPU slots need two usable cores; this process may use one")
    repo = make_checkout(tmp_path / "night")
    settings = load_settings(
        tag="slots2",
        profile="test",
        agent="search",
        repo=repo,
        runs_dir=repo / "runs",
        worktrees_dir=repo / "worktrees",
        data_dir=test_data_dir,
        max_experiments=2,
        overlap=True,
        slots=2,
    )
    slots = plan_slots(settings, host_memory_bytes=64 * GiB)
    assert len(slots) == 2 and all(slot.cpuset for slot in slots)
    runner = Watched(docker_client)
    deps = LoopDeps(
        agent=ThinkingAgent(0.5, comment_only, lambda n: f"no-op {n}"),
        runner=runner,
        observer=Quiet("slots2"),
        remove_orphans=remove_tag_containers,
        manifest_sha256=manifest_sha256(test_data_dir),
    )
    summary = NightLoop(settings, deps, slots=slots).run()
    runs = runner.runs
    assert summary.reason == "max-experiments", summary
    assert len(runs) >= 3, runs  # the baseline and two experiments (at least one run each)
    cpusets = {slot.cpuset for slot in slots}
    for run in runs:
        assert run["spec"].cpuset in cpusets  # every run went to a slot's cores ...
        assert run["created"] == run["spec"].cpuset, run  # ... and its container was pinned to them
    assert {run["spec"].cpuset for run in runs} == cpusets  # both slots were used
    overlapped = [
        (a, b) for i, a in enumerate(runs) for b in runs[i + 1 :] if a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert overlapped, [(r["spec"].run_id, r["start"], r["end"]) for r in runs]  # two at once ...
    assert all(a["spec"].cpuset != b["spec"].cpuset for a, b in overlapped)  # ... never two on one slot
    print(
        f"slot_night_runs: {len(runs)}, overlapping pairs: {len(overlapped)}, "
        f"statuses: {sorted(r['status'] for r in runs)}"
    )
    assert not docker_client.containers.list(all=True, filters={"label": f"{specs.LABEL_TAG}=slots2"})
