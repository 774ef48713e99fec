"""Settings of a night: environment (OVERNIGHT_*), `.env`, then command-line flags on top.

Defaults work on a new machine: the `gpu` profile when a GPU and the NVIDIA container runtime are
both there, else `cpu`; the `anthropic` agent when ANTHROPIC_API_KEY is set, else `search`.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from evaluator.profiles import PROFILES
from sandbox.engine import docker_runtimes
from sandbox.gpu import visible_gpus as nvml_gpu_count
from sandbox.specs import DEFAULT_IMAGE

__all__ = ["Settings", "SettingsError", "detect_profile", "docker_runtimes", "load_settings", "nvml_gpu_count"]

AgentName = Literal["anthropic", "search"]
SandboxName = Literal["docker", "bare"]
BackendName = Literal["docker", "kubernetes"]
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_UNTIL = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RESOURCE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_REGISTRY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:_/-]*$")


class SettingsError(ValueError):
    """A bad setting, explained in one line."""


def default_tag(today: dt.date | None = None) -> str:
    """Today's date as a short tag, e.g. 'nov23'."""
    return (today or dt.date.today()).strftime("%b%d").lower()


def detect_profile(nvml: Any = None, docker_info: dict | None = None) -> str:
    """`gpu` when NVML sees a GPU and the engine has the NVIDIA runtime, else `cpu`."""
    if nvml_gpu_count(nvml) > 0 and "nvidia" in docker_runtimes(docker_info):
        return "gpu"
    return "cpu"


