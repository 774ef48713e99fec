"""Slots: where experiments run at the same time. One slot runs one experiment at a time; on the
gpu profile a slot is one GPU, on CPU profiles a set of pinned cores."""

from __future__ import annotations

from dataclasses import dataclass


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
