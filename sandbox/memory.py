"""Peak RAM of a CPU run, sampled from outside: the container's cgroup working set, or the
engine's stats API when the cgroup is not visible from here (a remote engine)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sandbox import cgroup

STATS_INTERVAL_S = 2.0  # the stats API is slow; sample it less often


class RamPeak:
    def __init__(self) -> None:
        self.peak_bytes = 0
        self._cgroup: Path | None = None
        self._last_stats = 0.0

    def before_start(self) -> None:
        pass

    def check(self, container: Any) -> str | None:
        if self._cgroup is None:
            self._cgroup = cgroup.memory_cgroup_dir(container.id)
        try:
            if self._cgroup is not None:
                value = cgroup.working_set_bytes(self._cgroup)
            else:
                value = self._from_stats(container)
        except (OSError, ValueError):
            return None  # the container just ended and its cgroup went away
        self.peak_bytes = max(self.peak_bytes, value)
        return None

    def finish(self) -> None:
        pass

    def _from_stats(self, container: Any) -> int:
        now = time.monotonic()
        if now - self._last_stats < STATS_INTERVAL_S:
            return 0
        self._last_stats = now
        stats = container.stats(stream=False, one_shot=True).get("memory_stats", {})
        inner = stats.get("stats", {})
        inactive = inner.get("total_inactive_file", inner.get("inactive_file", 0))
        return max(0, int(stats.get("usage", 0)) - int(inactive))
