"""A watcher on the train container's /out: over its byte or entry cap, the run is killed (the
container's root is read-only and its tmpfs are bounded; /out is the one host disk it writes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sandbox.hostile import tree_usage


class OutDirGuard:
    def __init__(self, out_dir: Path, max_bytes: int, max_entries: int,
                 interval_s: float = 1.0) -> None:
        self.out_dir = out_dir
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.interval_s = interval_s
        self._last = float("-inf")

    def before_start(self) -> None:
        pass

    def check(self, container: Any) -> str | None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return None
        self._last = now
        return self.over_cap()

    def over_cap(self) -> str | None:
        used, entries = tree_usage(self.out_dir, self.max_entries)
        if entries > self.max_entries:
            return f"/out holds more than {self.max_entries} files"
        if used > self.max_bytes:
            return f"/out uses {used / 2**30:.2f} GB of disk, over its {self.max_bytes / 2**30:.2f} GB cap"
        return None

    def finish(self) -> None:
        pass
