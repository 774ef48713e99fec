"""Slots on the real Docker engine: each GPU slot's train container asks for its own GPU and no
other (read back from the created container: no GPU here to start it on), and CPU slots'
containers run pinned to their own cores, at the same time (for real, on this machine)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sandbox_support import leftovers, rid
from test_settings import FakeNVML

from controller.settings import load_settings
from controller.slots import GiB, Slot, plan_slots
from evaluator.profiles import get_profile
from sandbox import specs
from sandbox.docker_runner import DockerRunner
from sandbox.errors import SandboxError
from sandbox.experiment import run_experiment
from sandbox.limits import Limits
from sandbox.result import ExperimentSpec

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("OVERNIGHT_") or name == "ANTHROPIC_API_KEY":
            monkeypatch.delenv(name)


class CreatedContainers:
    """NVML as the VRAM watchdog of a GPU run meets it: called once the train container is
    created and just before it starts. It reads the run's containers back from the engine, notes
    which GPU the watchdog asked for, and stops the run there (there is no GPU to start it on)."""

    class NVMLError(Exception):
        pass

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.watched: int | None = None
        self.containers: dict[str, dict[str, Any]] = {}  # part (job, keeper) -> docker inspect

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self.watched = index
        found = self.client.containers.list(all=True, filters={"label": f"{specs.LABEL_RUN}={self.run_id}"})
        self.containers = {c.labels[specs.LABEL_PART]: c.attrs for c in found}
        raise self.NVMLError("the test stops the run before its container starts")


def test_each_gpu_slot_asks_for_its_own_gpu_and_no_other(
    images: str, docker_client: Any, stub_data_dir: Path, seed_train_py: Path, tmp_path: Path
) -> None:
    settings = load_settings(profile="gpu", gpus="1,3")
    slots = plan_slots(settings, nvml=FakeNVML(4), host_memory_bytes=256 * GiB)
    assert slots == [Slot(0, gpu=1), Slot(1, gpu=3)]
    for slot in slots:
        run_id = rid(f"slot-gpu{slot.gpu}")
        nvml = CreatedContainers(docker_client, run_id)
        spec = ExperimentSpec(
            run_id=run_id,
            train_py=seed_train_py,
            run_dir=tmp_path / run_id,
            profile="gpu",
            data_dir=stub_data_dir,
            image=images,
            gpu=slot.gpu,
            cpuset=slot.cpuset,
            memory_limit_gb=settings.container_memory_gb,
        )
        with pytest.raises(SandboxError, match=f"NVML unavailable for GPU {slot.gpu} "):
            run_experiment(spec, runner=DockerRunner(docker_client, tick_s=0.1), nvml=nvml)
        assert nvml.watched == slot.gpu  # the VRAM watchdog watches the slot's GPU
        job, keeper = nvml.containers["job"], nvml.containers["keeper"]
        assert job["Name"] == f"/{specs.container_name(run_id, 'train')}"
        assert job["State"]["Status"] == "created"  # read back before it ever started
        requests = job["HostConfig"]["DeviceRequests"]
        assert len(requests) == 1, requests
        assert requests[0]["DeviceIDs"] == [str(slot.gpu)]  # this GPU, no other
        assert requests[0]["Count"] in (0, None)  # not "all GPUs" (-1)
        assert requests[0]["Capabilities"] == [["gpu"]]
        assert f"NVIDIA_VISIBLE_DEVICES={slot.gpu}" in job["Config"]["Env"]
        assert job["HostConfig"]["CpusetCpus"] == ""  # a GPU slot is not pinned to cores
        assert job["HostConfig"]["Memory"] == int(settings.container_memory_gb * GiB)
        assert not keeper["HostConfig"]["DeviceRequests"]  # the keeper gets no GPU
        assert leftovers(docker_client, run_id) == []


PRINT_CPUS = textwrap.dedent("""\
    import os, time
    from pathlib import Path

    v2 = Path("/sys/fs/cgroup/cpuset.cpus.effective")
    v1 = Path("/sys/fs/cgroup/cpuset/cpuset.effective_cpus")
    print("affinity:", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))))
    print("cgroup:", (v2 if v2.exists() else v1).read_text().strip())
    print("started:", time.time())
    time.sleep(1.5)
    print("ended:", time.time())
""")


def cores_of(cpuset: str) -> set[int]:
    cores: set[int] = set()
    for part in cpuset.split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def test_cpu_slots_run_at_once_each_pinned_to_its_own_cores(
    images: str, docker_client: Any, stub_data_dir: Path, tmp_path: Path
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two CPU slots need two usable cores; this process may use one")
    slots = plan_slots(load_settings(profile="test", slots="2"), host_memory_bytes=64 * GiB)
    assert len(slots) == 2 and not cores_of(slots[0].cpuset or "") & cores_of(slots[1].cpuset or "")
    train_py = tmp_path / "train.py"
    train_py.write_text(PRINT_CPUS)
    runner = DockerRunner(docker_client, tick_s=0.1)
    image = runner.image_id(images)
    limits = Limits.for_profile(get_profile("test"))
    jobs = [
        specs.train_job(
            run_id=rid(f"slot-cpu{slot.index}"),
            image=image,
            profile="test",
            seed=0,
            gpu=None,
            memory_gb=0.5,
            data_dir=stub_data_dir,
            train_py=train_py,
            limits=limits,
            labels={},
            cpuset=slot.cpuset,
        )
        for slot in slots
    ]
    handles = []
    try:
        for job in jobs:
            handles.append(runner.submit(job))
            runner.stream_logs(handles[-1], tmp_path / f"{job.run_id}.log", 2**20)
        outcomes = [runner.wait(handle) for handle in handles]
    finally:
        for handle in handles:
            runner.cancel(handle)
    seen = []
    for slot, job, outcome in zip(slots, jobs, outcomes, strict=False):
        log = (tmp_path / f"{job.run_id}.log").read_text()
        assert outcome.exit_code == 0, log
        lines = dict(line.split(": ", 1) for line in log.splitlines() if ": " in line)
        assert cores_of(lines["affinity"]) == cores_of(slot.cpuset or "")  # what the process may use
        assert cores_of(lines["cgroup"]) == cores_of(slot.cpuset or "")  # what its cgroup enforces
        seen.append((float(lines["started"]), float(lines["ended"])))
        assert leftovers(docker_client, job.run_id) == []
    (a_start, a_end), (b_start, b_end) = seen
    assert a_start < b_end and b_start < a_end  # the two slots ran at the same time
