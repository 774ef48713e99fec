"""Every job's configuration, in one place so the security flags read on one screen.

Two jobs per experiment, both from the evaluator image, both locked down the same way:
- train: the run's train.py, the train split, tokenizer and manifest read-only; /out writable.
- eval: the checked copy of the model artifact, the private eval rows, tokenizer and manifest
  read-only; /score writable. Never train.py, never the train job's /out, never val/.
Nothing comes from the host's environment: each variable is listed here.
- warm-up (sandbox.compile_cache): the night's trusted seed train.py, run once as a train job,
  packs what torch.compile cached into its /out; agent train jobs get a read-only copy of that
  one file, unpacked into their own tmpfs before train.py starts. Never given to an eval job.

The Docker backend (sandbox.docker_runner) gives each job's writable folder as a tmpfs volume
whose size and file count the kernel enforces (mounted nosuid, nodev, noexec), held by a tiny
keeper container that runs no agent code, so the host can copy the one file it wants out of it
after the job ends, and then removes the volume with everything else in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from evaluator import layout
from evaluator.context import BUDGET_ENV, CLOCK_ENV, DATA_DIR_ENV, OUT_DIR_ENV, SEED_ENV
from evaluator.profiles import PROFILE_ENV
from sandbox.limits import Limits
from sandbox.runner import JobSpec, Role

LABEL_RUN = "overnight.run"  # everything the sandbox makes carries it (cleanup finds it)
LABEL_ROLE = "overnight.role"  # train | eval
LABEL_PART = "overnight.part"  # job | keeper | volume
LABEL_TAG = "overnight.tag"  # the night's tag, set by the controller
DEFAULT_IMAGE = "overnight-evaluator:latest"

USER = "1000:1000"  # the evaluator image's `overnight` user (has a passwd entry)
UID = GID = 1000
HOME = "/home/overnight"  # a tmpfs: torch.compile, Triton and friends cache under it
PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EVALUATOR_ROOT = "/opt/overnight"  # evaluator/ lives here, root-owned, read-only

TRAIN_PY = "/work/train.py"
DATA = "/data"
OUT = "/out"
ARTIFACT = f"/artifact/{layout.ARTIFACT_NAME}"
SCORE_DIR = "/score"
DETAIL_NAME = "detail.log"  # the evaluator's private log, beside score.json

# The warm compile cache. Everything torch.compile keeps between processes lands under one folder
# on the job's own tmpfs: Inductor's default cache folder for the user `overnight` (its FX graph,
# AOTAutograd and kernel caches, and, only there, the precompiled C++ headers), with Triton's
# cache (kernels, launchers) put below it. USER pins the user name Inductor reads (getpass), so
# the folder is the same whatever the image's uid-1000 user is called.
COMPILE_CACHE_DIR = "/tmp/torchinductor_overnight"
COMPILE_CACHE_NAME = "compile-cache.tar"  # what the warm-up job leaves in /out
COMPILE_CACHE_INPUT = f"/cache/{COMPILE_CACHE_NAME}"  # where an agent train job sees it, read-only
WARMUP_BUDGET_S = 1.0  # the warm-up seed is told its deadline passed: one step (compiles), export
WARMUP_MIN_CAP_S = 300.0  # a cold compile may outlast a small profile's cap (trusted code: no budget)

PIDS_LIMIT = 4096  # threads count too (Inductor's compile workers); stops fork bombs
SHM_SIZE = "2g"  # docker's default /dev/shm is 64 MB; torch dataloader workers need more
TMPFS = {
    "/tmp": "rw,exec,nosuid,nodev,size=4g",  # exec: Triton loads the objects it compiles
    HOME: "rw,exec,nosuid,nodev,size=2g,uid=1000,gid=1000,mode=0700",
}
LOG_CONFIG = LogConfig(type="json-file", config={"max-size": "50m", "max-file": "2"})
KEEPER_MEMORY = 64 * 2**20


# ---------------------------------------------------------------------------------------------
# The jobs (backend-neutral)


def environment(gpu: int | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
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
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",  # also the image's: stated here so nothing is implicit
        **(extra or {}),
    }


def compile_cache_environment(root: str = COMPILE_CACHE_DIR) -> dict[str, str]:
    """Where torch.compile caches: `root` (the bare benchmark passes its own)."""
    return {
        "USER": "overnight",
        "LOGNAME": "overnight",
        "TORCHINDUCTOR_CACHE_DIR": root,
        "TRITON_CACHE_DIR": f"{root}/triton",
    }


def train_environment(
    profile: str, seed: int, gpu: int | None, budget_s: float, compile_cache: bool = False
) -> dict[str, str]:
    """train.py is told its budget, counted from the container's start (evaluator.context)."""
    return environment(
        gpu,
        {
            PROFILE_ENV: profile,
            DATA_DIR_ENV: DATA,
            OUT_DIR_ENV: OUT,
            SEED_ENV: str(seed),
            BUDGET_ENV: f"{budget_s:g}",
            CLOCK_ENV: "container",
            **(compile_cache_environment() if compile_cache else {}),
        },
    )


