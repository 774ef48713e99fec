"""Slots: where experiments run at the same time. One slot runs one experiment at a time; on the
gpu profile a slot is one GPU, on CPU profiles a set of pinned cores.

`plan_slots` turns the settings into the night's slots, before anything starts:
- gpu profile: `--gpus all` (the default) is every GPU NVML sees, or a list like 0,1,3 checked
  against them; one slot per GPU, and each experiment's containers get a device request for
  that GPU only (and its own VRAM watchdog).
- cpu and test profiles: `--slots N` splits the cores this process may use
  (os.sched_getaffinity) into N disjoint sets of equal size, one per slot, pinned with a cpuset.
  Equal, because a wall-clock budget buys more training on more cores: slots of different sizes
  would make experiments incomparable; the cores left over are not used. `--slots 1` pins
  nothing (the night runs as it always did, on whatever CPUs the engine gives).
- the kubernetes backend: no local GPUs or cores to pin; `--slots N` is N experiments at once,
  each job asking the cluster for one GPU (gpu profile) or its CPU limit (--kube-cpus).
Every container gets the per-container memory limit; with several local slots, the RAM of all
slots' experiments at once must fit this machine's, or the night does not start.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from controller.settings import Settings, SettingsError
from sandbox.gpu import visible_gpus
from sandbox.specs import KEEPER_MEMORY

GiB = 2**30
CPU_PROFILES = ("cpu", "test")


@dataclass(frozen=True)
class Slot:
    """Where one experiment runs at a time: a GPU, or pinned CPUs, or just the machine."""

    index: int
    gpu: int | None = None
    cpuset: str | None = None

    def label(self) -> str:
        if self.gpu is not None:
            return f"slot {self.index} (GPU {self.gpu})"
        return f"slot {self.index}" + (f" (CPUs {self.cpuset})" if self.cpuset else "")


class SlotError(SettingsError):
    """Settings that give no workable set of slots, explained in one line."""


def plan_slots(
    settings: Settings,
    *,
    nvml: Any = None,
    cpus: Collection[int] | None = None,
    host_memory_bytes: int | None = None,
    cores_per_slot: int | None = None,
) -> list[Slot]:
    """The night's slots. `nvml` is the pynvml module (or a fake), `cpus` the cores this process
    may use (default os.sched_getaffinity), `host_memory_bytes` this machine's RAM (default from
    sysconf); `cores_per_slot` overrides the even split (benchmarks: one core per slot)."""
    if settings.backend == "kubernetes":
        return _cluster_slots(settings)
    if settings.profile in CPU_PROFILES:
        slots = _cpu_slots(settings, sorted(os.sched_getaffinity(0) if cpus is None else cpus), cores_per_slot)
    else:
        slots = _gpu_slots(settings, visible_gpus(nvml))
    if len(slots) > 1 and settings.sandbox == "docker":
        check_memory(settings, len(slots), host_memory_bytes if host_memory_bytes is not None else host_memory())
    return slots


def _gpus_given(settings: Settings) -> bool:
    return settings.gpus == "all" or bool(settings.gpus)


def _cluster_slots(settings: Settings) -> list[Slot]:
    if _gpus_given(settings):
        raise SlotError(
            "--gpus picks GPUs of this machine; on the kubernetes backend the cluster picks them: "
            f"drop --gpus and use --slots N (N jobs at once, each asking for one {settings.gpu_resource_name})"
        )
    # gpu=0 only says "one GPU": the job asks for one and the device plugin chooses which.
    gpu = 0 if settings.profile not in CPU_PROFILES else None
    return [Slot(i, gpu=gpu) for i in range(settings.slots)]


def _gpu_slots(settings: Settings, visible: int) -> list[Slot]:
    if visible == 0:
        raise SlotError(
            "the gpu profile needs a GPU, but NVML sees none: use --profile cpu, or install the "
            "NVIDIA driver (make doctor shows what is missing)"
        )
    seen = f"GPUs 0-{visible - 1}" if visible > 1 else "GPU 0"
    if isinstance(settings.gpus, list) and settings.gpus:
        missing = [i for i in settings.gpus if i >= visible]
        if missing:
            raise SlotError(f"GPU {missing[0]} is not here: NVML sees {seen}; choose --gpus from those, or --gpus all")
        indices = list(settings.gpus)
    else:
        indices = list(range(visible))
    if "slots" in settings.model_fields_set and settings.slots != len(indices):
        raise SlotError(
            f"--slots {settings.slots} does not apply to the gpu profile, which has one slot per GPU "
            f"({len(indices)} here): drop --slots and choose the GPUs with --gpus (e.g. --gpus 0,1)"
        )
    return [Slot(i, gpu=g) for i, g in enumerate(indices)]


def _cpu_slots(settings: Settings, cores: list[int], cores_per_slot: int | None) -> list[Slot]:
    if _gpus_given(settings):
        raise SlotError(
            f"--gpus is for the gpu profile, and this night's profile is {settings.profile}: drop --gpus "
            "(use --slots N for N experiments at once, each on its own cores)"
        )
    n = settings.slots
    if n == 1 and cores_per_slot is None:
        return [Slot(0)]
    if not cores:
        raise SlotError("this process may use no CPU cores (os.sched_getaffinity is empty): cannot pin slots")
    per = cores_per_slot if cores_per_slot is not None else len(cores) // n
    if per < 1 or n * per > len(cores):
        need = n * max(per, 1)
        raise SlotError(
            f"--slots {n} needs {need} CPU cores, and this process may use {len(cores)} "
            f"(CPUs {cpuset_string(cores)}): use --slots {max(len(cores) // max(per, 1), 1)} or fewer"
        )
    return [Slot(i, cpuset=cpuset_string(cores[i * per : (i + 1) * per])) for i in range(n)]


def cpuset_string(cores: Collection[int]) -> str:
    """Cores as a cpuset list, runs as ranges: [0, 1, 2, 5] -> "0-2,5"."""
    out: list[str] = []
    ordered = sorted(set(cores))
    start = prev = ordered[0] if ordered else 0
    for core in ordered[1:]:
        if core != prev + 1:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = core
        prev = core
    if ordered:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(out)


def memory_per_experiment(settings: Settings) -> int:
    """RAM one experiment may hold at once, in bytes: one job container at its limit (the eval
    job starts after the train job has exited, so the two never hold memory together), plus the
    two small keepers that hold their output volumes."""
    return int(settings.container_memory_gb * GiB) + 2 * KEEPER_MEMORY


def host_memory() -> int:
    """This machine's RAM in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(settings: Settings, slots: int, host_bytes: int) -> None:
    """SlotError unless every slot's experiment at its memory limit fits in this machine's RAM
    together (a preflight takes the place of an experiment, so this covers it too)."""
    need = slots * memory_per_experiment(settings)
    if need > host_bytes:
        fits = host_bytes // memory_per_experiment(settings)
        raise SlotError(
            f"{slots} slots x {settings.container_memory_gb:g} GB per experiment (--memory-limit-gb) need "
            f"{need / GiB:.1f} GB, more than this machine's {host_bytes / GiB:.1f} GB of RAM: use "
            f"fewer slots ({fits} fit) or a smaller --memory-limit-gb"
        )


def slot_lines(slots: list[Slot], settings: Settings) -> list[str]:
    """One line per slot for the night's first lines, e.g. "slot 0: GPU 0", "slot 1: CPUs 1"."""
    memory = f"{settings.container_memory_gb:g} GB RAM per container"
    lines = []
    for slot in slots:
        if settings.backend == "kubernetes":
            where = (
                f"a job on the cluster with one {settings.gpu_resource_name}"
                if slot.gpu is not None
                else f"a job on the cluster with {settings.kube_cpus:g} CPUs"
            )
        elif slot.gpu is not None:
            where = f"GPU {slot.gpu}"
        elif slot.cpuset is not None:
            where = f"CPUs {slot.cpuset}" + (" (not enforced: bare sandbox)" if settings.sandbox == "bare" else "")
        else:
            where = "all CPUs (not pinned)"
        lines.append(f"slot {slot.index}: {where}, {memory}")
    return lines
