"""The contract every sandbox.runner.Runner keeps, as test functions over a `backend` fixture.

A backend's test module defines the fixture `backend` (a Backend below) and imports these
tests with `from runner_contract import *`; pytest then runs them against that backend
(tests/test_k8s_contract.py: Kubernetes against the fake API server; a Docker module does the
same with the DockerRunner). The jobs are small Python programs that find their writable folder
in $OVERNIGHT_OUT_DIR, so they run unchanged in a container or in the fake cluster's processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from evaluator.hostile import UnsafeFileError
from sandbox.errors import SandboxError
from sandbox.runner import JobHandle, JobOutcome, JobSpec, Runner

MiB = 2**20
OUT = "/out"
SCORE = "/score"
TRAIN_PY = "/work/train.py"
ARTIFACT = "/artifact/model.pt2"


@dataclass
class Backend:
    name: str
    runner: Runner
    image: str  # what JobSpec.image must be for this backend
    data_dir: Path  # a data dir with the prepared layout (manifest.json, tokenizer, train, val)
    leftovers: Callable[[str], list[str]]  # what the backend still holds of a run id
    work: Path  # a scratch folder for host files
    handles: list[JobHandle] = field(default_factory=list)  # cancelled at teardown

    def job(
        self,
        run_id: str,
        script: str,
        *,
        role: str = "train",
        cap_s: float = 30.0,
        memory_gb: float = 1.0,
        output_max_bytes: int = 64 * MiB,
        inputs: dict[str, Path] | None = None,
        command: tuple[str, ...] | None = None,
        gpu: int | None = None,
    ) -> JobSpec:
        """A job running `script` as its train.py (or as `command` with the given inputs)."""
        out = OUT if role == "train" else SCORE
        if command is None:
            train_py = self.work / f"{run_id}-{role}.py"
            train_py.write_text(textwrap.dedent(script))
            inputs = {TRAIN_PY: train_py, **(inputs or {})}
            command = ("python", TRAIN_PY)
        return JobSpec(
            run_id=run_id,
            role=role,  # type: ignore[arg-type]
            image=self.image,
            command=command,
            environment={
                "HOME": "/home/overnight",
                "PYTHONUNBUFFERED": "1",
                "TMPDIR": "/tmp",
                "PATH": "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin",
                "OVERNIGHT_OUT_DIR": out,
            },
            data_dir=self.data_dir,
            data_parts=("manifest.json", "tokenizer", "train" if role == "train" else "eval"),
            inputs=inputs or {},
            output_dir=out,
            output_max_bytes=output_max_bytes,
            output_max_files=1000,
            cap_s=cap_s,
            memory_gb=memory_gb,
            gpu=gpu,
            labels={"overnight.tag": "contract"},
        )

    def run(
        self, job: JobSpec, *, log_max_bytes: int = MiB, watchers: tuple[Any, ...] = ()
    ) -> tuple[JobHandle, JobOutcome, Path]:
        """submit -> stream_logs -> wait, as the orchestrator does; the handle is cancelled at
        teardown if the test does not."""
        handle = self.runner.submit(job, watchers)
        self.handles.append(handle)
        log = self.work / f"{job.run_id}-{job.role}.log"
        self.runner.stream_logs(handle, log, log_max_bytes)
        return handle, self.runner.wait(handle), log


def run_id(name: str) -> str:
    return f"{name}-{os.getpid() % 10000}-{int(time.monotonic() * 1000) % 100000}"


WRITE_MODEL = """
    import os, time
    print("training", flush=True)
    time.sleep(1)
    with open(os.path.join(os.environ["OVERNIGHT_OUT_DIR"], "model.pt2"), "wb") as f:
        f.write(bytes(range(256)) * 4096)
    print("done", flush=True)
"""
MODEL_BYTES = bytes(range(256)) * 4096


class _KillAfter:
    """A watcher that names a reason once `seconds` have passed since the job started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.events: list[str] = []

    def before_start(self) -> None:
        self.events.append("before_start")

    def check(self, handle: JobHandle) -> str | None:
        started = handle.started_monotonic
        if started is not None and time.monotonic() - started > self.seconds:
            return "VRAM over its cap"
        return None

    def finish(self) -> None:
        self.events.append("finish")


# ---------------------------------------------------------------------------------------------
# the contract