def _default_agent(data: dict[str, Any]) -> AgentName:
    return "anthropic" if data.get("anthropic_api_key") else "search"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OVERNIGHT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    tag: str = Field(default_factory=default_tag)  # names the branch, the refs and runs/<tag>
    program: str = "default"  # programs/<program>/{train.py,program.md}
    profile: str = Field(default_factory=detect_profile)
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "OVERNIGHT_ANTHROPIC_API_KEY")
    )
    agent: AgentName = Field(default_factory=_default_agent)
    model: str | None = None  # the anthropic agent's model (None: the agent's default)
    # "all" or GPU indices like [0, 1, 3], one slot each (controller.slots); [] = not given (all on gpu)
    gpus: Annotated[list[int] | Literal["all"], NoDecode] = Field(default_factory=list)
    slots: int = Field(default=1, ge=1, le=64)  # CPU profiles: experiments at once, each on its own pinned cores
    overlap: bool = True  # the agent prepares the next proposal while the slots train
    preflight: bool | None = None  # a CPU check before a proposal takes a slot (default: on for gpu)
    calibration_runs: int = Field(default=3, ge=1, le=20)  # baseline runs at night start (time budgets)
    keep_z: float = Field(default=2.0, gt=0)  # unconfirmed: keep when better than the best by t(keep_z) SE
    confirmed_z: float = Field(default=1.65, gt=0)  # confirmed: keep when better than the best alongside by this
    confirm_z: float = Field(default=1.0, ge=0)  # a first run better by t(confirm_z) SE gets a confirmation
    keep_at_once_z: float = Field(default=4.0, gt=0)  # a first run better by t(keep_at_once_z) SE is kept at once
    max_confirmations: int = Field(default=1, ge=0, le=10)  # confirmation steps per candidate at most
    anchor_runs: int = Field(default=3, ge=1, le=20)  # a first run is compared with the best's latest runs
    min_delta: float = Field(default=0.0, ge=0)  # an absolute margin in bpb a keep must also pass
    simpler_wins_ties: bool = True  # equal within noise and simpler code (fewer lines and tokens) is kept
    verify_runs: int = Field(default=0, ge=0, le=20)  # at the night's end: runs each of the baseline and the best
    max_fix_attempts: int = Field(default=2, ge=0, le=10)  # fix tries after a crash, and re-asks after a refused edit
    vram_cap_gb: float | None = Field(default=None, gt=0)  # the NVML watchdog kills a run above this
    memory_limit_gb: float | None = Field(default=None, gt=0)  # container RAM limit (default: the profile's)
    compile_cache: bool | None = None  # warm torch.compile's cache once per night (default: on for gpu, Docker)
    data_dir: Path = Field(default_factory=lambda data: Path("data") / str(data.get("profile", "cpu")))
    runs_dir: Path = Path("runs")
    worktrees_dir: Path = Path("worktrees")
    repo: Path = Path(".")  # the project checkout whose HEAD the night starts from
    image: str = DEFAULT_IMAGE
    sandbox: SandboxName = "docker"  # "bare" runs plain processes: development only, no protection
    hours: float | None = Field(default=None, gt=0)
    until: str | None = None  # HH:MM, local time, the next time it comes round
    max_experiments: int | None = Field(default=None, ge=0)  # experiments after the baseline, per tag
    seed: int = Field(default=0, ge=0)
    # Where experiments run: the local Docker engine, or Jobs on a Kubernetes cluster
    # (sandbox.kubernetes, docs/kubernetes.md).
    backend: BackendName = "docker"
    kube_config: Path | None = None  # kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)
    kube_namespace: str = "overnight"  # a namespace of its own: a deny-all NetworkPolicy covers it
    image_registry: str | None = None  # the cluster pulls <image_registry>/overnight-evaluator:latest
    storage_class: str | None = None  # per-job output volumes (None: the cluster's default class)
    gpu_resource_name: str = "nvidia.com/gpu"  # what the GPU device plugin advertises
    kube_data_volume: str = "overnight-data"  # PVC with the prepared data dirs (data/<profile> -> <profile>/)
    kube_runtime_class: str | None = None  # e.g. gvisor: a RuntimeClass for every sandbox pod
    kube_cpus: float = Field(default=8.0, gt=0)  # CPU limit of each job
    kube_start_timeout_s: float = Field(default=600.0, gt=0)  # scheduling + image pull, then an error

    @field_validator("tag", "program")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value) or ".." in value or value.endswith((".", ".lock")):
            raise ValueError(
                f"{value!r} must be 1-64 characters of lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"unknown profile {value!r}; choose one of: {', '.join(sorted(PROFILES))}")
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().lower() == "all":
                return "all"
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if not all(p.isdigit() for p in parts):
                raise ValueError(f"{value!r} is not a comma-separated list of GPU indices like 0,1, or all")
            value = [int(p) for p in parts]
        if isinstance(value, list):
            twice = sorted({i for i in value if value.count(i) > 1})
            if twice:
                raise ValueError(f"GPU {twice[0]} is listed twice: give each GPU once (one slot per GPU)")
        return value

    @field_validator("until")
    @classmethod
    def _until(cls, value: str | None) -> str | None:
        if value is not None and not _UNTIL.match(value):
            raise ValueError(f"{value!r} is not a time like 07:30")
        return value

    @field_validator("kube_namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"{value!r} must be a namespace name: lowercase letters, digits and '-', at most 63")
        return value

    @field_validator("kube_data_volume", "kube_runtime_class", "storage_class")
    @classmethod
    def _object_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not _DNS_SUBDOMAIN.match(value)):
            raise ValueError(f"{value!r} must be a Kubernetes name: lowercase letters, digits, '-' and '.'")
        return value

    @field_validator("gpu_resource_name")
    @classmethod
    def _resource(cls, value: str) -> str:
        if not _RESOURCE.match(value) or "/" not in value:
            raise ValueError(f"{value!r} is not an extended resource name like nvidia.com/gpu")
        return value

    @field_validator("image_registry")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        if value is not None and ("://" in value or not _REGISTRY.match(value)):
            raise ValueError(f"{value!r} is not a registry like registry.example.com/team (no scheme)")
        return value.rstrip("/") if value else value

    @property
    def tag_dir(self) -> Path:
        return self.runs_dir / self.tag

    def rule(self) -> Any:
        """The keep rule's thresholds (controller.noise.RuleSettings)."""
        from controller.noise import RuleSettings

        return RuleSettings(
            keep_z=self.keep_z,
            confirmed_z=self.confirmed_z,
            confirm_z=self.confirm_z,
            keep_at_once_z=self.keep_at_once_z,
            max_confirm=self.max_confirmations,
            anchor_runs=self.anchor_runs,
            min_delta=self.min_delta,
            simpler_wins_ties=self.simpler_wins_ties,
        )

    @property
    def container_memory_gb(self) -> float:
        """Each container's RAM limit: --memory-limit-gb, else the profile's measured size."""
        return self.memory_limit_gb if self.memory_limit_gb is not None else PROFILES[self.profile].memory_gb

    @property
    def compile_cache_on(self) -> bool:
        """Warm the compile cache at night start: it only pays where torch.compile runs (CUDA)."""
        wanted = self.profile == "gpu" if self.compile_cache is None else self.compile_cache
        return wanted and self.sandbox == "docker" and self.backend == "docker"

    @property
    def preflight_on(self) -> bool:
        return self.profile == "gpu" if self.preflight is None else self.preflight

    @property
    def gpu(self) -> int | None:
        """The one GPU an experiment uses: the first of --gpus, GPU 0 on the gpu profile, else none."""
        if isinstance(self.gpus, list) and self.gpus:
            return self.gpus[0]
        return 0 if self.profile == "gpu" else None

    def deadline(self, now: dt.datetime) -> dt.datetime | None:
        """When the night ends by itself (the earlier of --hours and --until), or None."""
        ends: list[dt.datetime] = []
        if self.hours is not None:
            ends.append(now + dt.timedelta(hours=self.hours))
        if self.until is not None:
            hh, mm = (int(x) for x in self.until.split(":"))
            end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
            if end <= now:
                end += dt.timedelta(days=1)
            ends.append(end)
        return min(ends) if ends else None

    def agent_reason(self) -> str:
        """Why this agent, for the first lines a person reads."""
        if "agent" in self.model_fields_set:
            return f"agent: {self.agent} (chosen explicitly)"
        if self.agent == "anthropic":
            return "agent: anthropic (ANTHROPIC_API_KEY is set)"
        return "agent: search, the offline optuna agent (no ANTHROPIC_API_KEY set; set it to use Claude)"


# What a person types to change each setting, for error messages.
def _flag(field: str) -> str:
    if field == "anthropic_api_key":
        return "ANTHROPIC_API_KEY"
    return f"--{field.replace('_', '-')} / OVERNIGHT_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and `.env`, with `overrides` (command-line flags) on top.

    Raises SettingsError with one line naming the setting and what is wrong with it."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "settings"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] != "value_error" and isinstance(err.get("input"), (str, int, float)):
            msg += f" (got {err['input']!r})"
        raise SettingsError(f"bad setting {_flag(field)}: {msg}") from None