def train_command(compile_cache: bool) -> tuple[str, ...]:
    """train.py; with the night's compile cache, first unpacked by this trusted command into the
    job's own tmpfs (a cache folder read-only in place makes Inductor fail: it writes lock files
    even on a hit). An unusable cache means a cold compile, never a failed run."""
    if not compile_cache:
        return ("python", TRAIN_PY)
    return (
        "sh",
        "-c",
        (
            f"mkdir -p {COMPILE_CACHE_DIR} && {{ tar -xf {COMPILE_CACHE_INPUT} -C {COMPILE_CACHE_DIR} "
            f"|| echo 'overnight: the compile cache could not be unpacked; compiling cold' >&2; }}; "
            f"exec python {TRAIN_PY}"
        ),
    )


def warmup_command() -> tuple[str, ...]:
    """The seed, then (only if it succeeded and compiled something) its compile cache packed into /out."""
    return (
        "sh",
        "-c",
        (
            f"python {TRAIN_PY} && if [ -d {COMPILE_CACHE_DIR} ]; then "
            f"tar -cf {OUT}/{COMPILE_CACHE_NAME} -C {COMPILE_CACHE_DIR} .; fi"
        ),
    )


def eval_command(profile: str, gpu: int | None) -> tuple[str, ...]:
    return (
        "python",
        "-m",
        "evaluator.score",
        "--artifact",
        ARTIFACT,
        "--data-dir",
        DATA,
        "--profile",
        profile,
        "--out",
        f"{SCORE_DIR}/{layout.SCORE_NAME}",
        "--device",
        "cpu" if gpu is None else "cuda",
    )


def train_job(
    *,
    run_id: str,
    image: str,
    profile: str,
    seed: int,
    gpu: int | None,
    memory_gb: float,
    data_dir: Path,
    train_py: Path,
    limits: Limits,
    labels: Mapping[str, str],
    cpuset: str | None = None,
    compile_cache: Path | None = None,
) -> JobSpec:
    """The train job: agent code, told its budget, killed at budget + allowance. With the night's
    compile cache (a host file written by the warm-up job), mounted read-only and unpacked into
    the job's own /tmp before train.py runs: nothing the job does reaches the file or a later run."""
    inputs = {TRAIN_PY: train_py}
    if compile_cache is not None:
        inputs[COMPILE_CACHE_INPUT] = compile_cache
    return JobSpec(
        run_id=run_id,
        role="train",
        image=image,
        command=train_command(compile_cache is not None),
        environment=train_environment(profile, seed, gpu, limits.train_budget_s, compile_cache is not None),
        data_dir=data_dir,
        data_parts=(layout.MANIFEST, layout.TOKENIZER_DIR, layout.TRAIN_DIR),
        inputs=inputs,
        output_dir=OUT,
        output_max_bytes=limits.out_max_bytes,
        output_max_files=limits.out_max_files,
        cap_s=limits.train_cap_s,
        memory_gb=memory_gb,
        gpu=gpu,
        cpuset=cpuset,
        labels=dict(labels),
    )