def test_a_job_runs_streams_its_log_live_and_its_output_comes_back(backend: Backend) -> None:
    rid = run_id("ok")
    handle, outcome, log = backend.run(backend.job(rid, WRITE_MODEL))
    assert outcome.exit_code == 0 and not outcome.timed_out and not outcome.oom_killed
    assert outcome.seconds >= 0.9 and handle.started_monotonic is not None
    assert "training" in log.read_text() and "done" in log.read_text()
    dest = backend.work / "model.pt2"
    assert backend.runner.fetch_output(handle, "model.pt2", dest, 10 * MiB) == len(MODEL_BYTES)
    assert dest.read_bytes() == MODEL_BYTES
    backend.runner.cancel(handle)
    assert backend.leftovers(rid) == []


def test_the_log_is_in_the_file_while_the_job_still_runs(backend: Backend) -> None:
    rid = run_id("live")
    job = backend.job(
        rid,
        """
        import time
        print("first line", flush=True)
        time.sleep(30)
    """,
    )
    handle = backend.runner.submit(job)
    backend.handles.append(handle)
    log = backend.work / "live.log"
    backend.runner.stream_logs(handle, log, MiB)
    ends = time.monotonic() + 20
    while "first line" not in (log.read_text() if log.exists() else "") and time.monotonic() < ends:
        time.sleep(0.1)
    assert "first line" in log.read_text()
    backend.runner.cancel(handle)
    assert backend.leftovers(rid) == []


def test_the_eval_job_reads_the_checked_artifact_and_writes_its_own_score(backend: Backend) -> None:
    rid = run_id("pair")
    train, outcome, _ = backend.run(backend.job(rid, WRITE_MODEL))
    assert outcome.exit_code == 0
    artifact = backend.work / "artifact" / "model.pt2"
    artifact.parent.mkdir()
    backend.runner.fetch_output(train, "model.pt2", artifact, 10 * MiB)
    score = """
        import hashlib, json, os, sys
        data = open(sys.argv[1], "rb").read()
        print("scoring", len(data), flush=True)
        with open(os.path.join(sys.argv[2], "score.json"), "w") as f:
            json.dump({"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, f)
    """
    script = backend.work / "score_prog.py"
    script.write_text(textwrap.dedent(score))
    job = backend.job(
        rid,
        "",
        role="eval",
        command=("python", "/prog/score.py", ARTIFACT, SCORE),
        inputs={ARTIFACT: artifact, "/prog/score.py": script},
    )
    evaluation = backend.runner.submit(job)
    backend.handles.append(evaluation)
    backend.runner.cancel(train)  # after the eval job's submit: the artifact stays served
    log = backend.work / "eval.log"
    backend.runner.stream_logs(evaluation, log, MiB)
    outcome = backend.runner.wait(evaluation)
    assert outcome.exit_code == 0, log.read_text()
    dest = backend.work / "score.json"
    backend.runner.fetch_output(evaluation, "score.json", dest, MiB)
    assert json.loads(dest.read_text()) == {
        "sha256": hashlib.sha256(MODEL_BYTES).hexdigest(),
        "bytes": len(MODEL_BYTES),
    }
    backend.runner.cancel(evaluation)
    assert backend.leftovers(rid) == []


def test_a_nonzero_exit_is_reported_with_its_code(backend: Backend) -> None:
    _, outcome, log = backend.run(
        backend.job(
            run_id("exit"),
            """
        import sys
        print("about to fail", flush=True)
        sys.exit(7)
    """,
        )
    )
    assert outcome.exit_code == 7 and not outcome.timed_out and not outcome.oom_killed
    assert "about to fail" in log.read_text()


def test_a_job_past_its_cap_is_killed_and_timed_out(backend: Backend) -> None:
    rid = run_id("slow")
    started = time.monotonic()
    handle, outcome, _ = backend.run(
        backend.job(
            rid,
            """
        import time
        print("sleeping", flush=True)
        time.sleep(120)
    """,
            cap_s=2.0,
        )
    )
    assert outcome.timed_out
    assert 2.0 <= outcome.seconds < 15 and time.monotonic() - started < 40
    backend.runner.cancel(handle)
    assert backend.leftovers(rid) == []


def test_a_job_over_its_memory_limit_is_oom_killed(backend: Backend) -> None:
    _, outcome, _ = backend.run(
        backend.job(
            run_id("oom"),
            """
        import time
        hog = b"x" * (700 * 2**20)
        time.sleep(30)
    """,
            memory_gb=0.25,
        )
    )
    assert outcome.oom_killed and outcome.exit_code == 137 and not outcome.timed_out


