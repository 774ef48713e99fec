"""The NVML watchdog, with a fake NVML library (no GPU here): it measures a run's VRAM over the
idle baseline, records every sample, keeps the peak and kills a run over its cap."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sandbox_support import leftovers, rid

from sandbox import specs
from sandbox.docker_runner import DockerRunner
from sandbox.errors import SandboxError
from sandbox.nvml import VramWatchdog
from sandbox.runner import JobSpec

GiB = 2**30


class FakeNvml:
    """The parts of pynvml the watchdog calls. Used memory follows `usage(t)` in bytes."""

    class NVMLError(Exception):
        pass

    def __init__(self, usage, gpus: int = 2, fail_init: bool = False) -> None:
        self.usage = usage
        self.gpus = gpus
        self.fail_init = fail_init
        self.t0 = time.monotonic()
        self.handles: list[int] = []
        self.shutdown = False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index >= self.gpus:
            raise self.NVMLError("Invalid Argument")
        self.handles.append(index)
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        used = int(self.usage(time.monotonic() - self.t0))
        return SimpleNamespace(total=80 * GiB, used=used, free=80 * GiB - used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=97, memory=40)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [SimpleNamespace(pid=999_999, usedGpuMemory=GiB)]


class FakeContainer:
    id = "0" * 64


def _samples(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_watchdog_measures_over_the_idle_baseline_and_keeps_the_peak(tmp_path: Path) -> None:
    readings = iter([2 * GiB, 5 * GiB, 9 * GiB, 6 * GiB])  # baseline, then three samples
    nvml = FakeNvml(lambda t: next(readings))
    dog = VramWatchdog(1, cap_gb=None, samples_path=tmp_path / "nvml.jsonl", nvml=nvml, interval_s=0.0)
    dog.before_start()
    assert [dog.check(FakeContainer()) for _ in range(3)] == [None, None, None]
    dog.finish()
    assert nvml.handles == [1]  # the assigned GPU, no other
    assert dog.baseline_bytes == 2 * GiB and dog.peak_bytes == 7 * GiB
    samples = _samples(tmp_path / "nvml.jsonl")
    assert samples[0]["event"] == "baseline"
    assert [s["run_bytes"] for s in samples[1:4]] == [3 * GiB, 7 * GiB, 4 * GiB]
    assert samples[1]["gpu_util"] == 97
    assert samples[-1] == {"t": samples[-1]["t"], "event": "end", "peak_run_bytes": 7 * GiB}
    assert nvml.shutdown


def test_watchdog_asks_for_a_kill_over_the_cap(tmp_path: Path) -> None:
    readings = iter([1 * GiB, 2 * GiB, 4 * GiB])
    dog = VramWatchdog(
        0, cap_gb=2.5, samples_path=tmp_path / "nvml.jsonl", nvml=FakeNvml(lambda t: next(readings)), interval_s=0.0
    )
    dog.before_start()
    assert dog.check(FakeContainer()) is None  # 1 GiB over baseline
    reason = dog.check(FakeContainer())  # 3 GiB over baseline
    dog.finish()
    assert reason is not None and "3.00 GB passed the 2.50 GB cap" in reason
    assert dog.peak_bytes == 3 * GiB
    assert any(s.get("event") == "kill" for s in _samples(tmp_path / "nvml.jsonl"))


def test_watchdog_refuses_to_run_without_nvml(tmp_path: Path) -> None:
    dog = VramWatchdog(0, cap_gb=10, samples_path=tmp_path / "nvml.jsonl", nvml=FakeNvml(lambda t: 0, fail_init=True))
    with pytest.raises(SandboxError, match="NVML unavailable for GPU 0"):
        dog.before_start()


def test_a_failed_sample_does_not_kill_the_run(tmp_path: Path) -> None:
    def flaky(t: float) -> int:
        flaky.calls += 1
        if flaky.calls == 2:
            raise FakeNvml.NVMLError("GPU is lost")
        return GiB

    flaky.calls = 0
    dog = VramWatchdog(0, cap_gb=0.5, samples_path=tmp_path / "nvml.jsonl", nvml=FakeNvml(flaky), interval_s=0.0)
    dog.before_start()
    assert dog.check(FakeContainer()) is None
    dog.finish()
    assert _samples(tmp_path / "nvml.jsonl")[1]["event"] == "error"


@pytest.mark.docker
def test_watchdog_kills_a_real_container_over_the_cap(images, docker_client, tmp_path: Path) -> None:
    # VRAM "grows" 1 GiB per second after a 1 GiB baseline; the cap is 2 GiB.
    nvml = FakeNvml(lambda t: GiB + int(t * GiB))
    dog = VramWatchdog(0, cap_gb=2.0, samples_path=tmp_path / "nvml.jsonl", nvml=nvml, interval_s=0.1)
    run_id = rid("nvml-kill")
    job = JobSpec(
        run_id=run_id,
        role="train",
        image=images,
        command=("sleep", "120"),
        environment=specs.environment(None),
        data_dir=tmp_path,
        data_parts=(),
        inputs={},
        output_dir="/out",
        output_max_bytes=2**20,
        output_max_files=10,
        cap_s=60,
        memory_gb=0.5,
    )
    runner = DockerRunner(docker_client, tick_s=0.1)
    handle = runner.submit(job, [dog])
    try:
        runner.stream_logs(handle, tmp_path / "train.log", 2**20)
        outcome = runner.wait(handle)
    finally:
        runner.cancel(handle)
    assert outcome.killed_for is not None and "passed the 2.00 GB cap" in outcome.killed_for
    assert 1.5 < outcome.seconds < 10
    assert outcome.exit_code == 137 and not outcome.timed_out
    assert 2 * GiB < dog.peak_bytes < 4 * GiB
    assert leftovers(docker_client, run_id) == []
    events = [s.get("event") for s in _samples(tmp_path / "nvml.jsonl")]
    assert events[0] == "baseline" and "kill" in events and events[-1] == "end"
