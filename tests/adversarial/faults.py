"""Pieces of the fault-injection suite (tests/test_faults.py): a night of the real controller loop,
real sandbox and real evaluator, with an honest agent and hooks that inject faults at chosen
phases; a proxy in front of the Docker engine (or the Anthropic API) that can drop its connections
and refuse new ones, as an engine restart or an outage looks from the client; and a driver to run
such a night in a subprocess that a test kills with SIGKILL.

    python tests/adversarial/faults.py --config night.json   (OVERNIGHT_TEST_HANG=phase:n to block there)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
for _path in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from controller_fakes import _maybe_hang  # noqa: E402 (after the sys.path set-up above)
from controller_fakes import make_repo as make_toy_repo  # noqa: E402 (after the sys.path set-up above)

from controller.agents.base import BaseAgent, Proposal, ProposalContext, Usage  # noqa: E402 (after the sys.path set-up above)
from controller.ledger import LedgerRow  # noqa: E402 (after the sys.path set-up above)
from controller.loop import LoopDeps, NightLoop  # noqa: E402 (after the sys.path set-up above)
from controller.records import RunRecord  # noqa: E402 (after the sys.path set-up above)
from controller.settings import load_settings  # noqa: E402 (after the sys.path set-up above)
from tests.adversarial.night import LIMITS, MEMORY_LIMIT_GB  # noqa: E402 (after the sys.path set-up above)

HONEST_SEED = REPO_ROOT / "tests" / "adversarial" / "honest_seed.py"
PROFILE = "test"
# STEPS of the honest seed per experiment: more steps, lower val_bpb. 0 = the baseline.
DEFAULT_STEPS = {1: 2, 2: 1, 3: 4, 4: 3, 5: 6, 6: 5}


def seed_with_steps(steps: int) -> str:
    return HONEST_SEED.read_text().replace("STEPS = 0 ", f"STEPS = {steps} ", 1)


def make_repo(root: Path) -> Path:
    repo = make_toy_repo(root, train_py=HONEST_SEED.read_text())
    return repo


def fast_sleep(seconds: float) -> None:
    """The loop's backoff (10 s, 20 s, ... between retries) at a twentieth of the time."""
    time.sleep(seconds / 20)


# ---------------------------------------------------------------------------------------------
# The agent and the observer.


class StepsAgent(BaseAgent):
    """Sets STEPS in the honest seed to steps[n] for experiment n (the same edit when asked again)."""

    name = "steps"
    can_fix_crashes = False

    def __init__(self, steps: dict[int, int] | None = None) -> None:
        self.steps = dict(DEFAULT_STEPS if steps is None else steps)
        self.calls: list[int] = []

    def propose(self, context: ProposalContext) -> Proposal:
        self.calls.append(context.experiment)
        steps = self.steps.get(context.experiment, 10 + context.experiment)
        Path(context.train_py).write_text(seed_with_steps(steps))
        _maybe_hang("agent-edited", context.experiment)
        return Proposal(description=f"STEPS = {steps}", usage=Usage(api_calls=1))

    def observe(self, n: int, val_bpb: float | None, status: str) -> None:
        pass


Hook = Callable[[], None]


class FaultObserver:
    """Runs an injection when the loop reaches (n, phase), and `on_say` on every message the loop
    gives a person (e.g. to restore the data once the loop has said it cannot use it). Blocks at
    OVERNIGHT_TEST_HANG like the controller tests' observer; `echo` prints the messages."""

    def __init__(
        self,
        at: dict[tuple[int, str], Hook] | None = None,
        on_say: Callable[[str], None] | None = None,
        echo: bool = False,
    ) -> None:
        self.at = dict(at or {})
        self.on_say = on_say
        self.echo = echo
        self.phases: list[tuple[int, str]] = []
        self.messages: list[tuple[str, str]] = []
        self.records: list[RunRecord] = []

    def phase(self, n: int, phase: str) -> None:
        self.phases.append((n, phase))
        hook = self.at.pop((n, phase), None)
        if hook is not None:
            hook()
        _maybe_hang(phase, n)

    def finished(self, record: RunRecord, best: LedgerRow | None) -> None:
        self.records.append(record)
        if self.echo:
            print(f"#{record.n} {record.status} {record.val_bpb} {record.description}", flush=True)

    def say(self, text: str, level: str = "info") -> None:
        self.messages.append((level, text))
        if self.echo:
            print(f"[{level}] {text}", flush=True)
        if self.on_say is not None:
            self.on_say(text)

    def said(self, fragment: str) -> list[str]:
        return [text for _, text in self.messages if fragment in text]


# ---------------------------------------------------------------------------------------------
# A night.


