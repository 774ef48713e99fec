"""Fault injection against the controller, with the real loop, git, ledger, sandbox (real
containers on the real engine) and evaluator: the controller killed with SIGKILL in each phase
and resumed; the Docker engine dropping out mid-run; the data directory corrupted or missing; the
runs folder's disk full; the agent's API down, rate-limited, overloaded, failing or sending
malformed tool calls; an edit that does not compile. Each ends in a clear message and the night
going on (or a clear, early error for a setup problem), never a silent stop or a lost result."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import structlog
from controller_fakes import check_consistent
from structlog.testing import capture_logs

from controller import git as g
from controller.agents.anthropic_agent import AnthropicAgent, AnthropicSettings
from controller.ledger import Ledger
from controller.logs import LOG_NAME, close_logging, configure_logging
from controller.loop import NightSummary
from evaluator.manifest import verify_manifest
from sandbox.docker_runner import DockerRunner
from sandbox.experiment import run_experiment
from tests.adversarial.faults import (
    DEFAULT_STEPS,
    FaultObserver,
    NightSpec,
    Proxy,
    build_night,
    engine_socket,
    make_repo,
    seed_with_steps,
    tag_containers,
    wait_for_container,
)
from tests.adversarial.night import LIMITS
from tests.fake_anthropic import (
    FakeAnthropic,
    Raw,
    Reply,
    overloaded,
    rate_limited,
    server_error,
    tool_use,
)

pytestmark = pytest.mark.docker

REPO_ROOT = Path(__file__).resolve().parent.parent
DRIVER = REPO_ROOT / "tests" / "adversarial" / "faults.py"
NIGHT_TIMEOUT_S = 300.0


def run_in_thread(loop: Any, timeout_s: float = NIGHT_TIMEOUT_S) -> NightSummary:
    """Run a night; a night that neither ends nor fails within the timeout is a failure, not a hang."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["summary"] = loop.run()
        except BaseException as exc:  # noqa: BLE001 (surfaced below)
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        loop.d.stop.request()
        thread.join(60)
        pytest.fail(f"the night did not end within {timeout_s:.0f}s")
    if "error" in box:
        raise box["error"]
    return box["summary"]


def flip_byte(path: Path, offset: int = 100) -> Callable[[], None]:
    """Corrupt one byte of a file; returns the function that puts it back."""
    data = bytearray(path.read_bytes())
    original = data[offset]
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))

    def restore() -> None:
        data[offset] = original
        path.write_bytes(bytes(data))

    return restore


def in_background(fn: Callable[[], None]) -> Callable[[], None]:
    def start() -> None:
        threading.Thread(target=fn, daemon=True).start()

    return start


@pytest.fixture
def data_copy(test_data_dir: Path, tmp_path: Path) -> Path:
    """A data dir of its own, for faults that break it."""
    return Path(shutil.copytree(test_data_dir, tmp_path / "data"))


# ---------------------------------------------------------------------------------------------
# SIGKILL in each phase, then resume.


@dataclass(frozen=True)
class Kill:
    phase: str  # the name for it
    n: int
    hang: str | None = None  # OVERNIGHT_TEST_HANG: block the controller there, then kill it
    container: str | None = None  # or kill it while this container of experiment n runs
    appended: bool = False  # experiment n's row was already written when the kill came


KILLS = (
    Kill("training", 0, container="train"),
    Kill("proposing", 1, hang="agent-edited:1"),
    Kill("git update (committed, no ref yet)", 1, hang="committed:1"),
    Kill("git update (ref, journal not yet)", 1, hang="ref:1"),
    Kill("scoring", 1, container="eval"),
    Kill("recording", 2, hang="recorded:2"),
    Kill("git update (after the decision)", 3, hang="decided:3", appended=True),
)
MAX_EXPERIMENTS = 3


