"""`python -m controller doctor` (`make doctor`): everything a night depends on, one row each.

Every check is a small function that looks at one thing through one seam (the docker SDK client,
the NVML library object, the filesystem, a command runner) and returns a `Check`:
- ok: fine;
- warning: a night can start, but something is worth a look (no API key: the offline agent
  runs; images or data not there yet: `make overnight` makes them; little disk);
- missing: a night could not start as the machine is now. The doctor then exits 1.
Each row that is not ok carries the command that fixes it. Nothing here changes the machine; the
one container it starts (to read the runtime image's torch version) runs no agent code, has no
network, no capabilities and a read-only filesystem, and is removed.
"""

from __future__ import annotations

import datetime as dt
import getpass
import importlib
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from controller.settings import DEFAULT_IMAGE, Settings, SettingsError, load_settings

State = Literal["ok", "warning", "missing"]
EXIT_NOT_READY = 1
DEFAULT_HOST = "unix:///var/run/docker.sock"
PREPARE_IMAGE = "overnight-prepare:latest"
LOCAL_BASE_IMAGE = "overnight-base:bookworm"
GIB = 1 << 30
DISK_WARN_GIB = 10.0  # below this free under runs/ or data/: a warning
DISK_MIN_GIB = 1.0  # below this: missing (the night pauses on a full runs disk)
TOOLKIT_FIX = (
    "install the NVIDIA container toolkit, then `sudo nvidia-ctk runtime configure --runtime=docker` "
    "and restart the engine"
)
START_FIX = "`make overnight` starts it (scripts/setup-host, as root or with sudo), or `sudo systemctl start docker`"
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
TORCH_VERSION = "import importlib.metadata as m; print(m.version('torch'))"  # reads metadata, imports nothing


@dataclass(frozen=True)
class Check:
    """One row of the table."""

    name: str
    state: State
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Engine:
    """What the doctor saw of the Docker engine (client is None when it could not connect)."""

    host: str
    client: Any = None
    version: str | None = None
    runtimes: frozenset[str] = frozenset()
    error: str | None = None
    permission_denied: bool = False


