"""Every container's configuration, in one place so the security flags read on one screen.

Two containers per experiment, both from the evaluator image, both locked down the same way:
- train: the run's train.py, the train split, tokenizer and manifest read-only, /out writable.
- eval: the checked copy of the model artifact, the val split, tokenizer and manifest read-only,
  /score writable. Never train.py, never the train container's /out.
Nothing comes from the host's environment: each variable is listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from evaluator import layout

Role = Literal["train", "eval"]

LABEL_RUN = "overnight.run"  # every container the sandbox makes carries it (cleanup finds them)
LABEL_ROLE = "overnight.role"

USER = "1000:1000"  # the evaluator image's `overnight` user (has a passwd entry)
HOME = "/home/overnight"  # a tmpfs: torch.compile, Triton and friends cache under it
PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EVALUATOR_ROOT = "/opt/overnight"  # evaluator/ lives here, root-owned, read-only

TRAIN_PY = "/work/train.py"
DATA = "/data"
OUT = "/out"
ARTIFACT_DIR = "/artifact"
SCORE_DIR = "/score"

PIDS_LIMIT = 4096  # threads count too (Inductor's compile workers); stops fork bombs
SHM_SIZE = "2g"  # docker's default /dev/shm is 64 MB; torch dataloader workers need more
TMPFS = {
    "/tmp": "rw,exec,nosuid,nodev,size=4g",  # exec: Triton loads the objects it compiles
    HOME: "rw,exec,nosuid,nodev,size=2g,uid=1000,gid=1000,mode=0700",
}
LOG_CONFIG = LogConfig(type="json-file", config={"max-size": "50m", "max-file": "2"})


@dataclass(frozen=True)
class Binds:
    """Host paths a container may see (absolute), all prepared by the sandbox."""

    data_dir: Path
    train_py: Path | None = None  # run_dir/train.py (train only)
    out_dir: Path | None = None  # run_dir/out (train only)
    artifact_dir: Path | None = None  # run_dir/artifact, holding the checked copy (eval only)
    score_dir: Path | None = None  # run_dir/score (eval only)


def _ro(source: Path, target: str) -> Mount:
    return Mount(target=target, source=str(source), type="bind", read_only=True)


def _rw(source: Path, target: str) -> Mount:
    return Mount(target=target, source=str(source), type="bind", read_only=False)


def environment(gpu: int | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "HOME": HOME,
        "PATH": PATH,
        "PYTHONPATH": EVALUATOR_ROOT,
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        # "void" = no GPU even under an nvidia default runtime or a CUDA base image's "all".
        "NVIDIA_VISIBLE_DEVICES": "void" if gpu is None else str(gpu),
        **(extra or {}),
    }


def train_environment(profile: str, seed: int, gpu: int | None) -> dict[str, str]:
    return environment(gpu, {
        "OVERNIGHT_PROFILE": profile,
        "OVERNIGHT_DATA_DIR": DATA,
        "OVERNIGHT_OUT_DIR": OUT,
        "OVERNIGHT_SEED": str(seed),
    })


def train_mounts(binds: Binds) -> list[Mount]:
    assert binds.train_py is not None and binds.out_dir is not None
    return [
        _ro(binds.train_py, TRAIN_PY),
        _ro(binds.data_dir / layout.MANIFEST, f"{DATA}/{layout.MANIFEST}"),
        _ro(binds.data_dir / layout.TOKENIZER_DIR, f"{DATA}/{layout.TOKENIZER_DIR}"),
        _ro(binds.data_dir / layout.TRAIN_DIR, f"{DATA}/{layout.TRAIN_DIR}"),
        _rw(binds.out_dir, OUT),
    ]


def eval_mounts(binds: Binds) -> list[Mount]:
    assert binds.artifact_dir is not None and binds.score_dir is not None
    return [
        _ro(binds.artifact_dir, ARTIFACT_DIR),
        _ro(binds.data_dir / layout.MANIFEST, f"{DATA}/{layout.MANIFEST}"),
        _ro(binds.data_dir / layout.TOKENIZER_DIR, f"{DATA}/{layout.TOKENIZER_DIR}"),
        _ro(binds.data_dir / layout.VAL_DIR, f"{DATA}/{layout.VAL_DIR}"),
        _rw(binds.score_dir, SCORE_DIR),
    ]


def eval_command(profile: str, gpu: int | None) -> list[str]:
    return ["python", "-m", "evaluator.score",
            "--artifact", f"{ARTIFACT_DIR}/{layout.ARTIFACT_NAME}", "--data-dir", DATA,
            "--profile", profile, "--out", f"{SCORE_DIR}/{layout.SCORE_NAME}",
            "--device", "cpu" if gpu is None else "cuda"]


def container_name(run_id: str, role: Role) -> str:
    return f"overnight-{run_id}-{role}"


def locked_down(*, image: str, run_id: str, role: Role, command: list[str],
                environment: dict[str, str], mounts: list[Mount], memory_gb: float,
                gpu: int | None, labels: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments for `client.containers.create`: the one lockdown every container gets."""
    memory = int(memory_gb * 2**30)
    return dict(
        image=image,
        command=command,
        name=container_name(run_id, role),
        labels={**labels, LABEL_RUN: run_id, LABEL_ROLE: role},
        user=USER,
        working_dir="/tmp",
        environment=environment,
        use_config_proxy=False,  # else proxy settings from ~/.docker/config.json leak in
        mounts=mounts,
        network_mode="none",
        read_only=True,
        tmpfs=dict(TMPFS),
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        privileged=False,
        ipc_mode="private",
        init=True,
        pids_limit=PIDS_LIMIT,
        mem_limit=memory,
        memswap_limit=memory,  # no swap: the memory limit is the limit
        shm_size=SHM_SIZE,
        ulimits=[Ulimit(name="core", soft=0, hard=0)],
        log_config=LOG_CONFIG,
        device_requests=(None if gpu is None else
                         [DeviceRequest(device_ids=[str(gpu)], capabilities=[["gpu"]])]),
        hostname="sandbox",
        stdin_open=False,
        tty=False,
    )


def train_container(*, image: str, run_id: str, profile: str, seed: int, gpu: int | None,
                    memory_gb: float, binds: Binds, labels: dict[str, str]) -> dict[str, Any]:
    return locked_down(image=image, run_id=run_id, role="train", command=["python", TRAIN_PY],
                       environment=train_environment(profile, seed, gpu),
                       mounts=train_mounts(binds), memory_gb=memory_gb, gpu=gpu, labels=labels)


def eval_container(*, image: str, run_id: str, profile: str, gpu: int | None, memory_gb: float,
                   binds: Binds, labels: dict[str, str]) -> dict[str, Any]:
    return locked_down(image=image, run_id=run_id, role="eval", command=eval_command(profile, gpu),
                       environment=environment(gpu), mounts=eval_mounts(binds),
                       memory_gb=memory_gb, gpu=gpu, labels=labels)
