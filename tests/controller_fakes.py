"""Fakes for the controller's unit tests: a tiny git repo with a toy train.py, a runner that scores
train.py from its constants (no containers, no torch), and an agent that follows a script.

Also runnable as a program (`python tests/controller_fakes.py ...`) so a test can run the loop in
a subprocess and kill it with SIGKILL at a chosen phase (env OVERNIGHT_TEST_HANG="phase:n": on
reaching that phase of experiment n the process writes OVERNIGHT_TEST_MARKER and blocks)."""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from controller.agents.base import AgentError, BaseAgent, Proposal, ProposalContext, Usage  # noqa: E402
from evaluator.records import ScoreRecord  # noqa: E402
from sandbox.errors import SandboxError  # noqa: E402
from sandbox.result import ExperimentResult, ExperimentSpec  # noqa: E402

TOY_TRAIN_PY = '''"""A toy train.py: the fake runner scores it from its constants."""

LR = 0.001  # learning rate
DEPTH = 4  # layers
WIDTH = 64  # model width

print("training", LR, DEPTH, WIDTH)
'''

PROGRAM_MD = "# toy program\nMake val_bpb small.\n"
HANG_ENV = "OVERNIGHT_TEST_HANG"
MARKER_ENV = "OVERNIGHT_TEST_MARKER"


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "user",
        "GIT_AUTHOR_EMAIL": "user@example.org",
        "GIT_COMMITTER_NAME": "user",
        "GIT_COMMITTER_EMAIL": "user@example.org",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(root: Path, train_py: str = TOY_TRAIN_PY) -> Path:
    """A git repo with programs/default/{train.py,program.md} committed on main."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    (root / "programs" / "default").mkdir(parents=True)
    (root / "programs" / "default" / "train.py").write_text(train_py)
    (root / "programs" / "default" / "program.md").write_text(PROGRAM_MD)
    (root / "README.md").write_text("toy\n")
    (root / ".gitignore").write_text("runs/\nworktrees/\ndata/\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "seed")
    return root


def make_data_dir(data_dir: Path) -> str:
    """A data dir that verifies against its manifest (tokenizer files, one tiny shard per split);
    returns its identity. The fake runner reads no data."""
    from evaluator.manifest import EvalEntry, SplitEntry, manifest_sha256, write_manifest

    if not (data_dir / "manifest.json").exists():
        for folder in ("tokenizer", "train", "val", "eval"):
            (data_dir / folder).mkdir(parents=True, exist_ok=True)
        (data_dir / "tokenizer" / "tokenizer.json").write_text("{}\n")
        (data_dir / "tokenizer" / "token_bytes.bin").write_bytes(bytes(4 * 512))
        for split in ("train", "val"):
            (data_dir / split / "shard_00000.bin").write_bytes(bytes(2 * 65))
        (data_dir / "eval" / "scored.bin").write_bytes(bytes(2 * 65))
        (data_dir / "eval" / "spare.bin").write_bytes(bytes(2 * 65))
        entry = SplitEntry(docs=1, tokens=65, shards=1, source_docs=1)
        write_manifest(
            data_dir,
            profile="test",
            dataset="toy",
            vocab_size=512,
            bos_id=0,
            seq_len=64,
            splits={"train": entry, "val": entry},
            eval=EvalEntry(rows=1, spare_rows=1, row_tokens=65, drawn_from=1),
            source={"toy": True},
        )
    return manifest_sha256(data_dir)


def constants(source: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, (int, float)):
                out[node.targets[0].id] = float(node.value.value)
    return out


def toy_score(source: str) -> float:
    """Lower is better; best at LR=0.01, DEPTH=8."""
    c = constants(source)
    return 1.0 + (math.log10(c.get("LR", 0.001)) + 2) ** 2 / 10 + abs(c.get("DEPTH", 4) - 8) / 100


def _maybe_hang(phase: str, n: int) -> None:
    """Block forever at `phase` of experiment n when OVERNIGHT_TEST_HANG names it ("phase:n", or
    several "phase:n,phase:m": each writes <marker>-<phase>-<n> when reached, for runs in flight
    on several slots at once)."""
    want = os.environ.get(HANG_ENV)
    if not want:
        return
    points = want.split(",")
    if f"{phase}:{n}" not in points:
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:
        path = Path(marker) if len(points) == 1 else Path(f"{marker}-{phase}-{n}")
        path.write_text(f"{os.getpid()}\n")
    while True:
        time.sleep(1)


class FakeRunner:
    """Scores train.py from its constants. Markers in the source: CRASH, TIMEOUT, REJECT."""

    def __init__(
        self,
        fail_first: int = 0,
        delays: dict[int, float] | None = None,
        shift: Callable[[ExperimentSpec, int], float] | None = None,
        interrupt_at: tuple[int, int] | None = None,
    ) -> None:
        self.shift = shift  # (spec, runs so far) -> added to val_bpb: noise, or a drift of the machine
        self.interrupt_at = interrupt_at  # (experiment, replicate) whose run is a Ctrl-C of the controller
        self.specs: list[ExperimentSpec] = []
        self.fail_first = fail_first  # raise ConnectionError this many times (engine down)
        self.delays = delays or {}  # experiment number -> seconds its run takes
        self.windows: list[tuple[ExperimentSpec, float, float]] = []  # (spec, start, end) of each run
        self._lock = threading.Lock()

    def __call__(self, spec: ExperimentSpec) -> ExperimentResult:
        start = time.monotonic()
        with self._lock:
            self.specs.append(spec)
        try:
            return self._run(spec)
        finally:
            with self._lock:
                self.windows.append((spec, start, time.monotonic()))

    def _run(self, spec: ExperimentSpec) -> ExperimentResult:
        n = int(spec.labels.get("overnight.experiment", "-1"))
        if self.interrupt_at == (n, int(spec.labels.get("overnight.replicate", "0"))):
            raise KeyboardInterrupt
        if self.delays.get(n):
            time.sleep(self.delays[n])
        if self.fail_first > 0:
            self.fail_first -= 1
            raise SandboxError("no Docker engine reachable (ConnectionError): start dockerd")
        run_dir = Path(spec.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if Path(spec.train_py).resolve() != (run_dir / "train.py").resolve():
            shutil.copyfile(spec.train_py, run_dir / "train.py")
        source = (run_dir / "train.py").read_text()
        _maybe_hang("in-run", int(spec.labels.get("overnight.experiment", "-1")))
        base = dict(run_dir=run_dir, train_seconds=1.0, eval_seconds=0.5, peak_memory_gb=1.25, train_exit_code=0)
        if "CRASH" in source:
            (run_dir / "train.log").write_text("step 0\nTraceback (most recent call last):\nRuntimeError: boom\n")
            return ExperimentResult(
                **{**base, "train_exit_code": 1}, status="crash", reason="train.py exited with code 1"
            )
        if "TIMEOUT" in source:
            (run_dir / "train.log").write_text("step 0\nstep 1\n")
            return ExperimentResult(
                **{**base, "train_exit_code": None}, status="timeout", reason="training passed its cap"
            )
        (run_dir / "train.log").write_text("step 0\nstep 1\ndone\n")
        if "REJECT" in source:
            score = ScoreRecord(status="rejected", reason="future tokens changed logits", profile=spec.profile)
            (run_dir / "eval.log").write_text("probe failed\n")
            (run_dir / "score.json").write_text(score.model_dump_json())
            return ExperimentResult(**base, status="rejected", reason=score.reason, score=score, eval_exit_code=3)
        value = toy_score(source) + (self.shift(spec, len(self.specs)) if self.shift else 0.0)
        score = ScoreRecord(status="ok", profile=spec.profile, val_bpb=value, tokens=100, bytes=400)
        (run_dir / "eval.log").write_text("scored\n")
        (run_dir / "score.json").write_text(score.model_dump_json())
        return ExperimentResult(**base, status="ok", score=score, eval_exit_code=0, image_id="sha256:fake")


def set_constants(source: str, values: dict[str, float]) -> str:
    lines = source.splitlines(keepends=True)
    for i, line in enumerate(lines):
        for name, value in values.items():
            if line.startswith(f"{name} = "):
                comment = line[line.index("#") :] if "#" in line else "\n"
                lines[i] = f"{name} = {value!r}  {comment}" if "#" in line else f"{name} = {value!r}\n"
    return "".join(lines)


class ScriptedAgent(BaseAgent):
    """Follows a script keyed by experiment number; a list there gives successive calls for that
    experiment (refused edits and fix attempts ask again; the last entry repeats). Experiments
    without an entry get {"set": {"WIDTH": 64 + n}} (a change that does not move the score). Steps:
    {"set": {"LR": 0.01}, "desc": "..."}   rewrite constants
    {"append": "text", "desc": "..."}      append text to train.py (e.g. "CRASH = 1" or a syntax error)
    {"replace": ["old", "new"], ...}       replace text in train.py
    {"touch": "relative/path", ...}        also write another file in the worktree
    {"error": "message"}                   raise AgentError
    {"noop": true}                         change nothing
    """

    name = "fake"

    def __init__(self, script: dict[int, dict | list[dict]]) -> None:
        self.script = {int(k): (v if isinstance(v, list) else [v]) for k, v in script.items()}
        self.calls = 0
        self.calls_for: dict[int, int] = {}
        self.contexts: list[ProposalContext] = []
        self.observed: list[tuple[int, float | None, str]] = []

    def _step(self, n: int) -> dict:
        k = self.calls_for.get(n, 0)
        self.calls_for[n] = k + 1
        steps = self.script.get(n, [{"set": {"WIDTH": 64 + n}, "desc": f"WIDTH -> {64 + n}"}])
        return steps[min(k, len(steps) - 1)]

    def propose(self, context: ProposalContext) -> Proposal:
        step = self._step(context.experiment)
        self.calls += 1
        self.contexts.append(context)
        if "error" in step:
            raise AgentError(step["error"])
        path = Path(context.train_py)
        source = path.read_text()
        if "set" in step:
            source = set_constants(source, step["set"])
        if "append" in step:
            source += "\n" + step["append"] + "\n"
        if "replace" in step:
            source = source.replace(*step["replace"])
        if not step.get("noop"):
            path.write_text(source)
        if "touch" in step:
            other = path.parents[2] / step["touch"]
            other.parent.mkdir(parents=True, exist_ok=True)
            other.write_text("x\n")
        _maybe_hang("agent-edited", context.experiment)
        return Proposal(
            description=step.get("desc", "change"),
            usage=Usage(input_tokens=10, output_tokens=5, cost_usd=0.001, api_calls=1),
            transcript=[{"role": "user", "content": "go"}],
        )

    def observe(self, n: int, val_bpb: float | None, status: str) -> None:
        self.observed.append((n, val_bpb, status))


class HangObserver:
    """Records phases; blocks at the phase named by OVERNIGHT_TEST_HANG (for kill -9 tests)."""

    def __init__(self) -> None:
        self.phases: list[tuple[int, str]] = []
        self.messages: list[str] = []
        self.finished_records: list = []

    def phase(self, n: int, phase: str) -> None:
        self.phases.append((n, phase))
        _maybe_hang(phase, n)

    def finished(self, record, best) -> None:
        self.finished_records.append(record)

    def say(self, text: str, level: str = "info") -> None:
        self.messages.append(text)


def build_loop(repo: Path, tag: str, script: dict, max_experiments: int | None, runner=None, **settings):
    from controller.loop import LoopDeps, NightLoop
    from controller.settings import load_settings
    from controller.slots import Slot

    s = load_settings(
        **{
            "tag": tag,
            "profile": "test",
            "agent": "search",
            "repo": repo,
            "runs_dir": repo / "runs",
            "worktrees_dir": repo / "worktrees",
            "data_dir": repo / "data",
            "max_experiments": max_experiments,
            "overlap": False,
            **settings,
        }
    )
    agent = ScriptedAgent(script)
    runner = runner or FakeRunner()
    observer = HangObserver()
    deps = LoopDeps(
        agent=agent,
        runner=runner,
        observer=observer,
        sleep=lambda s: None,
        manifest_sha256=make_data_dir(Path(s.data_dir)),
    )
    slots = [Slot(i, cpuset=str(i)) for i in range(s.slots)] if s.slots > 1 else None
    return NightLoop(s, deps, slots=slots), agent, runner, observer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--script", type=Path, required=True)
    parser.add_argument("--max-experiments", type=int, default=None)
    parser.add_argument("--slots", type=int, default=1)
    args = parser.parse_args()
    extra = {"overlap": True, "slots": args.slots} if args.slots > 1 else {}
    loop, agent, _, _ = build_loop(
        args.repo, args.tag, json.loads(args.script.read_text()), args.max_experiments, **extra
    )
    summary = loop.run()
    print(json.dumps({"reason": summary.reason, "rows": len(summary.rows), "agent_calls": agent.calls}))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def check_consistent(repo: Path, tag: str) -> list:
    """The invariants a night keeps, even across kill -9 and with several experiments in flight:
    one ref per ledger row and no other, numbers 0..N-1 each decided once (rows come in decision
    order), the branch is the baseline plus the kept commits in the order they were kept, each
    kept commit's parent is the best before it (so exactly the measured commit landed), every row
    has its run folder and run.json, every run folder belongs to a recorded run, nothing half-done
    is left in the worktree. Returns the ledger rows."""
    from controller import git as g
    from controller.ledger import Ledger

    ledger = Ledger(repo / "runs" / tag)
    rows = ledger.rows()
    refs = g.experiment_refs(repo, tag)
    numbers = [row.n for row in rows]
    assert sorted(numbers) == list(range(len(rows))), numbers  # each number decided once, none missing
    assert sorted(refs) == sorted(numbers), (refs, numbers)
    expected_dirs: set[str] = set()
    for row in rows:
        commit = refs[row.n]
        assert commit.startswith(row.commit)
        record = ledger.read_record(row.n, commit)
        assert record is not None and record.n == row.n and record.commit == commit and record.status == row.status
        assert (ledger.row_run_dir(row.n, row) / "train.py").read_bytes() == g.file_at(
            repo, commit, "programs/default/train.py"
        )
        expected_dirs.add(ledger.row_run_dir(row.n, row).name)
        expected_dirs.update(r.run_dir for r in record.replicates)
        if row.scored:
            ok = [r.val_bpb for r in record.own_replicates if r.status == "ok" and r.val_bpb is not None]
            assert len(ok) == row.runs >= 1 and abs(sum(ok) / len(ok) - row.val_bpb) < 1e-6  # val_bpb was measured
    commits = [refs[row.n] for row in rows]
    assert len(set(commits[1:])) == len(commits[1:])  # no commit decided twice
    run_dirs = {p.name for p in ledger.tag_dir.iterdir() if p.is_dir() and p.name[:4].isdigit()}
    assert run_dirs == expected_dirs, (run_dirs, expected_dirs)  # no stray run folder
    if rows:
        base = refs[0]
        kept = [refs[row.n] for row in rows if row.status == "keep"]
        tip = g.resolve(repo, f"refs/heads/autoresearch/{tag}")
        chain = g.first_parent_chain(repo, base, tip)
        baseline_kept = any(row.n == 0 and row.status == "keep" for row in rows)
        expected = kept if baseline_kept else [base, *kept]
        assert chain == expected, (chain, expected)
        wt = repo / "worktrees" / tag
        assert git(wt, "status", "--porcelain", "--untracked-files=all") == ""
    return rows


def cli_with_fakes(argv: list[str], script: dict, run_seconds: float = 0.0) -> int:
    """`python -m controller` with the fake agent and runner wired in (no containers, no key).
    The runner writes OVERNIGHT_TEST_MARKER-<n> when experiment n starts and takes run_seconds."""
    import controller.cli as cli

    fake = FakeRunner()

    def runner(spec: ExperimentSpec) -> ExperimentResult:
        marker = os.environ.get(MARKER_ENV)
        if marker:
            Path(f"{marker}-{spec.labels.get('overnight.experiment')}").write_text("running\n")
        time.sleep(run_seconds)
        return fake(spec)

    fakes = {
        "make_backend": lambda settings: None,  # no engine: the fake runner below stands in for it
        "make_runner": lambda settings, backend=None: runner,
        "make_agent_for": lambda settings: ScriptedAgent(script),
        "current_image_id": lambda settings, backend=None: "sha256:fake",
        "remove_tag_containers": lambda tag, backend=None: [],
    }
    real = {name: getattr(cli, name) for name in fakes}
    for name, fake_fn in fakes.items():
        setattr(cli, name, fake_fn)
    try:
        return cli.main(argv)
    finally:  # in-process callers (tests) must not leave the CLI faked for the next module
        for name, fn in real.items():
            setattr(cli, name, fn)
