"""Container output reaches train.log while the run is still going, and a flood is capped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sandbox_support import in_background, script, spec_for

from evaluator.profiles import get_profile
from sandbox import specs
from sandbox.experiment import run_experiment
from sandbox.limits import Limits
from sandbox.logs import TRUNCATED, last_line

pytestmark = pytest.mark.docker


def test_logs_stream_into_train_log_before_the_run_ends(
    images, docker_client, stub_data_dir: Path, tmp_path: Path
) -> None:
    train_py = script(
        tmp_path,
        """
        import os, time
        print("first line, while running", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists("/out/go") and time.monotonic() < deadline:
            time.sleep(0.05)
        print("last line", flush=True)
    """,
    )
    spec = spec_for(tmp_path, train_py, stub_data_dir, "logs-live")
    thread, box = in_background(lambda: run_experiment(spec))
    log = spec.run_dir / "train.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.exists() and "first line, while running" in log.read_text():
            break
        time.sleep(0.05)
    seen_while_running = log.read_text()
    running = docker_client.containers.list(filters={"label": [f"overnight.run={spec.run_id}", "overnight.part=job"]})
    assert "first line, while running" in seen_while_running
    assert "last line" not in seen_while_running
    assert [c.labels["overnight.role"] for c in running] == ["train"]  # still running
    volume = docker_client.volumes.get(specs.volume_name(spec.run_id, "train")).attrs
    (Path(volume["Mountpoint"]) / "go").touch()  # the host (root) sees the tmpfs volume
    thread.join(60)
    assert "error" not in box, box.get("error")
    assert log.read_text().endswith("last line\n")


def test_a_log_flood_is_truncated_at_the_cap_with_a_marker(
    images, docker_client, stub_data_dir: Path, tmp_path: Path
) -> None:
    train_py = script(
        tmp_path,
        """
        import sys
        line = "x" * 1023 + "\\n"
        for _ in range(4096):  # 4 MiB
            sys.stdout.write(line)
        sys.stdout.flush()
        raise SystemExit(3)
    """,
    )
    spec = spec_for(tmp_path, train_py, stub_data_dir, "logs-flood")
    cap = 256 * 1024
    result = run_experiment(spec, limits=Limits.for_profile(get_profile("test"), log_max_bytes=cap))
    text = (spec.run_dir / "train.log").read_text()
    marker = TRUNCATED.format(cap=cap)
    assert text.endswith(marker)
    assert len(text.encode()) == cap + len(marker.encode())
    assert result.status == "crash" and "exited with code 3" in result.reason


def test_crash_reasons_quote_the_last_log_line_as_printable_text(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_bytes(b"step 1\nTraceback...\nValueError: bad \x1b[31mthing\x07\n\n")
    assert last_line(log) == "ValueError: bad [31mthing"