def start_driver(config: Path, log: Path, hang: str | None, marker: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")}
    if hang:
        env.update(OVERNIGHT_TEST_HANG=hang, OVERNIGHT_TEST_MARKER=str(marker))
    marker.unlink(missing_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, str(DRIVER), "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
        )


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the controller exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_a_controller_killed_in_each_phase_resumes_with_nothing_lost_or_duplicated(
    images, test_data_dir: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    tag = "kills"
    config = tmp_path / "night.json"
    config.write_text(
        json.dumps({"repo": str(repo), "tag": tag, "data_dir": str(test_data_dir), "max_experiments": MAX_EXPERIMENTS})
    )
    log, marker = tmp_path / "driver.log", tmp_path / "hung"
    left_behind: list[str] = []
    for kill in KILLS:
        proc = start_driver(config, log, kill.hang, marker)
        if kill.hang:
            wait_for(marker.exists, 120, f"phase {kill.hang}", proc, log)
        else:
            assert kill.container is not None
            wait_for(
                lambda kill=kill: any(
                    c.labels.get("overnight.experiment") == str(kill.n) and c.status == "running"
                    for c in tag_containers(tag, kill.container)
                ),
                120,
                f"the {kill.container} container of #{kill.n}",
                proc,
                log,
            )
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        if kill.container:
            left_behind += [c.name for c in tag_containers(tag)]
            assert left_behind, f"killing the controller in {kill.phase} left no container to clean up"
        rows = Ledger(repo / "runs" / tag).rows()
        expected_rows = kill.n + 1 if kill.appended else kill.n
        assert len(rows) == expected_rows, f"after a kill in {kill.phase}: {len(rows)} rows, not {expected_rows}"
    proc = start_driver(config, log, None, marker)
    assert proc.wait(300) == 0, log.read_text()[-3000:]

    rows = check_consistent(repo, tag)
    assert len(rows) == MAX_EXPERIMENTS + 1
    expected = ["baseline", *(f"STEPS = {DEFAULT_STEPS[n]}" for n in range(1, MAX_EXPERIMENTS + 1))]
    assert [r.description for r in rows] == expected
    assert [r.status for r in rows] == ["keep", "keep", "discard", "keep"]
    assert tag_containers(tag) == []  # the containers the kills left were removed on resume
    interrupted = sorted(p.name for p in (repo / "runs" / tag / "interrupted").iterdir())
    assert [name[:4] for name in interrupted] == ["0000", "0001"]  # the half runs, set aside and redone
    assert "resuming experiment 1" in log.read_text()
    assert g.git(repo, "rev-parse", "HEAD") == g.experiment_refs(repo, tag)[0]  # the user's checkout untouched


# ---------------------------------------------------------------------------------------------
# The engine drops out, the data goes bad or away: the experiment is redone, never a false crash.


@dataclass
class EngineNight:
    summary: NightSummary
    rows: list
    observer: FaultObserver
    logs: list[dict[str, Any]]
    late_restores: list[str]
    proxy: Proxy
    repo: Path
    tag: str
    data_dir: Path


@pytest.fixture(scope="module")
def engine_night(images, test_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineNight]:
    """Baseline, then one fault per experiment: 1 val shard corrupted, 2 data dir gone, 3 the engine
    connection cut for a moment, 4 the engine "restarting" (connections cut and refused, the
    running container killed). The night talks to the engine through a proxy that does the cutting."""
    tmp = tmp_path_factory.mktemp("engine")
    data = Path(shutil.copytree(test_data_dir, tmp / "data"))
    repo = make_repo(tmp / "repo")
    tag = "engine"
    sock_dir = Path(tempfile.mkdtemp(prefix="ovn-", dir="/tmp"))  # short: Unix socket paths are capped
    proxy = Proxy(engine_socket(), listen=str(sock_dir / "engine.sock"))
    client = docker.DockerClient(base_url=proxy.address, timeout=60)
    real = docker.from_env()
    late: list[str] = []
    pending: list[tuple[str, Callable[[], None]]] = []

    def restore_late() -> None:  # the next experiment starts: put back what the loop never noticed
        while pending:
            label, restore = pending.pop(0)
            late.append(label)
            restore()

    def corrupt_val() -> None:  # the rows the evaluator scores
        pending.append(("corrupt val", flip_byte(data / "eval" / "scored.bin")))

    def remove_data() -> None:
        moved = data.with_name("data-moved")
        data.rename(moved)
        pending.append(("data dir", lambda: moved.rename(data)))

    def blip() -> None:
        wait_for_container(tag, "train", 3)
        time.sleep(1.0)
        proxy.drop()

    def restart() -> None:
        container = wait_for_container(tag, "train", 4)
        time.sleep(1.0)
        proxy.refuse()
        proxy.drop()
        try:
            real.containers.get(container.id).kill()  # an engine restart without live-restore kills its containers
            time.sleep(2.0)
        finally:
            proxy.accept()

    def on_say(text: str) -> None:
        if text.startswith("sandbox error") and pending:
            pending.pop(0)[1]()

    observer = FaultObserver(
        at={
            (1, "training"): corrupt_val,
            (2, "proposing"): restore_late,
            (2, "training"): remove_data,
            (3, "proposing"): restore_late,
            (3, "training"): in_background(blip),
            (4, "training"): in_background(restart),
        },
        on_say=on_say,
    )

    through_proxy = DockerRunner(client)

    loop = build_night(
        NightSpec(repo=repo, tag=tag, data_dir=data, max_experiments=4, settings={"hours": 0.2}),
        observer=observer,
        runner=lambda spec: run_experiment(spec, limits=LIMITS, runner=through_proxy),
        remove_orphans=through_proxy.cleanup_tag,
    )
    with capture_logs() as logs:
        summary = run_in_thread(loop)
    yield EngineNight(summary, Ledger(repo / "runs" / tag).rows(), observer, logs, late, proxy, repo, tag, data)
    proxy.close()
    shutil.rmtree(sock_dir, ignore_errors=True)


def test_the_engine_night_scores_every_experiment_and_stays_consistent(engine_night: EngineNight) -> None:
    assert engine_night.summary.reason == "max-experiments"
    rows = check_consistent(engine_night.repo, engine_night.tag)
    assert [(r.description, r.status) for r in rows] == [
        ("baseline", "keep"),
        ("STEPS = 2", "keep"),
        ("STEPS = 1", "discard"),
        ("STEPS = 4", "keep"),
        ("STEPS = 3", "discard"),
    ]
    assert tag_containers(engine_night.tag) == []
    verify_manifest(engine_night.data_dir, ["train", "val", "eval"])


def test_corrupted_validation_data_mid_night_is_retried_as_a_setup_error_not_recorded_as_a_crash(
    engine_night: EngineNight,
) -> None:
    row = engine_night.rows[1]
    assert row.status != "crash", "a data problem was blamed on experiment 1"
    assert "corrupt val" not in engine_night.late_restores, "the loop never said the data was bad"
    assert engine_night.observer.said("does not match its manifest"), engine_night.observer.messages


def test_a_data_dir_gone_mid_night_waits_with_a_clear_message_and_goes_on(engine_night: EngineNight) -> None:
    row = engine_night.rows[2]
    assert row.status in ("keep", "discard"), f"experiment 2 recorded as {row.status}"
    assert "data dir" not in engine_night.late_restores
    assert engine_night.observer.said("is not a prepared data dir"), engine_night.observer.messages


def test_an_engine_connection_cut_mid_run_redoes_the_run_instead_of_a_false_crash(engine_night: EngineNight) -> None:
    assert engine_night.proxy.dropped >= 1
    row = engine_night.rows[3]
    assert row.status in ("keep", "discard"), (
        f"experiment 3 recorded as {row.status} after the engine connection was cut"
    )
    errors = [e for e in engine_night.logs if e.get("event") == "sandbox_error" and "0003" in e.get("run_id", "")]
    assert errors, "the cut was not reported"


def test_an_engine_restart_mid_run_redoes_the_run(engine_night: EngineNight) -> None:
    assert engine_night.proxy.refused >= 1
    row = engine_night.rows[4]
    assert row.status in ("keep", "discard"), f"experiment 4 recorded as {row.status} after the engine restarted"
    errors = [e for e in engine_night.logs if e.get("event") == "sandbox_error" and "0004" in e.get("run_id", "")]
    assert errors and all(e.get("retry_in_s") for e in errors)


# ---------------------------------------------------------------------------------------------
# The runs folder's disk fills up.


@contextlib.contextmanager
def small_disk(mount: Path, size: str = "48m") -> Iterator[Path]:
    """A small tmpfs mounted at `mount` (mounting needs root, as CI has)."""
    mount.mkdir(parents=True, exist_ok=True)
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    done = subprocess.run(
        [*prefix, "mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the disk-full test (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run([*prefix, "umount", "-l", str(mount)], capture_output=True, check=False)


def fill(mount: Path, log: Path) -> Path:
    """Fill the filesystem, to the last page: the ballast, then the log's own last page (a padding
    line), so that the next line anything writes needs space there is none of."""
    ballast = mount / "ballast"
    with open(ballast, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
    slack = -log.stat().st_size % 4096
    if slack:
        pad = '{"event": "padding", "x": ""}\n'
        with open(log, "a") as fh:
            fh.write(pad.replace('""', '"' + "x" * max(0, slack - len(pad)) + '"'))
    return ballast


def test_a_full_disk_in_the_runs_folder_pauses_the_night_and_loses_nothing(
    images, test_data_dir: Path, tmp_path: Path
) -> None:
    """The disk fills twice: while the controller writes its journal (proposing #1), and while it
    records #2's decision after the run (the run's folder and record are written by then); its own
    log is on the same disk. Each time the night says so, waits, and goes on once space is freed
    (re-reading its records as a resume would); no row is lost or doubled."""
    repo = make_repo(tmp_path / "repo")
    tag = "diskfull"
    runs = repo / "runs"
    ballast: list[Path] = []
    said_when_full: list[int] = []

    def fill_disk() -> None:
        said_when_full.append(len(observer.said("No space left")))
        ballast.append(fill(runs, runs / tag / LOG_NAME))

    def on_say(text: str) -> None:
        if ballast and len(observer.said("No space left")) >= said_when_full[-1] + 2:  # a retry on the full disk too
            ballast.pop().unlink()

    with small_disk(runs):
        configure_logging(runs / tag)  # as `python -m controller overnight` does: its log is on the full disk too
        observer = FaultObserver(at={(1, "proposing"): fill_disk, (2, "recorded"): fill_disk}, on_say=on_say)
        loop = build_night(
            NightSpec(repo=repo, tag=tag, data_dir=test_data_dir, max_experiments=2, settings={"hours": 0.1}),
            observer=observer,
        )
        timer = threading.Timer(90.0, lambda: [path.unlink(missing_ok=True) for path in ballast])
        timer.start()  # whatever happens, the disk is freed (and the test fails below)
        try:
            summary = run_in_thread(loop)
        finally:
            timer.cancel()
            for path in ballast:
                path.unlink(missing_ok=True)
            close_logging()
            structlog.reset_defaults()
        assert summary.reason == "max-experiments"
        rows = check_consistent(repo, tag)
        assert [(r.description, r.status) for r in rows] == [
            ("baseline", "keep"),
            ("STEPS = 2", "keep"),
            ("STEPS = 1", "discard"),
        ]
        assert len(observer.said("No space left")) >= 4, observer.messages  # said plainly while it waited
        events = [json.loads(line) for line in (runs / tag / LOG_NAME).read_text().splitlines()]
        assert [e["n"] for e in events if e.get("event") == "experiment"] == [0, 1, 2]


# ---------------------------------------------------------------------------------------------
# The agent's API: down for minutes, 429, 529, 500, a non-JSON body, malformed tool calls, and
# an edit that does not compile.


def test_an_unreliable_agent_api_only_delays_the_night(images, test_data_dir: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    tag = "api"
    valid = seed_with_steps(2)
    broken = valid.replace("STEPS = 2", "STEPS = (2")
    slept = {"total": 0.0}
    with FakeAnthropic(api_key="test-key") as fake:
        proxy = Proxy(("127.0.0.1", int(fake.url.rsplit(":", 1)[1])))

        def down_for_three_minutes() -> None:
            proxy.refuse()
            slept["down_at"] = slept["total"]

        def sleep(seconds: float) -> None:  # the loop's clock: three minutes of backoff pass in no time
            slept["total"] += seconds
            if "down_at" in slept and slept["total"] - slept["down_at"] >= 180:
                proxy.accept()

        fake.enqueue(
            rate_limited(retry_after="0"),
            overloaded(),
            server_error(),
            Raw(502, b"<html>502 Bad Gateway</html>", {"content-type": "text/html"}),
            Reply(
                [
                    tool_use("edit_train_py", "STEPS = 2"),
                    tool_use("shell", {"cmd": "ls"}),
                    tool_use("edit_train_py", {"old_str": 5, "new_str": None}),
                ]
            ),
            Reply([tool_use("write_train_py", {"content": broken}), tool_use("finish", {"description": "broken"})]),
            Reply([tool_use("write_train_py", {"content": valid}), tool_use("finish", {"description": "STEPS = 2"})]),
        )
        agent = AnthropicAgent(
            AnthropicSettings(
                api_key="test-key",
                base_url=proxy.address,
                patience_s=1.0,
                backoff_initial_s=0.01,
                backoff_max_s=0.05,
                request_timeout_s=5.0,
            )
        )
        observer = FaultObserver(at={(1, "proposing"): down_for_three_minutes})
        loop = build_night(
            NightSpec(repo=repo, tag=tag, data_dir=test_data_dir, max_experiments=1, settings={"hours": 0.1}),
            agent=agent,
            observer=observer,
            sleep=sleep,
        )
        with capture_logs() as logs:
            summary = run_in_thread(loop)
        requests = fake.message_requests()
        proxy.close()

    assert summary.reason == "max-experiments"
    rows = check_consistent(repo, tag)
    assert [(r.description, r.status) for r in rows] == [("baseline", "keep"), ("STEPS = 2", "keep")]
    assert slept["total"] >= 180  # the loop waited out three minutes of outage (on its own clock)
    assert proxy.refused >= 2
    agent_errors = [e for e in logs if e.get("event") == "agent_error"]
    assert agent_errors and all("unreachable" in e["error"] for e in agent_errors), agent_errors
    assert observer.said("agent error: Anthropic API unreachable"), observer.messages
    record = Ledger(repo / "runs" / tag).read_record(1, g.experiment_refs(repo, tag)[1])
    assert record is not None and record.usage.retries >= 4  # 429, 529, 500 and the 502 were retried
    assert len(requests) == 4 + 3  # the four failures, then the three turns of the proposal
    # The edit that did not compile was refused by the finish tool: never committed, never run.
    for sha in g.experiment_refs(repo, tag).values():
        assert b"STEPS = (2" not in g.file_at(repo, sha, "programs/default/train.py")
    transcript = json.loads((Ledger(repo / "runs" / tag).row_run_dir(1, rows[1]) / "transcript.json").read_text())
    assert "does not compile" in json.dumps(transcript)


# ---------------------------------------------------------------------------------------------
# Setup problems: a clear, early, one-line error before anything runs.


def corrupt_val(data: Path) -> None:
    flip_byte(data / "eval" / "scored.bin")


def corrupt_train(data: Path) -> None:
    flip_byte(data / "train" / "shard_00000.bin")


def truncate_manifest(data: Path) -> None:
    path = data / "manifest.json"
    path.write_bytes(path.read_bytes()[:50])


def remove_tokenizer(data: Path) -> None:
    (data / "tokenizer" / "token_bytes.bin").unlink()


def overnight_cli(repo: Path, data: Path, tag: str) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m controller overnight` as a user types it; (the finished process, its seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OVERNIGHT_", "ANTHROPIC_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "overnight",
            "--tag",
            tag,
            "--profile",
            "test",
            "--agent",
            "search",
            "--repo",
            str(repo),
            "--data-dir",
            str(data),
            "--runs-dir",
            str(repo / "runs"),
            "--worktrees-dir",
            str(repo / "worktrees"),
            "--max-experiments",
            "0",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, time.monotonic() - started


def test_a_missing_data_dir_is_a_clear_early_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    done, _ = overnight_cli(repo, tmp_path / "no-such-data", "missing")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "make prepare" in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (repo / "runs" / "missing" / "results.tsv").exists()


@pytest.mark.parametrize(
    "damage", [corrupt_val, corrupt_train, truncate_manifest, remove_tokenizer], ids=lambda f: f.__name__
)
def test_a_corrupted_data_dir_is_a_clear_early_error(
    data_copy: Path, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    repo = make_repo(tmp_path / "repo")
    damage(data_copy)
    tag = damage.__name__.replace("_", "-")
    done, _ = overnight_cli(repo, data_copy, tag)
    assert done.returncode == 2, f"the night started on damaged data:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "make prepare" in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (repo / "runs" / tag / "results.tsv").exists()  # nothing ran, nothing recorded
    assert tag_containers(tag) == []
