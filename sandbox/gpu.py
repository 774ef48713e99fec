"""Is the GPU a run asks for really usable? Checked before anything starts, so a `gpu` run on a
machine without one fails within seconds with the fix, not after a download or a training."""

from __future__ import annotations

from typing import Any

from sandbox.errors import SandboxError


def visible_gpus(nvml: Any = None) -> int:
    """GPUs NVML sees; 0 without a driver. `nvml` is the pynvml module (or a fake)."""
    try:
        if nvml is None:
            import pynvml  # nvidia-ml-py

            nvml = pynvml
        nvml.nvmlInit()
        try:
            return int(nvml.nvmlDeviceGetCount())
        finally:
            nvml.nvmlShutdown()
    except Exception:
        return 0


def require_gpu(index: int, *, nvml: Any = None, runtimes: set[str] | None = None) -> None:
    """SandboxError unless GPU `index` exists and the Docker engine can hand it to a container."""
    count = visible_gpus(nvml)
    if count == 0:
        raise SandboxError(
            "no CUDA GPU here (NVML sees none): the gpu profile needs one; use PROFILE=cpu, "
            "or install the NVIDIA driver (make doctor shows what is missing)"
        )
    if index >= count:
        raise SandboxError(f"GPU {index} does not exist: NVML sees {count} GPU(s) (0-{count - 1})")
    if runtimes is None:
        from sandbox.engine import docker_runtimes

        runtimes = docker_runtimes()
    if "nvidia" not in runtimes:
        raise SandboxError(
            "the Docker engine has no NVIDIA runtime, so containers cannot use the GPU: "
            "install the NVIDIA container toolkit (nvidia-ctk runtime configure --runtime=docker)"
        )
