"""`make doctor`: one row per thing a night depends on (ok, warning or missing, with the fix), and
exit 1 when a night could not start. The engine is faked at the docker SDK client object, the GPUs
at the NVML library object, the disk at shutil.disk_usage; the data checks use real prepared data,
and the docker-marked tests ask the real engine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from rich.console import Console

from controller import doctor
from controller.doctor import Check, Engine, Seams, run_checks, run_doctor
from controller.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
Usage = namedtuple("Usage", "total used free")
GIB = 1 << 30
NAMES = [
    "engine",
    "permission",
    "compose",
    "base",
    "images",
    "gpus",
    "nvidia runtime",
    "data",
    "disk runs/",
    "disk data/",
    "ANTHROPIC_API_KEY",
    "profile",
    "agent",
]


class FakeImage:
    def __init__(self, ref: str) -> None:
        self.id = "sha256:" + (format(abs(hash(ref)), "x") * 8)[:64]
        self.attrs = {"Created": "2026-11-30T12:33:04.123Z"}


class FakeClient:
    """The docker SDK client as far as the doctor uses it."""

    def __init__(
        self,
        images: tuple[str, ...] = ("overnight-evaluator:latest", "overnight-prepare:latest", "overnight-base:bookworm"),
        runtimes: tuple[str, ...] = ("runc",),
        torch: bytes = b"2.13.0+cpu\n",
    ) -> None:
        self._images = set(images)
        self.runtimes = runtimes
        self.torch = torch
        self.runs: list[tuple[str, list[str], dict[str, Any]]] = []
        self.images = self
        self.containers = self

    def version(self) -> dict:
        return {"Version": "20.10.24"}

    def info(self) -> dict:
        return {"Runtimes": {name: {"path": name} for name in self.runtimes}}

    def get(self, ref: str) -> FakeImage:  # images.get
        if ref not in self._images:
            raise docker.errors.ImageNotFound(f"No such image: {ref}")
        return FakeImage(ref)

    def run(self, image: str, command: list[str], **kwargs: Any) -> bytes:  # containers.run
        self.runs.append((image, command, kwargs))
        return self.torch

    def close(self) -> None:
        pass


class FakeNVML:
    """The pynvml module: a driver with these GPUs, or none (no library) when names is None."""

    def __init__(self, names: list[str] | None) -> None:
        self.names = names

    def nvmlInit(self) -> None:
        if self.names is None:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.names or [])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return (self.names or [])[handle].encode()

    def nvmlShutdown(self) -> None:
        pass


def compose_ok(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    if cmd[:2] == ["docker", "compose"]:
        return subprocess.CompletedProcess(cmd, 0, "2.29.1\n", "")
    return subprocess.CompletedProcess(cmd, 1, "", "unknown")


def which_all(name: str) -> str:
    return f"/usr/bin/{name}"


def seams(client: Any = None, nvml: Any = None, connect: Any = None, **extra: Any) -> Seams:
    client = client or FakeClient()
    return Seams(
        connect=connect or (lambda: client),
        nvml=nvml or FakeNVML(None),
        run=compose_ok,
        which=which_all,
        disk_usage=lambda path: Usage(500 * GIB, 100 * GIB, 400 * GIB),
        **extra,
    )


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("OVERNIGHT_") or name in ("ANTHROPIC_API_KEY", "BASE_IMAGE", "DOCKER_HOST"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def output_of(overrides: dict[str, Any], s: Seams) -> tuple[int, str]:
    console = Console(record=True, width=200, force_terminal=False)
    code = run_doctor(overrides, console, s)
    return code, console.export_text()


# --- the whole table ---------------------------------------------------------------------------


def test_a_ready_machine_shows_every_row_ok_and_exits_zero(test_data_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-READY")
    code, text = output_of({"profile": "test", "data_dir": str(test_data_dir)}, seams())
    assert code == 0
    assert "a night can start here (0 warnings)" in text
    checks = run_checks({"profile": "test", "data_dir": str(test_data_dir)}, seams())
    assert [c.name for c in checks] == NAMES
    assert {c.name: c.state for c in checks} == dict.fromkeys(NAMES, "ok")
    rows = by_name(checks)
    assert rows["engine"].detail == "Docker 20.10.24 at unix:///var/run/docker.sock"
    assert rows["images"].detail.endswith("torch 2.13.0+cpu")
    assert rows["data"].detail.startswith(f"{test_data_dir} verified against its manifest")
    assert rows["profile"].detail == "test (chosen explicitly)"
    assert rows["agent"].detail == "anthropic (ANTHROPIC_API_KEY is set)"


def test_a_stopped_engine_is_missing_with_the_command_that_starts_it_and_exits_one() -> None:
    def refused() -> Any:
        raise docker.errors.DockerException(
            "Error while fetching server API version: ('Connection aborted.', FileNotFoundError(2, 'No such file'))"
        )

    code, text = output_of({"profile": "cpu"}, seams(connect=refused))
    assert code == 1
    rows = by_name(run_checks({"profile": "cpu"}, seams(connect=refused)))
    assert rows["engine"].state == "missing"
    assert rows["engine"].detail == "nothing answers at unix:///var/run/docker.sock (no socket)"
    assert "scripts/setup-host" in rows["engine"].fix
    assert rows["images"].state == "warning"  # not looked at, and not counted twice
    assert "a night cannot start here: fix engine" in text


def test_no_permission_on_the_socket_is_missing_with_the_usermod_fix() -> None:
    def denied() -> Any:
        raise docker.errors.DockerException(
            "Error while fetching server API version: ('Connection aborted.', PermissionError(13, 'Permission denied'))"
        )

    rows = by_name(run_checks({"profile": "cpu"}, seams(connect=denied)))
    assert rows["permission"].state == "missing"
    assert "usermod -aG docker" in rows["permission"].fix
    assert rows["engine"].detail.endswith("but not for this user")


def test_a_socket_the_user_cannot_write_is_missing_even_with_the_engine_down(tmp_path: Path) -> None:
    socket = tmp_path / "docker.sock"
    socket.write_text("")
    engine = Engine(f"unix://{socket}", error="connection refused")
    row = doctor.check_permission(engine, user="ada", access=lambda path, mode: False)
    assert (row.state, row.detail) == ("missing", f"ada may not use {socket}")
    assert doctor.check_permission(engine, user="ada", access=lambda path, mode: True).state == "warning"


# --- GPUs -----------------------------------------------------------------------------------------


def test_gpus_seen_by_nvml_are_listed_by_name() -> None:
    gpus = doctor.probe_gpus(FakeNVML(["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA A10"]))
    assert doctor.check_gpus(gpus).detail == "2 x NVIDIA H100 80GB HBM3, 1 x NVIDIA A10"
    none = doctor.check_gpus(doctor.probe_gpus(FakeNVML(None)))
    assert (none.state, none.detail) == (
        "ok",
        "none seen by NVML (NVML Shared Library Not Found): nights run on the CPU",
    )


def test_a_gpu_host_without_the_nvidia_runtime_is_missing_the_toolkit() -> None:
    nvml = FakeNVML(["NVIDIA H100 80GB HBM3"])
    rows = by_name(run_checks({}, seams(client=FakeClient(runtimes=("runc",)), nvml=nvml)))
    assert rows["nvidia runtime"].state == "missing"
    assert "NVIDIA container toolkit" in rows["nvidia runtime"].fix
    with_toolkit = by_name(
        run_checks({"profile": "gpu"}, seams(client=FakeClient(runtimes=("runc", "nvidia")), nvml=nvml))
    )
    assert with_toolkit["nvidia runtime"].state == "ok"
    # Asked for the cpu profile explicitly, the idle GPU is a warning, not a reason to refuse.
    cpu = by_name(run_checks({"profile": "cpu"}, seams(client=FakeClient(runtimes=("runc",)), nvml=nvml)))
    assert cpu["nvidia runtime"].state == "warning"


# --- images, base, compose --------------------------------------------------------------------------


def test_torch_is_read_from_the_image_metadata_in_a_locked_down_container() -> None:
    client = FakeClient()
    assert doctor.image_torch_version(client, "overnight-evaluator:latest") == "2.13.0+cpu"
    image, command, kwargs = client.runs[0]
    assert image == "overnight-evaluator:latest"
    assert command == ["python3", "-c", "import importlib.metadata as m; print(m.version('torch'))"]
    assert kwargs["network_mode"] == "none" and kwargs["read_only"] is True
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["user"] == "65534:65534" and kwargs["remove"] is True
    assert not {"volumes", "mounts", "environment", "privileged", "device_requests"} & set(kwargs)


def test_images_not_built_are_a_warning_that_make_overnight_builds() -> None:
    engine = doctor.probe_engine(lambda: FakeClient(images=("overnight-evaluator:latest",)))
    row = doctor.check_images(engine, "overnight-evaluator:latest")
    assert (row.state, row.detail) == ("warning", "not built: overnight-prepare:latest")
    assert "make images" in row.fix


def test_the_base_is_base_image_or_debootstrap_and_missing_without_either(monkeypatch) -> None:
    bare = doctor.probe_engine(lambda: FakeClient(images=()))
    built = doctor.probe_engine(lambda: FakeClient(images=("overnight-evaluator:latest",)))

    def nowhere(name: str) -> None:
        return None

    assert doctor.check_base(bare, "pytorch/pytorch:2.9.0", "overnight-evaluator:latest", nowhere).state == "ok"
    assert doctor.check_base(bare, None, "overnight-evaluator:latest", which_all).state == "ok"
    assert doctor.check_base(bare, None, "overnight-evaluator:latest", nowhere).state == "missing"
    assert doctor.check_base(built, None, "overnight-evaluator:latest", nowhere).state == "warning"


def test_compose_plugin_or_docker_compose_else_missing() -> None:
    assert doctor.check_compose(compose_ok, which_all).detail == "docker compose 2.29.1"

    def v1_only(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        ok = cmd[0] == "docker-compose"
        return subprocess.CompletedProcess(cmd, 0 if ok else 1, "1.29.2\n" if ok else "", "")

    assert doctor.check_compose(v1_only, which_all).detail == "docker-compose 1.29.2"
    missing = doctor.check_compose(v1_only, lambda name: None)
    assert missing.state == "missing" and "apt-get install docker-compose" in missing.fix


# --- data, disk, key, choice ----------------------------------------------------------------------


def test_unprepared_data_is_a_warning_and_damaged_data_is_missing(test_data_dir: Path, tmp_path: Path) -> None:
    absent = doctor.check_data(Settings(profile="test", data_dir=tmp_path / "nothing"))
    assert absent.state == "warning" and "make prepare PROFILE=test" in absent.fix
    damaged = tmp_path / "damaged"
    shutil.copytree(test_data_dir, damaged)
    shard = min((damaged / "train").glob("shard_*.bin"))
    shard.write_bytes(b"\x00" + shard.read_bytes()[1:])
    row = doctor.check_data(Settings(profile="test", data_dir=damaged))
    assert row.state == "missing"
    assert f"rm -rf {damaged} && make prepare PROFILE=test" in row.fix


def test_little_free_disk_is_a_warning_and_almost_none_is_missing(tmp_path: Path) -> None:
    def free(gib: float) -> Any:
        return lambda path: Usage(100 * GIB, 0, int(gib * GIB))

    runs = tmp_path / "runs" / "not" / "made" / "yet"
    assert doctor.check_disk("disk runs/", runs, free(50)).state == "ok"
    warn = doctor.check_disk("disk runs/", runs, free(4))
    assert (warn.state, warn.detail) == ("warning", f"4.0 GiB free at {tmp_path}")
    assert doctor.check_disk("disk runs/", runs, free(0.5)).state == "missing"


def test_the_api_key_is_never_shown_not_even_in_part(monkeypatch) -> None:
    key = "sk-ant-api03-Zq8Xv2LmN4pR7tY1wK9sB3dF6hJ0cV5e"
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    _, text = output_of({"profile": "cpu"}, seams())
    assert "ANTHROPIC_API_KEY" in text and "set (not shown)" in text
    leaked = [key[i : i + 5] for i in range(len(key) - 4) if key[i : i + 5] in text]
    assert leaked == []


def test_the_anthropic_agent_without_a_key_is_missing() -> None:
    row = doctor.check_api_key(Settings(profile="cpu", agent="anthropic"))
    assert row.state == "missing"
    assert doctor.check_api_key(Settings(profile="cpu")).state == "warning"


def test_profile_and_agent_rows_say_what_make_overnight_would_choose(monkeypatch) -> None:
    rows = by_name(doctor.check_choice(Settings(profile="cpu")))
    assert rows["profile"].detail == "cpu (chosen explicitly)"
    assert rows["agent"].detail.startswith("search, the offline optuna agent")
    monkeypatch.setattr("controller.settings.nvml_gpu_count", lambda nvml=None: 0)
    detected = by_name(doctor.check_choice(Settings()))
    assert detected["profile"].detail == "cpu (no GPU with the NVIDIA container runtime found)"
    monkeypatch.setattr("controller.settings.nvml_gpu_count", lambda nvml=None: 8)
    monkeypatch.setattr("controller.settings.docker_runtimes", lambda info=None: {"runc", "nvidia"})
    assert by_name(doctor.check_choice(Settings()))["profile"].detail == "gpu (GPU and NVIDIA container runtime found)"


def test_a_bad_setting_is_one_missing_row_and_the_rest_still_shows() -> None:
    checks = run_checks({"profile": "huge"}, seams())
    rows = by_name(checks)
    assert rows["settings"].state == "missing"
    assert rows["settings"].detail.startswith("bad setting --profile")
    assert rows["engine"].state == "ok" and "disk runs/" in rows


# --- the command, for real ----------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "controller", "doctor", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO_ROOT,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "300", **(env or {})},
        timeout=120,
    )


def test_doctor_with_no_engine_exits_one_and_says_so(tmp_path: Path) -> None:
    done = run_cli("--profile", "cpu", env={"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"}, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"nothing answers at unix://{tmp_path}/nothing.sock" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1] == "a night cannot start here: fix engine"


@pytest.mark.docker
def test_doctor_against_the_real_engine_reads_torch_from_the_image(tmp_path: Path, images: str) -> None:
    import re

    client = docker.from_env()
    requirements = (REPO_ROOT / "images" / "requirements.txt").read_text()
    pinned = re.search(r"^torch==([^\s#;]+)", requirements, re.M).group(1)  # the one pin of the project
    assert doctor.image_torch_version(client, "overnight-evaluator:latest").startswith(pinned)
    done = run_cli("--profile", "cpu", cwd=tmp_path)
    assert "│ engine " in done.stdout and f"torch {pinned}" in done.stdout
    assert done.returncode == 0, done.stdout
