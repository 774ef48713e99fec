"""Every benchmark script still imports against today's code (a renamed function in a package
otherwise breaks a bench nobody runs until the night it is needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


def test_there_are_benchmarks_to_check() -> None:
    assert {p.name for p in BENCHMARKS} >= {"bench_throughput.py", "bench_null_keeps.py", "measure_noise.py"}


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_the_benchmark_imports_and_has_a_main(path: Path, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look themselves up there
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put the repo on the path
    spec.loader.exec_module(module)  # imports only: each script runs main() under __main__
    if path.stem != "night_kit":  # the shared kit, no command of its own
        assert callable(getattr(module, "main", None))
