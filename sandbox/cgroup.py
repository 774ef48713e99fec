"""Finding a container's cgroup on the host and reading its memory and processes (v1 and v2)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def memory_cgroup_dir(container_id: str, root: Path = ROOT) -> Path | None:
    """The container's memory cgroup directory (cgroupfs or systemd driver, v1 or v2)."""
    for candidate in (
        root / "memory" / "docker" / container_id,  # v1, cgroupfs driver
        root / "memory" / "system.slice" / f"docker-{container_id}.scope",  # v1, systemd driver
        root / "system.slice" / f"docker-{container_id}.scope",  # v2, systemd driver
        root / "docker" / container_id,  # v2, cgroupfs driver
    ):
        if candidate.is_dir():
            return candidate
    return None


def _stat_value(text: str, *keys: str) -> int:
    values = dict(line.split(maxsplit=1) for line in text.splitlines() if " " in line)
    for key in keys:
        if key in values:
            return int(values[key])
    return 0


def working_set_bytes(cgroup_dir: Path) -> int:
    """Memory in use minus inactive file cache (what `docker stats` shows): the part that the
    limit cannot simply reclaim."""
    usage_file = cgroup_dir / "memory.usage_in_bytes"
    if not usage_file.exists():
        usage_file = cgroup_dir / "memory.current"
    usage = int(usage_file.read_text())
    stat = (cgroup_dir / "memory.stat").read_text()
    return max(0, usage - _stat_value(stat, "total_inactive_file", "inactive_file"))


def pids(cgroup_dir: Path) -> set[int]:
    try:
        return {int(p) for p in (cgroup_dir / "cgroup.procs").read_text().split()}
    except OSError:
        return set()
