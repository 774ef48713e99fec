"""The NVML watchdog of a GPU run: samples the assigned GPU's memory and utilization from the
host, records every sample to nvml.jsonl, kills the run over its VRAM cap and keeps the peak.

NVML reports host PIDs and a container hides them, so the run's usage is the GPU's used memory
over an idle baseline taken just before the container starts (one GPU per run). Processes that
NVML lists are also matched against the container's cgroup, for the record.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

from sandbox import cgroup
from sandbox.errors import SandboxError

GiB = 2**30


class VramWatchdog:
    def __init__(
        self, gpu: int, cap_gb: float | None, samples_path: Path, nvml: Any = None, interval_s: float = 0.5
    ) -> None:
        self.gpu = gpu
        self.cap_bytes = None if cap_gb is None else int(cap_gb * GiB)
        self.samples_path = samples_path
        self.interval_s = interval_s
        self.nvml = nvml
        self.baseline_bytes = 0
        self.peak_bytes = 0
        self.samples = 0
        self._handle: Any = None
        self._out: Any = None
        self._t0 = 0.0
        self._last = float("-inf")

    def before_start(self) -> None:
        try:
            self.nvml = self.nvml or importlib.import_module("pynvml")
            self.nvml.nvmlInit()
            self._handle = self.nvml.nvmlDeviceGetHandleByIndex(self.gpu)
            self.baseline_bytes = int(self.nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        except Exception as exc:  # no library, no driver, no such GPU
            raise SandboxError(
                f"NVML unavailable for GPU {self.gpu} ({exc}): the VRAM watchdog "
                "needs the NVIDIA driver and nvidia-ml-py"
            ) from None
        self._out = self.samples_path.open("a", buffering=1)
        self._t0 = time.monotonic()
        self._record({"event": "baseline", "used_bytes": self.baseline_bytes})

    def check(self, handle: Any) -> str | None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return None
        self._last = now
        try:
            used = int(self.nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            util = self.nvml.nvmlDeviceGetUtilizationRates(self._handle)
            procs = self._container_processes(getattr(handle, "native", None))
        except Exception as exc:  # one failed sample does not end a run
            self._record({"event": "error", "error": str(exc)[:200]})
            return None
        over = max(0, used - self.baseline_bytes)
        self.peak_bytes = max(self.peak_bytes, over)
        self.samples += 1
        self._record(
            {
                "used_bytes": used,
                "run_bytes": over,
                "gpu_util": int(util.gpu),
                "mem_util": int(util.memory),
                "container_procs": procs,
            }
        )
        if self.cap_bytes is not None and over > self.cap_bytes:
            reason = (
                f"VRAM use {over / GiB:.2f} GB passed the {self.cap_bytes / GiB:.2f} GB cap "
                f"(GPU {self.gpu}, over an idle baseline of {self.baseline_bytes / GiB:.2f} GB)"
            )
            self._record({"event": "kill", "reason": reason})
            return reason
        return None

    def finish(self) -> None:
        if self._out is not None:
            self._record({"event": "end", "peak_run_bytes": self.peak_bytes})
            self._out.close()
            self._out = None
        if self._handle is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
            self._handle = None

    def _container_processes(self, container: Any) -> list[dict[str, int]]:
        if container is None or not hasattr(container, "id"):
            return []
        listed = self.nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        cgroup_dir = cgroup.memory_cgroup_dir(container.id)
        mine = cgroup.pids(cgroup_dir) if cgroup_dir is not None else set()
        return [{"pid": int(p.pid), "used_bytes": int(p.usedGpuMemory or 0)} for p in listed if int(p.pid) in mine]

    def _record(self, sample: dict[str, Any]) -> None:
        if self._out is not None:
            sample = {"t": round(time.monotonic() - self._t0, 3), **sample}
            self._out.write(json.dumps(sample) + "\n")
