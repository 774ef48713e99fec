"""The tiny versions of the night benchmarks (the real ones run by hand, see the README): the
throughput bench's three arms and the null-keeps bench run end to end in containers on the `test`
profile and end with their grep-able lines, with values that make sense."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.docker]


def _lines(out: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^([a-z_0-9]+): (.+)$", out, re.M))


def _bench(script: str, *args: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return _lines(done.stdout)


def test_the_throughput_bench_measures_three_arms(images: str, test_data_dir: Path, tmp_path: Path) -> None:
    got = _bench(
        "bench_throughput.py",
        "--profile",
        "test",
        "--data-dir",
        str(test_data_dir),
        "--experiments",
        "2",
        "--think-s",
        "2",
        "--workdir",
        str(tmp_path),
    )
    for key in ("busy_sequential", "busy_overlap", "busy_2_slots"):
        assert 0.0 < float(got[key]) <= 1.0, got
    assert float(got["speedup_2_slots"]) > 0, got
    assert float(got["runs_per_hour_sequential"]) > 0, got


def test_the_null_keeps_bench_replays_both_rules_on_the_night_it_ran(
    images: str, test_data_dir: Path, tmp_path: Path
) -> None:
    got = _bench(
        "bench_null_keeps.py",
        "--profile",
        "test",
        "--data-dir",
        str(test_data_dir),
        "--proposals",
        "3",
        "--slots",
        "1",
        "--calibration-runs",
        "1",
        "--workdir",
        str(tmp_path),
    )
    assert 1 <= int(got["proposals"]) <= 3, got  # the scored ones (a run may time out on a loaded machine)
    assert int(got["runs_alongside"]) == 0, got  # a step budget repeats itself: nothing to confirm
    assert 0.0 <= float(got["false_keep_new"]) <= 1.0 and 0.0 <= float(got["false_keep_old"]) <= 1.0, got
    assert float(got["extra_runs"]) == 0.0, got  # one calibration run and no noise: no run beyond the first
    data = str(test_data_dir)
    again = _bench("bench_null_keeps.py", "--profile", "test", "--data-dir", data, "--report", str(tmp_path))
    keys = ("runs", "false_keep_old", "false_keep_new", "extra_runs")
    assert {k: again[k] for k in keys} == {k: got[k] for k in keys}  # --report re-reads the night, runs nothing