@dataclass
class NightSpec:
    repo: Path
    tag: str
    data_dir: Path
    runs_dir: Path | None = None
    max_experiments: int = 1
    steps: dict[int, int] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def build_night(
    spec: NightSpec,
    *,
    agent: Any = None,
    observer: Any = None,
    runner: Callable | None = None,
    remove_orphans: Callable[[str], object] | None = None,
    sleep: Callable[[float], None] = fast_sleep,
) -> NightLoop:
    from controller.cli import remove_tag_containers
    from evaluator.manifest import manifest_sha256
    from sandbox.experiment import run_experiment

    settings = load_settings(
        tag=spec.tag,
        profile=PROFILE,
        agent="search",
        repo=spec.repo,
        runs_dir=spec.runs_dir or spec.repo / "runs",
        worktrees_dir=spec.repo / "worktrees",
        data_dir=spec.data_dir,
        max_experiments=spec.max_experiments,
        max_fix_attempts=0,
        memory_limit_gb=MEMORY_LIMIT_GB,
        # Each fault is timed to a phase of one experiment: one experiment at a time, no proposal
        # prepared during a run, one baseline run.
        **{"overlap": False, "calibration_runs": 1, **spec.settings},
    )
    deps = LoopDeps(
        agent=agent or StepsAgent(spec.steps),
        runner=runner or functools.partial(run_experiment, limits=LIMITS),
        observer=observer or FaultObserver(),
        remove_orphans=remove_orphans or remove_tag_containers,
        manifest_sha256=manifest_sha256(spec.data_dir),
        sleep=sleep,
    )
    return NightLoop(settings, deps)


def tag_containers(tag: str, role: str | None = None, client: Any = None) -> list[Any]:
    from sandbox.engine import docker_client

    labels = [f"overnight.tag={tag}"] + ([f"overnight.role={role}", "overnight.part=job"] if role else [])
    return (client or docker_client()).containers.list(all=True, filters={"label": labels})


def wait_for_container(tag: str, role: str, experiment: int, timeout_s: float = 60.0) -> Any:
    """The running container of that role for experiment n of the tag, once the engine says it runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for container in tag_containers(tag, role):
            if container.labels.get("overnight.experiment") == str(experiment) and container.status == "running":
                return container
        time.sleep(0.1)
    raise TimeoutError(f"no running {role} container of {tag} #{experiment} within {timeout_s:.0f}s")


# ---------------------------------------------------------------------------------------------
# A proxy that can fail like a restarting engine or an unreachable API.


class Proxy:
    """Forwards connections from a new listening socket to `upstream` (a Unix socket path or a
    (host, port) pair). `drop()` cuts every open connection; `refuse()` makes new connections get
    closed at once, until `accept()`. The client sees exactly what it sees when the server goes away."""

    def __init__(self, upstream: str | tuple[str, int], listen: str | None = None) -> None:
        self.upstream = upstream
        self.family = socket.AF_UNIX if isinstance(upstream, str) else socket.AF_INET
        self.listener = socket.socket(self.family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(listen if self.family == socket.AF_UNIX else ("127.0.0.1", 0))
        self.listener.listen(128)
        self.refusing = threading.Event()
        self.closed = threading.Event()
        self.connections: set[socket.socket] = set()
        self.accepted = self.refused = self.dropped = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, name="proxy", daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        name = self.listener.getsockname()
        return f"unix://{name}" if self.family == socket.AF_UNIX else f"http://{name[0]}:{name[1]}"

    def refuse(self) -> None:
        self.refusing.set()

    def accept(self) -> None:
        self.refusing.clear()

    def drop(self) -> None:
        with self.lock:
            live, self.connections = list(self.connections), set()
            self.dropped += len(live) // 2
        for sock in live:
            _close(sock)

    def close(self) -> None:
        self.closed.set()
        self.drop()
        _close(self.listener)

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing.is_set():
                self.refused += 1
                _close(client)
                continue
            upstream = socket.socket(self.family, socket.SOCK_STREAM)
            try:
                upstream.connect(self.upstream)
            except OSError:
                _close(client)
                _close(upstream)
                continue
            with self.lock:
                self.accepted += 1
                self.connections.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.connections.discard(src)
                self.connections.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise RuntimeError(f"the engine proxy needs a Unix-socket DOCKER_HOST, not {host}")
    return host[len("unix://") :]


# ---------------------------------------------------------------------------------------------
# The subprocess driver (for SIGKILL).


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    spec = NightSpec(
        repo=Path(config["repo"]),
        tag=config["tag"],
        data_dir=Path(config["data_dir"]),
        max_experiments=int(config["max_experiments"]),
        steps={int(k): int(v) for k, v in config.get("steps", {}).items()} or None,
    )
    summary = build_night(spec, observer=FaultObserver(echo=True)).run()
    print(json.dumps({"reason": summary.reason, "rows": len(summary.rows)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
