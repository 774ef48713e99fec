"""Limits enforced from outside: the wall-clock cap, the memory limit, the pids limit and the
kernel's /out cap each end only the run that broke them; peak RAM is measured from outside."""

from __future__ import annotations

from pathlib import Path

import pytest
from sandbox_support import leftovers, script, spec_for

from evaluator.profiles import get_profile
from sandbox import specs
from sandbox.experiment import run_experiment
from sandbox.limits import Limits

pytestmark = pytest.mark.docker

TEST = get_profile("test")


def test_a_run_past_its_wall_clock_cap_is_killed_and_marked_timeout(
    images, docker_client, stub_data_dir: Path, tmp_path: Path
) -> None:
    train_py = script(
        tmp_path,
        """
        import time
        print("sleeping past the cap", flush=True)
        time.sleep(300)
    """,
    )
    spec = spec_for(tmp_path, train_py, stub_data_dir, "limit-timeout")
    result = run_experiment(spec, limits=Limits.for_profile(TEST, train_budget_s=2.0, train_allowance_s=1.0))
    assert result.status == "timeout"
    assert "killed at 3 s: the budget of 2 s plus 1.0 s to export" in result.reason
    assert 3.0 <= result.train_seconds < 10.0 and result.train_cap_s == 3.0
    assert "sleeping past the cap" in (spec.run_dir / "train.log").read_text()
    assert leftovers(docker_client, spec.run_id) == []


def test_a_run_that_changes_its_clock_is_still_killed_on_time(
    images, docker_client, stub_data_dir: Path, tmp_path: Path
) -> None:
    # Without CAP_SYS_TIME the container cannot set the clock; and the cap is the host's
    # monotonic clock anyway. The script also fakes time.time for itself, to no effect.
    train_py = script(
        tmp_path,
        """
        import time
        time.time = lambda: 0.0
        try:
            time.clock_settime(time.CLOCK_REALTIME, 0)
            print("clock changed", flush=True)
        except OSError as exc:
            print("clock_settime refused:", exc.strerror, flush=True)
        time.sleep(300)
    """,
    )
    spec = spec_for(tmp_path, train_py, stub_data_dir, "limit-clock")
    result = run_experiment(spec, limits=Limits.for_profile(TEST, train_budget_s=2.0, train_allowance_s=1.0))
    assert result.status == "timeout" and result.train_seconds < 10.0
    assert "clock_settime refused: Operation not permitted" in (spec.run_dir / "train.log").read_text()


def test_a_memory_hog_is_stopped_by_the_memory_limit(
    images, docker_client, stub_data_dir: Path, tmp_path: Path
) -> None:
    train_py = script(
        tmp_path,
        """
        chunks = []
        while True:
            chunks.append(bytearray(32 * 2**20))  # bytearray() touches (zeroes) its pages
    """,
    )
    spec = spec_for(tmp_path, train_py, stub_data_dir, "limit-oom", memory_limit_gb=0.25)
    result = run_experiment(spec)
    assert result.status == "crash"
    assert "OOM" in result.reason and "memory limit" in result.reason
    assert result.train_exit_code == 137
    assert result.train_seconds < 30
    assert leftovers(docker_client, spec.run_id) == []


def test_peak_ram_of_a_cpu_run_is_measured_from_outside(
    images, docker_client, stub_data_dir: Path, tmp_path: Path
) -> None:
    train_py = script(
        tmp_path,
        """
        import time
        held = bytearray(400 * 2**20)
        time.sleep(2.0)
    """,
    )
    spec = spec_for(tmp_path, train_py, stub_data_dir, "limit-ram")
    result = run_experiment(spec)
    assert result.memory_kind == "ram"
    assert 0.38 <= result.peak_memory_gb < 1.0


def test_a_thread_bomb_stops_at_the_pids_limit(images, docker_client, stub_data_dir: Path, tmp_path: Path) -> None:
    train_py = script(
        tmp_path,
        f"""
        import threading, time
        stop = threading.Event()
        started = 0
        try:
            for _ in range({specs.PIDS_LIMIT + 500}):
                threading.Thread(target=stop.wait, daemon=True).start()
                started += 1
        except RuntimeError as exc:
            print("refused after", started, "threads:", exc, flush=True)
        stop.set()
    """,
    )
    spec = spec_for(tmp_path, train_py, stub_data_dir, "limit-pids")
    result = run_experiment(spec)
    log = (spec.run_dir / "train.log").read_text()
    assert "refused after" in log, log[-1000:]
    started = int(log.split("refused after")[1].split()[0])
    assert started < specs.PIDS_LIMIT
    assert result.status == "crash"  # no model, but the host and other runs were untouched


def test_out_is_capped_by_the_kernel_and_nothing_of_it_stays_on_the_host(
    images, docker_client, stub_data_dir: Path, tmp_path: Path
) -> None:
    train_py = script(
        tmp_path,
        """
        import os
        block = os.urandom(2**20)
        written = 0
        try:
            with open("/out/junk.bin", "wb") as fh:
                for _ in range(3000):
                    fh.write(block)
                    fh.flush()
                    written += len(block)
        except OSError as exc:
            print("stopped after", written >> 20, "MiB:", exc.strerror, flush=True)
            raise SystemExit(1)
    """,
    )
    spec = spec_for(tmp_path, train_py, stub_data_dir, "limit-disk")
    result = run_experiment(spec, limits=Limits.for_profile(TEST, out_max_bytes=40 * 2**20))
    assert result.status == "crash"
    assert "No space left on device" in result.reason
    assert int(result.reason.split("stopped after")[1].split()[0]) <= 40
    assert sorted(p.name for p in spec.run_dir.iterdir()) == ["train.log", "train.py"]  # no junk on the host
    assert leftovers(docker_client, spec.run_id) == []


# --- how RAM is measured ---------------------------------------------------------------------


def test_working_set_leaves_out_inactive_file_cache(tmp_path: Path) -> None:
    from sandbox.cgroup import working_set_bytes

    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.usage_in_bytes").write_text("1000000\n")
    (v1 / "memory.stat").write_text("cache 600000\ntotal_inactive_file 400000\nrss 300000\n")
    assert working_set_bytes(v1) == 600000
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.current").write_text("5000\n")
    (v2 / "memory.stat").write_text("anon 3000\ninactive_file 1500\n")
    assert working_set_bytes(v2) == 3500


def test_peak_ram_falls_back_to_the_stats_api_without_a_visible_cgroup() -> None:
    from sandbox.docker_runner import _RamPeak as RamPeak

    class RemoteContainer:
        id = "f" * 64  # no such cgroup on this host

        def stats(self, stream: bool, one_shot: bool) -> dict:
            assert stream is False and one_shot is True
            return {"memory_stats": {"usage": 900, "stats": {"total_inactive_file": 100}}}

    peak = RamPeak()
    peak.sample(RemoteContainer())
    assert peak.peak_bytes == 800