def warmup_job(
    *,
    run_id: str,
    image: str,
    profile: str,
    gpu: int | None,
    memory_gb: float,
    data_dir: Path,
    seed_train_py: Path,
    limits: Limits,
    labels: Mapping[str, str],
    cpuset: str | None = None,
) -> JobSpec:
    """The compile cache's only writer: the night's trusted seed train.py (never agent code),
    locked down like any train job, told its deadline has passed (so it compiles its first step
    and exports), killed at the profile's usual cap or WARMUP_MIN_CAP_S, whichever is longer; its
    cache leaves through /out."""
    return JobSpec(
        run_id=run_id,
        role="train",
        image=image,
        command=warmup_command(),
        environment=train_environment(profile, 0, gpu, WARMUP_BUDGET_S, compile_cache=True),
        data_dir=data_dir,
        data_parts=(layout.MANIFEST, layout.TOKENIZER_DIR, layout.TRAIN_DIR),
        inputs={TRAIN_PY: seed_train_py},
        output_dir=OUT,
        output_max_bytes=limits.out_max_bytes,
        output_max_files=limits.out_max_files,
        cap_s=max(limits.train_cap_s, WARMUP_MIN_CAP_S),
        memory_gb=memory_gb,
        gpu=gpu,
        cpuset=cpuset,
        labels=dict(labels),
    )


def eval_job(
    *,
    run_id: str,
    image: str,
    profile: str,
    gpu: int | None,
    memory_gb: float,
    data_dir: Path,
    artifact: Path,
    limits: Limits,
    labels: Mapping[str, str],
    cpuset: str | None = None,
) -> JobSpec:
    """The eval job: no agent code, the checked artifact and the private eval rows."""
    return JobSpec(
        run_id=run_id,
        role="eval",
        image=image,
        command=eval_command(profile, gpu),
        environment=environment(gpu),
        data_dir=data_dir,
        data_parts=(layout.MANIFEST, layout.TOKENIZER_DIR, layout.EVAL_DIR),
        inputs={ARTIFACT: artifact},
        output_dir=SCORE_DIR,
        output_max_bytes=limits.score_dir_max_bytes,
        output_max_files=16,
        cap_s=limits.eval_cap_s,
        memory_gb=memory_gb,
        gpu=gpu,
        cpuset=cpuset,
        labels=dict(labels),
    )


def preflight_command(preflight_profile: str) -> tuple[str, ...]:
    return (
        "python",
        "-m",
        "evaluator.preflight",
        "--train",
        TRAIN_PY,
        "--profile",
        preflight_profile,
        "--data-dir",
        DATA,
        "--out",
        OUT,
    )


def preflight_job(
    *,
    run_id: str,
    image: str,
    preflight_profile: str,
    seed: int,
    memory_gb: float,
    data_dir: Path,
    train_py: Path,
    limits: Limits,
    check_cap_s: float,
    labels: Mapping[str, str],
) -> JobSpec:
    """The CPU preflight (evaluator.preflight): agent code, so a train job in all but its command:
    the same lockdown, the train job's mounts only (train split, tokenizer, manifest; never val/
    or eval/), no GPU. train.py runs inside it as a child under the preflight profile, then the
    evaluator's checks; killed at train.py's cap plus `check_cap_s`."""
    return JobSpec(
        run_id=run_id,
        role="train",
        image=image,
        command=preflight_command(preflight_profile),
        environment=train_environment(preflight_profile, seed, None, limits.train_budget_s),
        data_dir=data_dir,
        data_parts=(layout.MANIFEST, layout.TOKENIZER_DIR, layout.TRAIN_DIR),
        inputs={TRAIN_PY: train_py},
        output_dir=OUT,
        output_max_bytes=limits.out_max_bytes,
        output_max_files=limits.out_max_files,
        cap_s=limits.train_cap_s + check_cap_s,
        memory_gb=memory_gb,
        gpu=None,
        cpuset=None,
        labels=dict(labels),
    )


# ---------------------------------------------------------------------------------------------
# Docker: containers and volumes for a job


def container_name(run_id: str, role: Role, part: str = "job") -> str:
    return f"overnight-{run_id}-{role}" + ("" if part == "job" else f"-{part}")


def volume_name(run_id: str, role: Role) -> str:
    return f"overnight-{run_id}-{role}-out"


def labels_for(job: JobSpec, part: str) -> dict[str, str]:
    return {**job.labels, LABEL_RUN: job.run_id, LABEL_ROLE: job.role, LABEL_PART: part}