def test_a_log_flood_is_cut_at_the_cap(backend: Backend) -> None:
    _, outcome, log = backend.run(
        backend.job(
            run_id("flood"),
            """
        import sys
        for i in range(20000):
            sys.stdout.write("flood line %06d\\n" % i)
    """,
        ),
        log_max_bytes=10_000,
    )
    assert outcome.exit_code == 0 and outcome.log_truncated
    text = log.read_bytes()
    assert text.startswith(b"flood line 000000") and b"log truncated at 10000 bytes" in text
    assert len(text) < 10_000 + 200


def test_a_watchers_reason_kills_the_job(backend: Backend) -> None:
    watcher = _KillAfter(1.0)
    _, outcome, _ = backend.run(
        backend.job(
            run_id("watched"),
            """
        import time
        time.sleep(60)
    """,
        ),
        watchers=(watcher,),
    )
    assert outcome.killed_for == "VRAM over its cap" and not outcome.timed_out
    assert watcher.events == ["before_start", "finish"]


HOSTILE = {
    "symlink_out": "os.symlink('/etc/passwd', os.path.join(out, 'model.pt2'))",
    "symlink_in": "open(os.path.join(out, 'real'), 'wb').write(b'x'); "
    "os.symlink('real', os.path.join(out, 'model.pt2'))",
    "fifo": "os.mkfifo(os.path.join(out, 'model.pt2'))",
    "directory": "os.mkdir(os.path.join(out, 'model.pt2'))",
    "setuid": "p = os.path.join(out, 'model.pt2'); open(p, 'wb').write(b'x'); os.chmod(p, 0o4755)",
    "sparse_over_cap": "f = open(os.path.join(out, 'model.pt2'), 'wb'); f.truncate(3 * 2**30)",
    "missing": "pass",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_outputs_are_refused_and_leave_no_file(backend: Backend, kind: str) -> None:
    rid = run_id(kind.replace("_", "-"))
    handle, outcome, _ = backend.run(
        backend.job(
            rid,
            f"""
        import os
        out = os.environ["OVERNIGHT_OUT_DIR"]
        {HOSTILE[kind]}
    """,
        )
    )
    assert outcome.exit_code == 0
    dest = backend.work / "model.pt2"
    with pytest.raises(UnsafeFileError):
        backend.runner.fetch_output(handle, "model.pt2", dest, 1 * 2**30)
    assert not dest.exists() and not dest.is_symlink()
    backend.runner.cancel(handle)
    assert backend.leftovers(rid) == []


def test_a_file_over_the_fetch_cap_is_refused(backend: Backend) -> None:
    handle, _, _ = backend.run(backend.job(run_id("big"), WRITE_MODEL))
    dest = backend.work / "model.pt2"
    with pytest.raises(UnsafeFileError, match="cap"):
        backend.runner.fetch_output(handle, "model.pt2", dest, len(MODEL_BYTES) - 1)
    assert not dest.exists()


def test_cancel_mid_run_is_idempotent_and_leaves_nothing(backend: Backend) -> None:
    rid = run_id("cancel")
    handle = backend.runner.submit(backend.job(rid, "import time\ntime.sleep(60)\n"))
    backend.runner.stream_logs(handle, backend.work / "cancel.log", MiB)
    done = threading.Event()
    threading.Timer(1.0, lambda: (backend.runner.cancel(handle), done.set())).start()
    outcome = backend.runner.wait(handle)
    done.wait(30)
    backend.runner.cancel(handle)
    assert outcome.exit_code != 0
    assert backend.leftovers(rid) == []


def test_cleanup_removes_what_a_crashed_controller_left(backend: Backend) -> None:
    rid = run_id("crashed")
    backend.runner.submit(backend.job(rid, "import time\ntime.sleep(60)\n"))  # never cancelled
    assert backend.leftovers(rid) != []
    removed = backend.runner.cleanup(rid)
    assert removed and backend.leftovers(rid) == []


def test_a_missing_image_is_a_sandbox_error(backend: Backend) -> None:
    job = backend.job(run_id("noimage"), "print('never')\n")
    job = dataclasses.replace(job, image=backend.image.rsplit(":", 1)[0] + "-missing:none")
    with pytest.raises(SandboxError):
        handle = backend.runner.submit(job)
        backend.handles.append(handle)
        backend.runner.wait(handle)