@dataclass(frozen=True)
class Gpus:
    names: list[str] = field(default_factory=list)
    error: str | None = None  # why NVML could not be asked (no driver on a CPU machine)


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def which_sbin(name: str) -> str | None:
    """`shutil.which` that also looks in the sbin directories (not on a Debian user's PATH)."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    return shutil.which(name, path=os.pathsep.join(dirs + [d for d in SBIN_DIRS if d not in dirs]))


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=False)


def _short_error(exc: BaseException) -> str:
    text = str(exc)
    for needle, short in (
        ("FileNotFoundError", "no socket"),
        ("ConnectionRefused", "connection refused"),
        ("PermissionError", "permission denied"),
        ("Permission denied", "permission denied"),
        ("timed out", "timed out"),
    ):
        if needle in text:
            return short
    return text.splitlines()[0][:120] if text else type(exc).__name__


# -- looking -----------------------------------------------------------------------------------


def probe_engine(connect: Callable[[], Any] | None = None) -> Engine:
    """Connect once (docker.from_env unless `connect` is given) and read version and runtimes."""
    host = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    try:
        if connect is None:
            import docker

            client = docker.from_env(timeout=10)
        else:
            client = connect()
        version = str(client.version().get("Version", "?"))
        runtimes = frozenset((client.info() or {}).get("Runtimes") or {})
    except Exception as exc:  # the SDK raises DockerException, requests errors leak through
        denied = "Permission denied" in str(exc) or "PermissionError" in str(exc)
        return Engine(host, error=_short_error(exc), permission_denied=denied)
    return Engine(host, client, version, runtimes)


def probe_gpus(nvml: Any = None) -> Gpus:
    """The GPUs NVML sees, by name. `nvml` is the pynvml module (nvidia-ml-py) or a fake."""
    try:
        if nvml is None:
            nvml = importlib.import_module("pynvml")  # nvidia-ml-py
        nvml.nvmlInit()
    except Exception as exc:  # no library, no driver: every NVML error means "no GPU to use"
        return Gpus(error=str(exc) or type(exc).__name__)
    try:
        names = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return Gpus(names)
    except Exception as exc:
        return Gpus(error=str(exc) or type(exc).__name__)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: S110  (a failed shutdown changes no row)
            pass


def image_torch_version(client: Any, image: str) -> str:
    """torch's version inside `image`, from its package metadata, in a one-off locked-down
    container (no network, no capabilities, read-only, nobody) that is removed afterwards."""
    from sandbox.specs import LABEL_RUN

    out = client.containers.run(
        image,
        ["python3", "-c", TORCH_VERSION],
        entrypoint=[],
        user="65534:65534",
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=64,
        mem_limit="512m",
        labels={LABEL_RUN: "doctor"},
        remove=True,
        stdout=True,
        stderr=False,
    )
    text = out.decode() if isinstance(out, bytes) else str(out)
    return text.strip().splitlines()[-1] if text.strip() else "?"


def free_gib(path: Path, disk_usage: Callable[[str], Any] = shutil.disk_usage) -> tuple[Path, float]:
    """Free space where `path` is or would be created (its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, disk_usage(str(probe)).free / GIB


# -- the checks ---------------------------------------------------------------------------------


def check_engine(engine: Engine) -> Check:
    if engine.client is not None:
        return Check("engine", "ok", f"Docker {engine.version} at {engine.host}")
    if engine.permission_denied:
        return Check("engine", "missing", f"running at {engine.host}, but not for this user", "see the permission row")
    return Check("engine", "missing", f"nothing answers at {engine.host} ({engine.error})", START_FIX)


def check_permission(engine: Engine, user: str | None = None, access: Callable[[str, int], bool] = os.access) -> Check:
    user = user or getpass.getuser()
    fix = f"`sudo usermod -aG docker {user}`, then log out and in again"
    if engine.client is not None:
        return Check("permission", "ok", f"{user} may use the engine")
    socket = engine.host.removeprefix("unix://") if engine.host.startswith("unix://") else None
    if engine.permission_denied or (socket and os.path.exists(socket) and not access(socket, os.W_OK)):
        return Check("permission", "missing", f"{user} may not use {socket or engine.host}", fix)
    return Check("permission", "warning", "unknown until the engine runs", "")


def check_compose(run: Runner = _run, which: Callable[[str], str | None] = shutil.which) -> Check:
    for cmd in (["docker", "compose", "version", "--short"], ["docker-compose", "version", "--short"]):
        if which(cmd[0]) is None:
            continue
        try:
            done = run(cmd)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0 and done.stdout.strip():
            return Check("compose", "ok", f"{' '.join(cmd[:-2])} {done.stdout.strip().splitlines()[0]}")
    return Check(
        "compose",
        "missing",
        "neither `docker compose` nor docker-compose (make prepare needs one)",
        "`make overnight` installs it (scripts/setup-host), or `sudo apt-get install docker-compose`",
    )


def _has_image(engine: Engine, ref: str) -> bool:
    if engine.client is None:
        return False
    try:
        engine.client.images.get(ref)
        return True
    except Exception:
        return False


def check_base(
    engine: Engine, base_image: str | None, image: str, which: Callable[[str], str | None] = shutil.which
) -> Check:
    """What `make images` builds on: BASE_IMAGE from a registry, or a local debootstrap base."""
    if base_image:
        return Check("base", "ok", f"BASE_IMAGE={base_image}")
    if _has_image(engine, LOCAL_BASE_IMAGE):
        return Check("base", "ok", f"{LOCAL_BASE_IMAGE} (local, made with debootstrap)")
    if which("debootstrap"):
        return Check("base", "ok", f"debootstrap at {which('debootstrap')}: `make images` makes the base")
    fix = "`make overnight` installs debootstrap (scripts/setup-host), or set BASE_IMAGE=<a CUDA PyTorch image>"
    if _has_image(engine, image):
        return Check("base", "warning", "no debootstrap and no BASE_IMAGE: images cannot be rebuilt", fix)
    return Check("base", "missing", "no debootstrap and no BASE_IMAGE: the images cannot be built", fix)


def check_images(engine: Engine, image: str, torch_version: Callable[[Any, str], str] = image_torch_version) -> Check:
    if engine.client is None:
        return Check("images", "warning", "not looked at: no engine", "")
    found: list[str] = []
    absent: list[str] = []
    for ref in dict.fromkeys([image, PREPARE_IMAGE]):
        try:
            got = engine.client.images.get(ref)
        except Exception:
            absent.append(ref)
            continue
        created = str((getattr(got, "attrs", None) or {}).get("Created", ""))[:16].replace("T", " ")
        found.append(f"{ref} {str(got.id).removeprefix('sha256:')[:12]}" + (f" ({created})" if created else ""))
    if absent:
        return Check(
            "images", "warning", f"not built: {', '.join(absent)}", "`make overnight` builds them (`make images`)"
        )
    try:
        torch = f"torch {torch_version(engine.client, image)}"
    except Exception as exc:
        return Check(
            "images", "warning", "; ".join(found) + f"; torch version unreadable ({_short_error(exc)})", "`make images`"
        )
    return Check("images", "ok", "; ".join(found) + f"; {torch}")


def check_gpus(gpus: Gpus) -> Check:
    if gpus.names:
        counted: dict[str, int] = {}
        for name in gpus.names:
            counted[name] = counted.get(name, 0) + 1
        return Check("gpus", "ok", ", ".join(f"{n} x {name}" for name, n in counted.items()))
    why = f" ({gpus.error})" if gpus.error else ""
    return Check("gpus", "ok", f"none seen by NVML{why}: nights run on the CPU")


def check_nvidia_runtime(gpus: Gpus, engine: Engine, profile_given: str | None) -> Check:
    if not gpus.names:
        return Check("nvidia runtime", "ok", "not needed (no GPU)")
    if engine.client is None:
        return Check("nvidia runtime", "warning", "not looked at: no engine", "")
    if "nvidia" in engine.runtimes:
        return Check("nvidia runtime", "ok", "the engine has the nvidia runtime")
    if profile_given and profile_given != "gpu":
        return Check("nvidia runtime", "warning", f"absent: the GPUs stay idle (profile {profile_given})", TOOLKIT_FIX)
    return Check("nvidia runtime", "missing", "the engine has no nvidia runtime: the GPUs cannot be used", TOOLKIT_FIX)


def check_data(settings: Settings) -> Check:
    from evaluator import layout
    from evaluator.manifest import ManifestError, verify_manifest

    data = Path(settings.data_dir)
    prepare = f"make prepare PROFILE={settings.profile}"
    if not (data / layout.MANIFEST).is_file():
        return Check("data", "warning", f"{data} not prepared yet", f"`make overnight` prepares it (`{prepare}`)")
    try:
        sha = verify_manifest(data, [layout.TRAIN_DIR, layout.VAL_DIR])
    except ManifestError as exc:
        return Check("data", "missing", f"{data} does not match its manifest: {exc}", f"`rm -rf {data} && {prepare}`")
    return Check("data", "ok", f"{data} verified against its manifest ({sha[:12]})")


def check_disk(name: str, path: Path, disk_usage: Callable[[str], Any] = shutil.disk_usage) -> Check:
    where, gib = free_gib(path, disk_usage)
    detail = f"{gib:.1f} GiB free at {where}"
    if gib < DISK_MIN_GIB:
        return Check(name, "missing", detail, f"free space under {where}")
    if gib < DISK_WARN_GIB:
        return Check(name, "warning", detail, f"free space under {where} (a night writes a model per run)")
    return Check(name, "ok", detail)


def check_api_key(settings: Settings) -> Check:
    """Whether the key is there: its value is never shown, not even in part."""
    if settings.anthropic_api_key is not None and settings.anthropic_api_key.get_secret_value():
        return Check("ANTHROPIC_API_KEY", "ok", "set (not shown)")
    fix = "export ANTHROPIC_API_KEY=... or put it in .env"
    if settings.agent == "anthropic":
        return Check("ANTHROPIC_API_KEY", "missing", "not set, and the anthropic agent was asked for", fix)
    return Check("ANTHROPIC_API_KEY", "warning", "not set: the offline search agent runs", fix)


def profile_reason(settings: Settings) -> str:
    if "profile" in settings.model_fields_set:
        return "chosen explicitly"
    if settings.profile == "gpu":
        return "GPU and NVIDIA container runtime found"
    return "no GPU with the NVIDIA container runtime found"


def check_choice(settings: Settings | SettingsError) -> list[Check]:
    if isinstance(settings, SettingsError):
        return [Check("settings", "missing", str(settings), "fix that setting (flag, OVERNIGHT_* or .env)")]
    return [
        Check("profile", "ok", f"{settings.profile} ({profile_reason(settings)})"),
        Check("agent", "ok", settings.agent_reason().removeprefix("agent: ")),
    ]


# -- all of it ------------------------------------------------------------------------------------


@dataclass
class Seams:
    """Where the doctor looks; tests replace these with fakes."""

    connect: Callable[[], Any] | None = None
    nvml: Any = None
    run: Runner = _run
    which: Callable[[str], str | None] = which_sbin
    disk_usage: Callable[[str], Any] = shutil.disk_usage
    torch_version: Callable[[Any, str], str] = image_torch_version


def run_checks(overrides: dict[str, Any], seams: Seams | None = None) -> list[Check]:
    seams = seams or Seams()
    engine = probe_engine(seams.connect)
    gpus = probe_gpus(seams.nvml)
    settings: Settings | SettingsError
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        settings = exc
    image = settings.image if isinstance(settings, Settings) else DEFAULT_IMAGE
    runs_dir = settings.runs_dir if isinstance(settings, Settings) else Path("runs")
    data_dir = settings.data_dir if isinstance(settings, Settings) else Path("data")
    checks = [
        check_engine(engine),
        check_permission(engine),
        check_compose(seams.run, seams.which),
        check_base(engine, os.environ.get("BASE_IMAGE") or None, image, seams.which),
        check_images(engine, image, seams.torch_version),
        check_gpus(gpus),
        check_nvidia_runtime(gpus, engine, overrides.get("profile")),
    ]
    if isinstance(settings, Settings):
        checks.append(check_data(settings))
    checks += [
        check_disk("disk runs/", runs_dir, seams.disk_usage),
        check_disk("disk data/", data_dir, seams.disk_usage),
    ]
    if isinstance(settings, Settings):
        checks.append(check_api_key(settings))
    checks += check_choice(settings)
    if engine.client is not None:
        try:
            engine.client.close()
        except Exception:  # noqa: S110  (the table is already made)
            pass
    return checks


def night_can_start(checks: list[Check]) -> bool:
    return not any(c.state == "missing" for c in checks)


STYLE = {"ok": "green", "warning": "yellow", "missing": "bold red"}


def doctor_table(checks: list[Check]) -> Table:
    table = Table(title=f"overnight doctor ({dt.datetime.now().astimezone():%Y-%m-%d %H:%M})", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("what was found")
    table.add_column("fix")
    for check in checks:
        table.add_row(check.name, Text(check.state, style=STYLE[check.state]), Text(check.detail), Text(check.fix))
    return table


def run_doctor(overrides: dict[str, Any], console: Console, seams: Seams | None = None) -> int:
    checks = run_checks(overrides, seams)
    # Piped (e.g. into a file or a README), a table narrower than its text wraps every row.
    if not console.is_terminal:
        console.width = max(console.width, 132)
    console.print(doctor_table(checks))
    if night_can_start(checks):
        warnings = sum(c.state == "warning" for c in checks)
        console.print(Text(f"a night can start here ({warnings} warning{'s' if warnings != 1 else ''})", style="green"))
        return 0
    missing = ", ".join(c.name for c in checks if c.state == "missing")
    console.print(Text(f"a night cannot start here: fix {missing}", style="bold red"))
    return EXIT_NOT_READY