def output_volume(job: JobSpec) -> dict[str, Any]:
    """Keyword arguments for `client.volumes.create`: a tmpfs the kernel caps in bytes and files."""
    options = (
        f"size={job.output_max_bytes},nr_inodes={job.output_max_files + 1},uid={UID},gid={GID},"
        "mode=0700,nosuid,nodev,noexec"
    )
    return dict(
        name=volume_name(job.run_id, job.role),
        driver="local",
        driver_opts={"type": "tmpfs", "device": "tmpfs", "o": options},
        labels=labels_for(job, "volume"),
    )


def _output_mount(job: JobSpec, read_only: bool) -> Mount:
    return Mount(
        target=job.output_dir,
        source=volume_name(job.run_id, job.role),
        type="volume",
        read_only=read_only,
        no_copy=True,
    )


def job_mounts(job: JobSpec) -> list[Mount]:
    data = [
        Mount(target=f"{DATA}/{part}", source=str(job.data_dir / part), type="bind", read_only=True)
        for part in job.data_parts
    ]
    inputs = [
        Mount(target=target, source=str(source), type="bind", read_only=True) for target, source in job.inputs.items()
    ]
    return [*inputs, *data, _output_mount(job, read_only=False)]


def _locked_down(job: JobSpec, memory_bytes: int, pids: int) -> dict[str, Any]:
    """The lockdown every container gets, the keeper included."""
    return dict(
        image=job.image,
        user=USER,
        working_dir="/tmp",
        use_config_proxy=False,  # else proxy settings from ~/.docker/config.json leak in
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        privileged=False,
        ipc_mode="private",
        init=True,
        pids_limit=pids,
        mem_limit=memory_bytes,
        memswap_limit=memory_bytes,  # no swap: the memory limit is the limit
        ulimits=[Ulimit(name="core", soft=0, hard=0)],
        log_config=LOG_CONFIG,
        hostname="sandbox",
        stdin_open=False,
        tty=False,
    )


def container_config(job: JobSpec) -> dict[str, Any]:
    """Keyword arguments for `client.containers.create` for the job itself."""
    memory = int(job.memory_gb * 2**30)
    return dict(
        _locked_down(job, memory, PIDS_LIMIT),
        command=list(job.command),
        name=container_name(job.run_id, job.role),
        labels=labels_for(job, "job"),
        environment=dict(job.environment),
        mounts=job_mounts(job),
        tmpfs=dict(TMPFS),
        shm_size=SHM_SIZE,
        cpuset_cpus=job.cpuset,
        device_requests=(
            None if job.gpu is None else [DeviceRequest(device_ids=[str(job.gpu)], capabilities=[["gpu"]])]
        ),
    )


def oneoff_config(
    *,
    image: str,
    name: str,
    command: list[str],
    gpu: int | None = None,
    memory_gb: float = 2.0,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A one-off container of trusted code (the images' smoke test, `make doctor`'s probes),
    locked down exactly like a job: no network, read-only root, no capabilities, non-root."""
    job = JobSpec(
        run_id=name,
        role="train",
        image=image,
        command=tuple(command),
        environment=environment(gpu),
        data_dir=Path("/nonexistent"),
        data_parts=(),
        inputs={},
        output_dir=OUT,
        output_max_bytes=0,
        output_max_files=0,
        cap_s=0.0,
        memory_gb=memory_gb,
        gpu=gpu,
        labels=labels or {},
    )
    memory = int(memory_gb * 2**30)
    return dict(
        _locked_down(job, memory, PIDS_LIMIT),
        command=command,
        name=name,
        labels=dict(labels or {}),
        environment=environment(gpu),
        tmpfs=dict(TMPFS),
        shm_size=SHM_SIZE,
        device_requests=(None if gpu is None else [DeviceRequest(device_ids=[str(gpu)], capabilities=[["gpu"]])]),
    )


def keeper_config(job: JobSpec) -> dict[str, Any]:
    """The keeper: holds the job's output volume mounted (read-only) so that it outlives the job
    until the host has copied what it wants; runs no agent code, only `sleep`."""
    return dict(
        _locked_down(job, KEEPER_MEMORY, 16),
        command=["sleep", "infinity"],
        name=container_name(job.run_id, job.role, "keeper"),
        labels=labels_for(job, "keeper"),
        environment={"PATH": PATH},
        mounts=[_output_mount(job, read_only=True)],
    )
