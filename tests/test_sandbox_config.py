"""The containers' configuration, read back from the engine: what Docker actually enforces."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from sandbox_support import in_background, script, spec_for

from evaluator.profiles import get_profile
from sandbox import specs
from sandbox.experiment import run_experiment
from sandbox.limits import Limits

pytestmark = pytest.mark.docker

HOST_SECRET = "sk-ant-fake-host-secret-0000"

WAITING_TRAIN_PY = """
import json, os, time
print("ENV " + json.dumps(dict(os.environ)), flush=True)
print("waiting for the test", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists("/out/go") and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def _wait_for_running(client: docker.DockerClient, run_id: str, role: str) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = client.containers.list(
            filters={"label": [f"overnight.run={run_id}", "overnight.part=job", f"overnight.role={role}"]}
        )
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no running {role} container for {run_id}")


@pytest.fixture(scope="module")
def live_train(
    images: str, docker_client: docker.DockerClient, stub_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A real run_experiment whose train container waits while the test reads its config."""
    tmp = tmp_path_factory.mktemp("live")
    spec = spec_for(
        tmp,
        script(tmp, WAITING_TRAIN_PY),
        stub_data_dir,
        "cfg-live",
        labels={"overnight.tag": "cfgtest"},
        memory_limit_gb=1.5,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANTHROPIC_API_KEY", HOST_SECRET)
        mp.setenv("OVERNIGHT_HOST_ONLY", "1")
        thread, box = in_background(lambda: run_experiment(spec))
        container = _wait_for_running(docker_client, spec.run_id, "train")
        attrs = container.attrs
        volume = docker_client.volumes.get(specs.volume_name(spec.run_id, "train")).attrs
        (Path(volume["Mountpoint"]) / "go").touch()  # the host (root) sees the tmpfs volume
        thread.join(60)
    assert "error" not in box, box.get("error")
    log = (spec.run_dir / "train.log").read_text()
    env_line = next(line for line in log.splitlines() if line.startswith("ENV "))
    return {
        "attrs": attrs,
        "spec": spec,
        "result": box["result"],
        "volume": volume,
        "env_inside": json.loads(env_line[4:]),
    }


def _mounts(attrs: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    return {m["Destination"]: (m["Source"], m["RW"]) for m in attrs["Mounts"]}


def test_train_container_has_no_network(live_train: dict[str, Any]) -> None:
    assert live_train["attrs"]["HostConfig"]["NetworkMode"] == "none"


def test_train_container_root_is_read_only_with_all_capabilities_dropped(live_train) -> None:
    host = live_train["attrs"]["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["CapAdd"] in (None, [])
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Privileged"] is False


def test_train_container_runs_as_the_non_root_user_under_an_init(live_train) -> None:
    attrs = live_train["attrs"]
    assert attrs["Config"]["User"] == "1000:1000"
    assert attrs["HostConfig"]["Init"] is True


def test_train_container_has_pids_memory_and_shm_limits(live_train) -> None:
    host = live_train["attrs"]["HostConfig"]
    assert host["PidsLimit"] == specs.PIDS_LIMIT
    assert host["Memory"] == int(1.5 * 2**30)
    assert host["MemorySwap"] == host["Memory"]  # no swap beyond the limit
    assert host["ShmSize"] == 2 * 2**30
    assert host["LogConfig"]["Config"] == {"max-size": "50m", "max-file": "2"}


def test_train_tmpfs_allows_exec_and_home_is_private(live_train) -> None:
    tmpfs = live_train["attrs"]["HostConfig"]["Tmpfs"]
    assert "exec" in tmpfs["/tmp"].split(",") and "noexec" not in tmpfs["/tmp"]
    assert "uid=1000" in tmpfs[specs.HOME] and "mode=0700" in tmpfs[specs.HOME]


def test_train_container_mounts_train_data_read_only_and_only_out_writable(live_train) -> None:
    spec = live_train["spec"]
    mounts = _mounts(live_train["attrs"])
    data = Path(spec.data_dir).resolve()
    run_dir = Path(spec.run_dir).resolve()
    out_source, out_rw = mounts.pop("/out")
    assert mounts == {
        "/work/train.py": (str(run_dir / "train.py"), False),
        "/data/manifest.json": (str(data / "manifest.json"), False),
        "/data/tokenizer": (str(data / "tokenizer"), False),
        "/data/train": (str(data / "train"), False),
    }
    assert out_rw and out_source == live_train["volume"]["Mountpoint"]  # /out is the run's volume
    assert not any("docker.sock" in src for src, _ in mounts.values())


def test_out_is_a_tmpfs_the_kernel_caps_nosuid_nodev_noexec(live_train) -> None:
    volume = live_train["volume"]
    options = volume["Options"]
    assert volume["Driver"] == "local" and options["type"] == "tmpfs"
    flags = options["o"].split(",")
    assert {"nosuid", "nodev", "noexec", "uid=1000", "gid=1000", "mode=0700"} <= set(flags)
    limits = Limits.for_profile(get_profile("test"))
    assert f"size={limits.out_max_bytes}" in flags and f"nr_inodes={limits.out_max_files + 1}" in flags
    assert volume["Labels"]["overnight.run"] == live_train["spec"].run_id


def test_the_volume_and_its_keeper_are_gone_after_the_run(live_train, docker_client) -> None:
    run_id = live_train["spec"].run_id
    assert docker_client.volumes.list(filters={"label": f"overnight.run={run_id}"}) == []
    assert docker_client.containers.list(all=True, filters={"label": f"overnight.run={run_id}"}) == []


def test_train_environment_is_explicit_and_carries_nothing_from_the_host(live_train) -> None:
    spec = live_train["spec"]
    env = dict(item.split("=", 1) for item in live_train["attrs"]["Config"]["Env"])
    assert "ANTHROPIC_API_KEY" not in env and "OVERNIGHT_HOST_ONLY" not in env
    assert HOST_SECRET not in " ".join(live_train["attrs"]["Config"]["Env"])
    assert set(env) == set(specs.train_environment("test", 0, None, 0.0))
    assert env["OVERNIGHT_PROFILE"] == "test" and env["OVERNIGHT_SEED"] == str(spec.seed)
    assert env["OVERNIGHT_BUDGET_S"] == "20" and env["OVERNIGHT_CLOCK"] == "container"  # told its budget
    assert env["OVERNIGHT_DATA_DIR"] == "/data" and env["OVERNIGHT_OUT_DIR"] == "/out"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    inside = live_train["env_inside"]
    assert "ANTHROPIC_API_KEY" not in inside and HOST_SECRET not in str(inside)
    assert os.environ.get("ANTHROPIC_API_KEY") != HOST_SECRET  # the fixture restored the host


def test_train_container_is_labelled_for_cleanup(live_train) -> None:
    labels = live_train["attrs"]["Config"]["Labels"]
    assert labels["overnight.run"] == live_train["spec"].run_id and "cfg-live" in labels["overnight.run"]
    assert labels["overnight.role"] == "train"
    assert labels["overnight.tag"] == "cfgtest"


def test_cpu_run_requests_no_gpu(live_train) -> None:
    assert not live_train["attrs"]["HostConfig"].get("DeviceRequests")


def test_the_waiting_run_then_ends_without_a_model(live_train) -> None:
    result = live_train["result"]
    assert result.status == "crash" and "no model.pt2" in result.reason


# --- the eval container and GPU requests: created (not started) and read back ---------------


@pytest.fixture
def created(images: str, docker_client: docker.DockerClient, stub_data_dir: Path, tmp_path: Path):
    made: list[Any] = []
    (tmp_path / "train.py").write_text("pass\n")
    (tmp_path / "model.pt2").write_bytes(b"PK")
    limits = Limits.for_profile(get_profile("test"))

    def create(job) -> dict[str, Any]:
        docker_client.volumes.create(**specs.output_volume(job))
        container = docker_client.containers.create(**specs.container_config(job))
        made.append((container, specs.volume_name(job.run_id, job.role)))
        container.reload()
        return container.attrs

    yield create, stub_data_dir.resolve(), tmp_path, limits
    for container, volume in made:
        container.remove(force=True)
        docker_client.volumes.get(volume).remove(force=True)


def test_eval_container_sees_artifact_and_eval_rows_read_only_and_never_train_py(created) -> None:
    create, data, tmp, limits = created
    job = specs.eval_job(
        run_id="cfg-eval",
        image="overnight-evaluator:latest",
        profile="test",
        gpu=None,
        memory_gb=2.0,
        data_dir=data,
        artifact=tmp / "model.pt2",
        limits=limits,
        labels={},
    )
    attrs = create(job)
    mounts = _mounts(attrs)
    score_source, score_rw = mounts.pop("/score")
    assert mounts == {
        "/artifact/model.pt2": (str(tmp / "model.pt2"), False),
        "/data/manifest.json": (str(data / "manifest.json"), False),
        "/data/tokenizer": (str(data / "tokenizer"), False),
        "/data/eval": (str(data / "eval"), False),
    }
    assert score_rw and "/volumes/" in score_source  # its own volume, not a host folder
    assert not any(src.endswith("train.py") or "/val" in src for src, _ in mounts.values())
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges:true"]
    assert attrs["Config"]["User"] == "1000:1000" and host["Init"] is True
    assert attrs["Config"]["Cmd"][:3] == ["python", "-m", "evaluator.score"]
    assert attrs["Config"]["Labels"]["overnight.role"] == "eval"
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert not any(key.startswith("OVERNIGHT_") for key in env)


def test_gpu_run_requests_exactly_its_assigned_gpu(created) -> None:
    create, data, tmp, limits = created
    job = specs.train_job(
        run_id="cfg-gpu",
        image="overnight-evaluator:latest",
        profile="gpu",
        seed=0,
        gpu=3,
        memory_gb=2.0,
        data_dir=data,
        train_py=tmp / "train.py",
        limits=limits,
        labels={},
    )
    attrs = create(job)
    requests = attrs["HostConfig"]["DeviceRequests"]
    assert len(requests) == 1
    assert requests[0]["DeviceIDs"] == ["3"] and requests[0]["Capabilities"] == [["gpu"]]
    assert requests[0]["Count"] in (0, None)  # ids, not "all"
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "3"
    evaluating = create(
        specs.eval_job(
            run_id="cfg-gpu2",
            image="overnight-evaluator:latest",
            profile="gpu",
            gpu=3,
            memory_gb=2.0,
            data_dir=data,
            artifact=tmp / "model.pt2",
            limits=limits,
            labels={},
        )
    )
    assert evaluating["Config"]["Cmd"][-2:] == ["--device", "cuda"]


def test_a_cpu_slot_pins_its_containers_to_its_cores(created) -> None:
    create, data, tmp, limits = created
    job = specs.train_job(
        run_id="cfg-cpuset",
        image="overnight-evaluator:latest",
        profile="test",
        seed=0,
        gpu=None,
        memory_gb=1.0,
        data_dir=data,
        train_py=tmp / "train.py",
        limits=limits,
        labels={},
        cpuset="1",
    )
    assert create(job)["HostConfig"]["CpusetCpus"] == "1"
