"""The overnight loop: a calibrated baseline, then proposals that are checked, committed, run on a
free slot and decided by the noise-aware keep rule, until the night ends by itself (--hours,
--until, --max-experiments) or is stopped.

Slots and overlap. Each slot is one GPU (or, on CPU, its own pinned cores); up to one experiment
runs per slot. The agent prepares the next proposal while the slots are busy; a prepared proposal
is committed when a slot is free, on the current best: if the best moved since the agent started,
its change is merged onto the best (a three-way merge of train.py), and on a conflict the agent
proposes again. With several slots, a candidate may finish after another one was kept: it is
compared with the current best, and if it would be kept its change is merged onto the best and
the merged commit is run before anything lands. A commit lands on the branch only if exactly that
commit was measured. An optional CPU preflight (a few steps at a tiny shape, through submit() and
the evaluator's checks and probe) turns export failures, refused ops and non-causal models into
that experiment's result without costing a slot.

The keep rule (controller/noise.py). The night starts by running the baseline several times with
seeds the controller chooses; their spread, pooled with every later replicate of any commit
(confirmation runs, replays), is the run-to-run noise. A candidate is kept when it beats the
incumbent (the mean of its runs) by a margin, discarded when clearly not better, and given a
confirmation run with a fresh seed in between; paired per-row losses add the eval-sampling noise.

Every experiment is a row of results.tsv, written when it is decided (in completion order, with
its number). Refused edits are not committed and have no row: the agent is asked again with the
reason up to max_fix_attempts times. A crashed or rejected experiment goes back to the agent with
its log tail for a bounded number of fix attempts; a fix is a new experiment.

One run's failure is that run's: anything unexpected while running or recording an experiment
(a bug, hostile input nobody foresaw, a cleanup that raises) is recorded as that experiment's
`crash` with its reason, and the night goes on; it never loops on one experiment. Agent errors
are retried after a capped backoff. Infrastructure errors (the Docker engine down, the
evaluator's own setup failing, the controller's disk full) are retried a bounded number of times
with a clear message, then the night stops and says what to fix and how to resume. A restart
after kill -9 at any point finishes or redoes the experiments in flight, from the journal
`runs/<tag>/state.json` and the ledger: no row is lost or written twice, and the branch holds
exactly the baseline and the kept commits of the ledger.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import json
import os
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from controller import git
from controller.agents import is_fatal
from controller.agents.base import (
    Agent,
    AgentError,
    Failure,
    FixDeclined,
    HistoryRow,
    InFlight,
    Proposal,
    ProposalContext,
    Usage,
)
from controller.git import compile_error
from controller.ledger import Ledger, LedgerRow, clean_description
from controller.noise import Decision as NoiseDecision
from controller.noise import NoiseError, NoiseEstimate, code_size, is_simpler, paired_eval_se, pooled_noise
from controller.noise import decide as decide_rule
from controller.records import (
    FIX_DECLINED_JSON,
    FIXABLE,
    FixDeclinedRecord,
    Journal,
    Pending,
    ReplayRecord,
    ReplicateRecord,
    RunRecord,
    SlotsRecord,
    SlotState,
    TagRecord,
    Timings,
    utcnow,
)
from controller.safefiles import atomic_write_model, atomic_write_text, read_tail
from controller.settings import Settings
from controller.slots import Slot
from evaluator.hostile import clean_line
from evaluator.profiles import get_profile
from evaluator.rowloss import ROWLOSS_FILE, RowLossError, profile_rows, read_rowloss
from sandbox.errors import SandboxError
from sandbox.result import ExperimentResult, ExperimentSpec
from sandbox.specs import LABEL_TAG

Runner = Callable[[ExperimentSpec], ExperimentResult]
LOG_TAIL_BYTES = 6000
FAILURES_SHOWN = 5
BACKOFF_START_S = 10.0
BACKOFF_CAP_S = 600.0
ALONGSIDE_SEEDS = 1_000_000  # seeds of the best's runs alongside a candidate start here (+ 1000 n + k)
INFRA_ATTEMPTS = 6  # tries of one experiment through an infrastructure error (~10 min of backoff)
STORAGE_ATTEMPTS = 6  # tries through errors writing the controller's own records
UNEXPECTED_LIMIT = 5  # unexpected errors in a row without a row written: something is systematically broken
IN_FLIGHT_DIFF_CAP = 4000  # characters of each in-flight experiment's diff the agent is shown
REPLAY_JSON = "replay.json"


class SetupError(RuntimeError):
    """The night cannot start or resume as asked; one line saying what to do."""


class AgentFatalError(RuntimeError):
    """The agent failed in a way waiting cannot fix (bad API key, unknown model): the night ends."""


class InfrastructureError(RuntimeError):
    """The engine, the evaluator's setup or the disk kept failing past the bound: the night stops
    (nothing is lost: a resume redoes the experiment in flight). One line saying what to fix."""


class StopFlag:
    """Set by the first Ctrl-C: finish the experiment in flight, then end the night. `now` is set by
    a second Ctrl-C or SIGTERM/SIGHUP just before KeyboardInterrupt is raised, so an exception
    that replaced it on its way up (e.g. in a library's cleanup) still stops the night."""

    def __init__(self) -> None:
        self.requested = False
        self.now = False

    def request(self) -> None:
        self.requested = True

    def request_now(self) -> None:
        self.requested = self.now = True


class LoopObserver(Protocol):
    """What a person (or a test) is told while the loop runs."""

    def phase(self, n: int, phase: str) -> None: ...

    def finished(self, record: RunRecord, best: LedgerRow | None) -> None: ...

    def say(self, text: str, level: str = "info") -> None: ...

    # Optional: `slot(state: SlotState)` when a slot starts or ends a run (the live view).


class NullObserver:
    def phase(self, n: int, phase: str) -> None:
        pass

    def finished(self, record: RunRecord, best: LedgerRow | None) -> None:
        pass

    def say(self, text: str, level: str = "info") -> None:
        pass


def _local_now() -> dt.datetime:
    return dt.datetime.now().astimezone()


@dataclass
class LoopDeps:
    agent: Agent
    runner: Runner
    observer: LoopObserver = field(default_factory=NullObserver)
    remove_orphans: Callable[[str], object] | None = None  # tag -> (removes that tag's containers)
    manifest_sha256: str | None = None
    preflight: Runner | None = None  # a CPU check of a proposal before it takes a slot (sandbox.preflight)
    compile_cache: Path | None = (
        None  # the night's warm compile cache, given to every train job (sandbox.compile_cache)
    )
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], dt.datetime] = _local_now
    stop: StopFlag = field(default_factory=StopFlag)


@dataclass(frozen=True)
class NightSummary:
    reason: str  # "max-experiments" | "deadline" | "stopped"
    rows: list[LedgerRow]
    best: LedgerRow | None


@dataclass(frozen=True)
class FixTask:
    of: int  # the first crashed experiment of the chain
    attempt: int  # 1..max_fix_attempts (0: a proposal to make again after a merge conflict)
    failure: Failure
    source: bytes | None  # the crashed train.py the fix starts from (None: start from the best)


# -- settings of a resumed tag ---------------------------------------------------------------

RESUMED_FIELDS = ("program", "profile", "seed", "data_dir")


def resume_settings(settings: Settings) -> Settings:
    """For a tag that exists, take program, profile, seed and data dir from its tag.json unless
    they were given; refuse ones given that differ (a night cannot change them half-way)."""
    record = Ledger(settings.tag_dir).read_tag()
    if record is None:
        return settings
    recorded = {
        "program": record.program,
        "profile": record.profile,
        "seed": record.seed,
        "data_dir": Path(record.data_dir),
    }
    update = {}
    for name in RESUMED_FIELDS:
        if name not in settings.model_fields_set:
            update[name] = recorded[name]
        elif name != "data_dir" and getattr(settings, name) != recorded[name]:
            raise SetupError(
                f"tag {settings.tag} was started with {name} {recorded[name]}, not {getattr(settings, name)}: "
                f"drop --{name.replace('_', '-')} to resume it, or choose a new --tag"
            )
    return settings.model_copy(update=update) if update else settings


@contextlib.contextmanager
def tag_lock(tag_dir: Path) -> Iterator[None]:
    """One controller per tag: an flock on runs/<tag>/lock (released by the kernel on kill -9)."""
    tag_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(tag_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise SetupError(f"another controller is running tag {tag_dir.name} (pid {other}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def tag_running(tag_dir: Path) -> int | None:
    """The pid of the controller running this tag now, or None (its lock is free)."""
    try:
        fd = os.open(tag_dir / "lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        return None
    finally:
        os.close(fd)


def _backoff() -> Iterator[float]:
    delay = BACKOFF_START_S
    while True:
        yield delay
        delay = min(BACKOFF_CAP_S, delay * 2)


def _spawn(fn: Callable[[], object], name: str) -> Future:
    """Run `fn` in a daemon thread (a second Ctrl-C must not wait for it) and return its future."""
    future: Future = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the main thread, which decides
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


@dataclass
class RunTask:
    """One run of an experiment's commit, waiting for a slot (lower priority first)."""

    n: int
    k: int
    priority: int  # 0: calibration and confirmation runs, 1: merges, 2: first runs of proposals


@dataclass
class Prepared:
    """A proposal the agent finished, checked and ready to commit when a slot is free."""

    content: bytes  # train.py
    parent: str  # the best commit the agent started from
    proposal: Proposal
    attempts: list[dict]
    propose_seconds: float
    fix: FixTask | None
    reproposal_of: int | None = None


@dataclass
class _State:
    """What the scheduler holds while the night runs (owned by the main thread)."""

    queue: list[RunTask] = field(default_factory=list)
    running: dict[Future, tuple[RunTask, Slot]] = field(default_factory=dict)
    preflights: dict[Future, int] = field(default_factory=dict)
    proposing: Future | None = None
    prepared: list[Prepared] = field(default_factory=list)
    free: list[Slot] = field(default_factory=list)


class NightLoop:
    def __init__(self, settings: Settings, deps: LoopDeps, slots: list[Slot] | None = None) -> None:
        self.s = settings
        self.d = deps
        self.ledger = Ledger(settings.tag_dir)
        self.train_rel = f"programs/{settings.program}/train.py"
        self.log = structlog.get_logger("overnight.loop").bind(tag=settings.tag)
        self.slots = slots or [Slot(0, gpu=settings.gpu)]
        self.rows: list[LedgerRow] = []
        self.commits: dict[int, str] = {}  # n -> full sha, for every decided experiment
        self.pending: dict[int, Pending] = {}  # committed, not yet decided
        self.runs_of: dict[str, list[float]] = {}  # commit -> val_bpb of each ok run (the noise pool)
        self.evidence: dict[int, str] = {}  # n -> the keep rule's one-line evidence
        self.deadline: dt.datetime | None = None
        self.profile = get_profile(settings.profile)
        self.lock = threading.RLock()
        self.state = _State()
        self.reproposals: list[FixTask] = []  # merge conflicts: the agent proposes the idea again
        self.fix_keys: set[tuple[int, int]] = set()  # (first failed experiment, attempt) of fixes started
        self.slot_states: dict[int, SlotState] = {
            s.index: SlotState(index=s.index, label=s.label()) for s in self.slots
        }

    # -- the night ---------------------------------------------------------------------------

    def run(self) -> NightSummary:
        with tag_lock(self.s.tag_dir):
            self._setup()
            self._reconcile()
            self.deadline = self.s.deadline(self.d.now())
            self.log.info(
                "night_start",
                n=len(self.rows),
                deadline=str(self.deadline),
                slots=len(self.slots),
                max_experiments=self.s.max_experiments,
                agent=self.d.agent.name,
            )
            reason = self._schedule()
            if reason != "stopped" and self.s.verify_runs > 0:  # the morning's error bars (make verify)
                from controller.verify import verify_night

                self.d.observer.say(f"verifying: the baseline and the best, {self.s.verify_runs} runs each")
                verify_night(self.s, self.d.runner, say=self.d.observer.say, stop=lambda: self.d.stop.requested)
            self.log.info("night_end", reason=reason, rows=len(self.rows))
            return NightSummary(reason=reason, rows=list(self.rows), best=self._best_row())

    def _schedule(self) -> str:
        st = self.state
        st.free = list(self.slots)
        self._queue_pending()
        waits = _backoff()
        storage_failures = unexpected = 0
        recover = False  # after a storage error: re-read the records, as a resume would
        while True:
            rows_before = len(self.rows)
            try:
                if recover:
                    self._recover()
                    recover = False
                progressed = self._tick()
            except (InfrastructureError, AgentFatalError, SetupError, KeyboardInterrupt):
                raise
            except OSError as exc:
                storage_failures += 1
                if storage_failures >= STORAGE_ATTEMPTS:
                    raise InfrastructureError(
                        f"cannot write under {self.s.tag_dir} ({exc.strerror or exc}) after "
                        f"{storage_failures} tries: free some disk, then resume"
                    ) from None
                self._storage_error(exc, next(waits))
                recover = True  # until the records are re-read without an error, nothing else runs
                continue
            except Exception as exc:
                unexpected = unexpected + 1 if len(self.rows) == rows_before else 1
                if unexpected >= UNEXPECTED_LIMIT:
                    raise InfrastructureError(
                        f"{unexpected} unexpected errors in a row ({type(exc).__name__}); "
                        f"see {self.s.tag_dir}/controller.log.jsonl"
                    ) from exc
                self._unexpected(exc)
                continue
            if len(self.rows) != rows_before:
                storage_failures = unexpected = 0
                waits = _backoff()
            idle = not (st.running or st.preflights or st.proposing or st.queue or self.pending)
            reason = self._why_stop()
            if reason is not None and not (st.running or st.preflights or st.proposing):
                return reason
            if reason is None and idle and not st.prepared and not self._may_propose():
                return self._why_stop() or "max-experiments"
            if not progressed:
                futures = [*st.running, *st.preflights, *([st.proposing] if st.proposing else [])]
                if futures:
                    futures_wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)

    def _tick(self) -> bool:
        """Collect what finished, start what can start; True when something happened."""
        st = self.state
        progressed = False
        for future in [f for f in st.running if f.done()]:
            task, slot = st.running.pop(future)
            st.free.append(slot)
            st.free.sort(key=lambda s: s.index)
            self._show_slot(slot, None)
            self._run_finished(task, slot, future)
            progressed = True
        for future in [f for f in st.preflights if f.done()]:
            n = st.preflights.pop(future)
            self._preflight_finished(n, future)
            progressed = True
        if st.proposing is not None and st.proposing.done():
            future, st.proposing = st.proposing, None
            prepared = future.result()  # an exception here is the proposal's: handled by _schedule
            if prepared is not None:
                st.prepared.append(prepared)
            progressed = True
        accepting = self._why_stop() is None
        if accepting:
            progressed |= self._commit_prepared()
            progressed |= self._start_runs()
            if st.proposing is None and self._wants_proposal():
                st.proposing = self._start_proposal()
                progressed = True
        return progressed

    def _storage_error(self, exc: OSError, delay: float) -> None:
        """The controller could not write its own records (a full disk, a vanished folder). Every
        record is written atomically, so nothing is half-done: say so, wait, and take the night up
        again as a resume after kill -9 would."""
        self.log.error("storage_error", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
        self.d.observer.say(
            f"cannot write under {self.s.tag_dir}: {exc.strerror or exc}; retrying in {delay:.0f}s", "error"
        )
        self._wait(delay)

    def _recover(self) -> None:
        """Take the night up again after a storage error, as a resume after kill -9 would. An
        OSError here (the disk still full) is another storage error: said, waited for, retried."""
        self.ledger.repair()
        self._drain()
        self._reconcile()
        self._queue_pending()

    def _unexpected(self, exc: Exception) -> None:
        """A bug or hostile input nobody foresaw, while proposing, running or recording: the
        experiment it belongs to becomes a crash row (when it was committed) and the night goes on."""
        self.log.error("unexpected_error", error=type(exc).__name__, exc_info=True)
        n = getattr(exc, "experiment", None)
        pending = self.pending.get(n) if n is not None else None
        if pending is None and len(self.pending) == 1 and not self.state.running:
            pending = next(iter(self.pending.values()))
        if pending is not None:
            reason = (
                f"internal error ({type(exc).__name__}) while handling this experiment; "
                f"see {self.s.tag_dir.name}/controller.log.jsonl"
            )
            self.d.observer.say(f"#{pending.n}: {reason}; recorded as a crash", "error")
            self.state.queue = [t for t in self.state.queue if t.n != pending.n]
            result = ExperimentResult(
                status="crash", reason=reason, run_dir=self.ledger.run_dir(pending.n, pending.commit)
            )
            self._record_run(
                pending, RunTask(pending.n, len(pending.replicates), 0), None, result, utcnow(), time.monotonic()
            )
            self._finalize(pending, crashed=True)
            return
        self.d.observer.say(f"proposal dropped after an internal error ({type(exc).__name__})", "error")

    def _why_stop(self) -> str | None:
        if self.d.stop.requested:
            return "stopped"
        if self.deadline is not None and self.d.now() >= self.deadline:
            return "deadline"
        if self._experiments_done() and not self.pending and not self.state.prepared:
            return "max-experiments"
        return None

    def _experiments_done(self) -> bool:
        return self.s.max_experiments is not None and self._next_number() >= self.s.max_experiments + 1

    def _stop_now(self) -> bool:
        return self.d.stop.requested or (self.deadline is not None and self.d.now() >= self.deadline)

    def _wait(self, seconds: float) -> None:
        """Sleep in short steps, waking early when the night is stopped or its deadline passes."""
        left = seconds
        while left > 0 and not self._stop_now():
            step = min(1.0, left)
            self.d.sleep(step)
            left -= step

    def _hook(self, n: int, phase: str) -> None:
        self.d.observer.phase(n, phase)

    def _drain(self) -> None:
        """Wait for the runs and the proposal in flight (used before re-reading the records)."""
        st = self.state
        futures = [*st.running, *st.preflights, *([st.proposing] if st.proposing else [])]
        if futures:
            futures_wait(futures)
        st.running.clear()
        st.preflights.clear()
        st.proposing = None
        st.free = list(self.slots)
        for slot in self.slots:
            self._show_slot(slot, None)
        st.queue.clear()

    # -- start or resume -------------------------------------------------------------------

    def _setup(self) -> None:
        repo = git.repo_root(self.s.repo)
        self.repo = repo
        self.s.tag_dir.mkdir(parents=True, exist_ok=True)
        record = self.ledger.read_tag()
        branch = git.branch_name(self.s.tag)
        if record is None:
            if self.ledger.exists():
                raise SetupError(f"{self.ledger.path} exists without tag.json: choose a new --tag")
            if git.resolve(repo, f"refs/heads/{branch}") is not None:
                raise SetupError(
                    f"branch {branch} exists but {self.s.tag_dir}/ has no ledger: choose a new --tag "
                    f"or delete the branch (git branch -D {branch})"
                )
            base = git.head_commit(repo)
            if not git.has_file(repo, base, self.train_rel):
                raise SetupError(f"{self.train_rel} is not in the commit HEAD: commit it first")
            if git.locally_modified(repo, self.train_rel):
                self.d.observer.say(
                    f"note: {self.train_rel} has uncommitted changes; the night starts from the committed HEAD",
                    "warning",
                )
            record = TagRecord(
                tag=self.s.tag,
                program=self.s.program,
                profile=self.s.profile,
                seed=self.s.seed,
                base_commit=base,
                data_dir=str(self.s.data_dir),
                data_manifest_sha256=self.d.manifest_sha256,
                created=utcnow(),
            )
            self.ledger.write_tag(record)
        else:
            for name in ("program", "profile", "seed"):
                if getattr(self.s, name) != getattr(record, name):
                    raise SetupError(
                        f"tag {self.s.tag} was started with {name} {getattr(record, name)}; "
                        f"resume it with the same {name} or choose a new --tag"
                    )
            if (
                record.data_manifest_sha256
                and self.d.manifest_sha256
                and record.data_manifest_sha256 != self.d.manifest_sha256
            ):
                raise SetupError(
                    f"the data in {self.s.data_dir} differs from the data tag {self.s.tag} started "
                    "with (manifest hash): use that data or choose a new --tag"
                )
        self.tag_record = record
        self.ledger.create()
        self.ledger.repair()
        self.wt = git.open_worktree(repo, self.s.worktrees_dir, self.s.tag, self.train_rel, record.base_commit)
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        if self.d.remove_orphans is None:
            return
        try:
            self.d.remove_orphans(self.s.tag)
        except Exception as exc:  # the engine may be down right now; the runner's retries say so
            self.log.warning("orphan_cleanup_failed", error=f"{type(exc).__name__}: {exc}")

    def _reconcile(self) -> None:
        """Make git agree with the ledger, and pick up the experiments in flight."""
        rows = self.ledger.rows()
        refs = git.experiment_refs(self.repo, self.s.tag)
        commits: dict[int, str] = {}
        for row in rows:
            sha = refs.get(row.n)
            if sha is None or not sha.startswith(row.commit):
                raise SetupError(
                    f"results.tsv row {row.n} ({row.commit}) has no matching ref "
                    f"{git.experiment_ref(self.s.tag, row.n)}: the ledger and the repository disagree"
                )
            commits[row.n] = sha
        self.rows, self.commits = rows, commits
        self.runs_of, self.evidence = {}, {}
        self.fix_keys = set()
        for row in rows:
            record = self.ledger.read_record(row.n, row.commit)
            if record is None:
                continue
            if record.fix_of is not None:
                self.fix_keys.add((record.fix_of, record.fix_attempt))
            if row.scored:
                self._remember_runs(record.commit, record.replicates)
                if record.decision is not None:
                    self.evidence[row.n] = record.decision.text
        for commit, values in self._replays().items():
            self.runs_of.setdefault(commit, []).extend(values)
        journal = self.ledger.read_journal() or Journal()
        decided = {row.n for row in rows}
        self.pending = {}
        for p in journal.pending:
            if p.n in decided or refs.get(p.n) != p.commit:
                continue
            self.pending[p.n] = p
            self._remember_runs(p.commit, p.replicates)
            if p.fix_of is not None:
                self.fix_keys.add((p.fix_of, p.fix_attempt))
        for n in refs:
            if n not in decided and n not in self.pending:
                git.delete_ref(self.repo, git.experiment_ref(self.s.tag, n))
        self._save_journal()
        tip = self._best_commit()
        branch = git.branch_name(self.s.tag)
        if git.resolve(self.repo, f"refs/heads/{branch}") != tip:
            git.update_ref(self.repo, f"refs/heads/{branch}", tip)  # the ledger is the truth
        if rows:
            self.d.observer.say(f"resuming tag {self.s.tag}: {len(rows)} experiments in the ledger")
        for p in self.pending.values():
            self.log.info("resume_in_flight", n=p.n, commit=p.commit, runs=len(p.replicates))
            self.d.observer.say(f"resuming experiment {p.n} ({p.commit[:7]}) that was in flight")
        self.wt.reset_to(tip)

    def _replays(self) -> dict[str, list[float]]:
        """Replays of this tag's commits: replicates for the noise pool."""
        found: dict[str, list[float]] = {}
        for path in sorted((self.s.tag_dir / "replays").glob(f"*/{REPLAY_JSON}")):
            try:
                rep = ReplayRecord.model_validate_json(path.read_bytes())
            except ValueError:
                continue
            if rep.replayed_val_bpb is not None and rep.status == "ok":
                found.setdefault(rep.commit, []).append(rep.replayed_val_bpb)
        return found

    def _remember_runs(self, commit: str, replicates: list[ReplicateRecord]) -> None:
        """Pool an experiment's scored runs by the commit each measured (the best's runs alongside
        a candidate go to the best), in the order they finished."""
        self.runs_of.setdefault(commit, [])
        for r in sorted(replicates, key=lambda r: r.finished):
            if r.status == "ok" and r.val_bpb is not None:
                self.runs_of.setdefault(r.of_commit or commit, []).append(r.val_bpb)

    def _save_journal(self) -> None:
        with self.lock:
            self.ledger.write_journal(Journal(pending=sorted(self.pending.values(), key=lambda p: p.n)))

    def _next_number(self) -> int:
        with self.lock:
            taken = [row.n for row in self.rows] + list(self.pending)
            return max(taken) + 1 if taken else 0

    def _queue_pending(self) -> None:
        """Runs the pending experiments still need (on resume: the ones lost with the controller)."""
        if not self.rows and 0 not in self.pending:
            self._start_baseline()
        queued = {(t.n, t.k) for t in self.state.queue}
        running = {(t.n, t.k) for t, _ in self.state.running.values()}
        for p in sorted(self.pending.values(), key=lambda p: p.n):
            done = {r.k for r in p.replicates}
            if p.n in self.state.preflights.values():
                continue
            missing = [k for k in range(p.wanted) if k not in done]
            if not missing or any(r.preflight for r in p.replicates):
                if p.n not in {n for n, _ in running}:
                    self._decide(p)  # every run it needs was recorded before the restart
                continue
            for k in missing:
                if (p.n, k) not in queued and (p.n, k) not in running:
                    self._enqueue(p, k)

    # -- the current best ------------------------------------------------------------------

    def _best_row(self) -> LedgerRow | None:
        keeps = [row for row in self.rows if row.status == "keep"]
        return keeps[-1] if keeps else None

    def _best_commit(self) -> str:
        row = self._best_row()
        return self.commits[row.n] if row is not None else self.tag_record.base_commit

    # -- proposals -------------------------------------------------------------------------

    def _may_propose(self) -> bool:
        return not self._experiments_done() and not self._stop_now()

    def _wants_proposal(self) -> bool:
        """Ask the agent for the next proposal now? Without overlap: only when nothing else is in
        flight (one experiment at a time). With it: while the slots are busy, so the next one is
        ready when a slot frees, but never more than one ahead of the free slots."""
        st = self.state
        if not self._may_propose() or st.prepared or (not self.rows and not self._baseline_decided()):
            return False
        waiting = len(st.queue) + len(st.preflights)
        if not self.s.overlap:
            return not (st.running or waiting or self.pending)
        return waiting == 0 and len(self.pending) <= len(self.slots)

    def _baseline_decided(self) -> bool:
        return any(row.n == 0 for row in self.rows)

    def _start_proposal(self) -> Future:
        n = self._next_number()
        fix = self.reproposals.pop(0) if self.reproposals else self._pending_fix()
        return _spawn(lambda: self._prepare(n, fix), f"propose-{n}")

    def _pending_fix(self) -> FixTask | None:
        """The next failed experiment to send back for a fix: the latest crash or rejection among
        the last few rows (with several slots, it need not be the very last row) whose next fix
        attempt was not started yet, not declined, and within max_fix_attempts."""
        if self.s.max_fix_attempts == 0 or not self.d.agent.can_fix_crashes:
            return None
        with self.lock:
            recent = list(self.rows[-(len(self.slots) + 1) :])
        for row in reversed(recent):
            n = row.n
            if n < 1 or row.status not in FIXABLE:
                continue
            if (self.ledger.row_run_dir(n, row) / FIX_DECLINED_JSON).is_file():
                continue  # the agent gave up on it: never asked again, across restarts too
            record = self.ledger.read_record(n, row.commit)
            attempt = (record.fix_attempt + 1) if record is not None else 1
            origin = record.fix_of if record is not None and record.fix_of is not None else n
            if attempt > self.s.max_fix_attempts or (origin, attempt) in self.fix_keys:
                continue
            self.fix_keys.add((origin, attempt))
            failure = Failure(
                n=n, description=row.description, status=row.status, log_tail=self._log_tail(n, row, record)
            )
            return FixTask(
                of=origin,
                attempt=attempt,
                failure=failure,
                source=git.file_at(self.repo, self.commits[n], self.train_rel),
            )
        return None

    def _log_tail(self, n: int, row: LedgerRow, record: RunRecord | None, cap: int = LOG_TAIL_BYTES) -> str:
        run_dir = self.ledger.row_run_dir(n, row)
        parts = []
        if record is not None and record.reason:
            parts.append(f"[{record.status}] {record.reason}")
        for name in ("preflight.log", "train.log", "eval.log"):
            tail = read_tail(run_dir / name, cap)
            if tail.strip():
                parts.append(f"--- {name} (last lines) ---\n{tail}")
        return "\n".join(parts)[-cap:]

    def _context(self, n: int, fix: Failure | None, best: str) -> ProposalContext:
        with self.lock:
            rows = list(self.rows)
            pending = sorted(self.pending.values(), key=lambda p: p.n)
        history = [
            HistoryRow(
                n=row.n,
                commit=row.commit,
                val_bpb=row.val_bpb if row.scored else None,
                memory_gb=row.memory_gb,
                status=row.status,
                description=row.description,
                run_dir=self.ledger.row_run_dir(row.n, row).resolve(),
                runs=row.runs,
                evidence=self.evidence.get(row.n),
                full_commit=self.commits.get(row.n),
            )
            for row in rows
        ]
        failures = [
            Failure(
                n=row.n,
                description=row.description,
                status=row.status,
                log_tail=self._log_tail(row.n, row, self.ledger.read_record(row.n, row.commit), cap=2000),
            )
            for row in rows
            if not row.scored
        ][-FAILURES_SHOWN:]
        in_flight = [
            InFlight(
                n=p.n,
                description=p.proposal.description if p.proposal else p.kind,
                diff=git.diff(self.repo, p.parent, p.commit, self.train_rel)[:IN_FLIGHT_DIFF_CAP],
            )
            for p in pending
            if p.n != 0
        ]
        base = self.tag_record.base_commit
        program_md = self.wt.path / "programs" / self.s.program / "program.md"
        return ProposalContext(
            tag=self.s.tag,
            experiment=n,
            train_py=self.wt.train_py.resolve(),
            program_md=program_md.read_text(encoding="utf-8") if program_md.is_file() else "",
            profile=self.s.profile,
            history=history,
            best_diff=git.diff(self.repo, base, best, self.train_rel) if best != base else "",
            failures=failures,
            fix_attempt=fix,
            runs_dir=self.s.tag_dir.resolve(),
            in_flight=in_flight,
            repo=self.repo,
            train_rel=self.train_rel,
            seed_train_py=git.file_at(self.repo, base, self.train_rel).decode("utf-8", errors="replace"),
            noise_bpb=self._noise_sigma(),
        )

    def _prepare(self, n: int, fix: FixTask | None) -> Prepared | None:
        """In the agent's thread: ask for a proposal on the current best and check it; the commit
        is made later, when a slot is free."""
        best = self._best_commit()
        previous = fix.source if fix else None
        failure = fix.failure if fix else None
        usage, attempts = Usage(), []
        started = time.monotonic()
        for _ in range(1 + self.s.max_fix_attempts):
            self._hook(n, "proposing")
            proposal = self._ask_agent(self._context(n, failure, best), best, previous)
            if isinstance(proposal, FixDeclined):
                self._fix_declined(n, fix, proposal, best, usage)
                return None
            if proposal is None:
                return None
            usage = _add_usage(usage, proposal.usage)
            self._hook(n, "checking")
            refusal = self.wt.check_proposal(best, previous)
            if refusal is None:
                break
            self.log.warning("proposal_refused", n=n, reason=refusal.reason, description=proposal.description)
            self.d.observer.say(f"#{n} refused: {refusal.reason}", "warning")
            attempts.append(
                {"refused": refusal.reason, "description": proposal.description, "transcript": proposal.transcript}
            )
            failure = Failure(
                n=n, description=clean_description(proposal.description), status="refused", log_tail=refusal.reason
            )
        else:
            self.wt.reset_to(best)
            self.d.observer.say(f"#{n}: no valid edit after {len(attempts)} tries; starting a new proposal", "warning")
            return None
        content = self.wt.train_py.read_bytes()
        self.wt.reset_to(best)
        return Prepared(
            content=content,
            parent=best,
            proposal=proposal.model_copy(update={"usage": usage}),
            attempts=attempts,
            propose_seconds=time.monotonic() - started,
            fix=fix,
        )

    def _fix_declined(self, n: int, fix: FixTask | None, declined: FixDeclined, best: str, spent: Usage) -> None:
        """The agent gave up on a fix: record why next to the failed run (so no restart asks again)
        and go on with a fresh proposal from the best. Without a crash to fix (a refused edit it
        was re-asked about), the proposal is simply dropped."""
        self.wt.reset_to(best)
        reason = clean_description(declined.reason)
        usage = getattr(declined, "usage", None)
        usage = _add_usage(spent, usage) if isinstance(usage, Usage) else spent
        if fix is None:
            self.log.warning("proposal_abandoned", n=n, reason=reason)
            self.d.observer.say(f"#{n}: the agent gave up on its refused edit: {reason}", "warning")
            return
        failed = fix.failure.n
        row = next((r for r in self.rows if r.n == failed), None)
        if fix.attempt == 0 or row is None:  # a proposal to make again after a merge conflict
            self.log.warning("proposal_abandoned", n=n, reason=reason)
            self.d.observer.say(f"#{n}: the agent gave up on the idea: {reason}", "warning")
            return
        record = FixDeclinedRecord(
            n=failed,
            commit=self.commits[failed],
            fix_attempt=fix.attempt,
            reason=reason,
            usage=usage,
            transcript=getattr(declined, "transcript", None) or [],
        )
        atomic_write_model(self.ledger.row_run_dir(failed, row) / FIX_DECLINED_JSON, record)
        self.log.warning(
            "fix_declined", n=failed, fix_attempt=fix.attempt, reason=reason, cost_usd=record.usage.cost_usd
        )
        self.d.observer.say(f"#{failed}: the agent gave up fixing it: {reason}; a fresh proposal follows", "warning")

    def _ask_agent(self, context: ProposalContext, best: str, previous: bytes | None) -> Proposal | FixDeclined | None:
        waits = _backoff()
        while not self._stop_now():
            self.wt.reset_to(best)
            if previous is not None:
                self.wt.write_train_py(previous)
            try:
                return safe_proposal(self.d.agent.propose(context))
            except FixDeclined as declined:
                return declined
            except Exception as exc:
                if self.d.stop.now:
                    raise KeyboardInterrupt from exc
                kind = "agent_error" if isinstance(exc, AgentError) else "agent_failed"
                usage = getattr(exc, "usage", None)
                if is_fatal(exc):
                    self.log.error("agent_fatal", n=context.experiment, error=str(exc))
                    raise AgentFatalError(f"the agent cannot go on: {exc}") from None
                delay = next(waits)
                self.log.error(
                    kind,
                    n=context.experiment,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=delay,
                    exc_info=not isinstance(exc, AgentError),
                    cost_usd=usage.cost_usd if isinstance(usage, Usage) else None,
                )
                self.d.observer.say(f"agent error: {exc}; trying again in {delay:.0f}s", "error")
                self._wait(delay)
        return None

    # -- commits ---------------------------------------------------------------------------

    def _commit_prepared(self) -> bool:
        """Commit the prepared proposal on the current best when it can run: a slot is free (or, in
        sequential mode, nothing else is in flight). Its change is rebased (a three-way merge of
        train.py) when the best moved since the agent started; a conflict sends it back."""
        st = self.state
        if not st.prepared:
            return False
        busy = len(st.running) + len(st.queue) + len(st.preflights)
        if busy >= len(self.slots) or (not self.s.overlap and (busy or self.pending)):
            return False
        if self.s.overlap and len(self.slots) == 1 and self.pending:
            return False  # one slot: commit n+1 once n is decided, on the right parent
        prepared = st.prepared.pop(0)
        if self._experiments_done():  # a merge took the last number while it was being prepared
            self.log.info("proposal_dropped", reason="max-experiments", description=prepared.proposal.description)
            self.d.observer.say("a prepared proposal was not run: the night has all its experiments")
            return True
        best = self._best_commit()
        content = prepared.content
        if prepared.parent != best:
            merged = git.merge_text(
                git.file_at(self.repo, prepared.parent, self.train_rel),
                git.file_at(self.repo, best, self.train_rel),
                content,
            )
            problem = compile_error(merged) if merged is not None else "its change conflicts with the new best"
            if problem is not None or merged is None:
                self._repropose(prepared, problem or "its change conflicts with the new best")
                return True
            content = merged
        fix = prepared.fix
        is_fix = fix is not None and fix.attempt > 0  # attempt 0: the idea proposed again after a conflict
        n = self._next_number()
        description = clean_description(prepared.proposal.description)
        if fix is not None and is_fix:
            self.d.observer.say(f"#{n} is fix {fix.attempt}/{self.s.max_fix_attempts} of #{fix.failure.n}")
        message = f"{description}\n\nOvernight-Tag: {self.s.tag}\nOvernight-Experiment: {n}\n"
        commit = git.commit_file(self.repo, best, self.train_rel, content, message)
        self._hook(n, "committed")
        git.update_ref(self.repo, git.experiment_ref(self.s.tag, n), commit)
        self._hook(n, "ref")
        pending = Pending(
            n=n,
            kind="fix" if is_fix else "proposal",
            commit=commit,
            parent=best,
            proposal=prepared.proposal.model_copy(update={"description": description}),
            attempts=prepared.attempts,
            propose_seconds=prepared.propose_seconds,
            fix_of=fix.of if fix is not None and is_fix else None,
            fix_attempt=fix.attempt if fix is not None and is_fix else 0,
            wanted=1,
        )
        self._add_pending(pending)
        self.log.info("proposed", n=n, commit=commit, description=description, fix_of=pending.fix_of)
        self._first_run(pending)
        return True

    def _repropose(self, prepared: Prepared, problem: str) -> None:
        """The best moved under a prepared proposal and its change does not apply: the agent
        proposes the idea again on the new best (no commit, no row)."""
        self.d.observer.say(f"a prepared proposal no longer applies ({problem}); asking again", "warning")
        failure = Failure(
            n=self._next_number(),
            description=clean_description(prepared.proposal.description),
            status="conflict",
            log_tail=f"not run: {problem}; propose this idea again on the current best",
        )
        self.reproposals.append(FixTask(of=failure.n, attempt=0, failure=failure, source=None))

    def _add_pending(self, pending: Pending) -> None:
        with self.lock:
            self.pending[pending.n] = pending
            self._save_journal()

    def _start_baseline(self) -> None:
        base = self.tag_record.base_commit
        git.update_ref(self.repo, git.experiment_ref(self.s.tag, 0), base)
        pending = Pending(n=0, kind="baseline", commit=base, parent=base, wanted=self._calibration_runs())
        self._add_pending(pending)
        for k in range(pending.wanted):
            self._enqueue(pending, k)

    def _calibration_runs(self) -> int:
        return 1 if self.profile.max_steps is not None else max(1, self.s.calibration_runs)

    def _first_run(self, pending: Pending) -> None:
        if self.s.preflight_on and self.d.preflight is not None and pending.kind != "baseline":
            self._hook(pending.n, "preflight")
            spec = self._spec(pending, 0, None, preflight=True)
            self.state.preflights[_spawn(lambda: self._preflight(spec), f"preflight-{pending.n}")] = pending.n
            return
        self._enqueue(pending, 0)

    def _enqueue(self, pending: Pending, k: int) -> None:
        priority = 0 if k > 0 else (1 if pending.kind == "merge" else 2)
        self.state.queue.append(RunTask(pending.n, k, priority))
        self.state.queue.sort(key=lambda t: (t.priority, t.n, t.k))

    # -- preflight -------------------------------------------------------------------------

    def _preflight(self, spec: ExperimentSpec) -> ExperimentResult | None:
        if self.d.preflight is None:
            return None
        return self.d.preflight(spec)

    def _preflight_finished(self, n: int, future: Future) -> None:
        pending = self.pending.get(n)
        if pending is None:
            return
        try:
            result = future.result()
        except SandboxError as exc:  # the preflight itself could not run: go to a slot anyway
            self.log.warning("preflight_unavailable", n=n, error=str(exc))
            result = None
        if result is None or result.status == "ok":
            self._enqueue(pending, 0)
            return
        self.d.observer.say(f"#{n}: stopped by the preflight ({result.status}): {result.reason}", "warning")
        self._record_run(pending, RunTask(n, 0, 2), None, result, utcnow(), time.monotonic(), preflight=True)
        self._decide(pending)

    # -- runs ------------------------------------------------------------------------------

    def _start_runs(self) -> bool:
        st = self.state
        started = False
        while st.free and st.queue:
            task = st.queue.pop(0)
            pending = self.pending.get(task.n)
            if pending is None:
                continue
            slot = st.free.pop(0)
            run_dir = self.ledger.run_dir(task.n, pending.commit_of(task.k), task.k)
            if not _only_preflight(run_dir):  # a half run of an interrupted controller: kept aside
                self.ledger.set_aside(run_dir, _stamp())
            run_dir.mkdir(parents=True, exist_ok=True)
            spec = self._spec(pending, task.k, slot)
            self._show_slot(slot, pending, task.k)
            self._hook(task.n, "training")
            begun, t0 = utcnow(), time.monotonic()
            future = _spawn(functools.partial(self._timed_run, spec, begun, t0), f"run-{task.n}-{task.k}")
            st.running[future] = (task, slot)
            started = True
        return started

    def _timed_run(
        self, spec: ExperimentSpec, begun: dt.datetime, t0: float
    ) -> tuple[ExperimentResult | None, dt.datetime, float]:
        return self._run(spec), begun, t0

    def _show_slot(self, slot: Slot, pending: Pending | None, k: int = 0) -> None:
        """Note what `slot` does now (None: idle) for the live view and `make status` (slots.json)."""
        state = SlotState(index=slot.index, label=slot.label())
        if pending is not None:
            state = state.model_copy(update={"n": pending.n, "k": k, "what": _run_label(pending, k)})
        self.slot_states[slot.index] = state
        show = getattr(self.d.observer, "slot", None)
        if callable(show):
            show(state)
        try:
            self.ledger.write_slots(SlotsRecord(pid=os.getpid(), slots=list(self.slot_states.values())))
        except OSError as exc:  # a view only: never stops the night
            self.log.warning("slots_write_failed", error=str(exc))

    def _seed(self, pending: Pending, k: int) -> int:
        """The controller's seed for run k: the night's seed + k, and for a run of the best
        alongside a candidate a seed no other run of the night uses."""
        if k in pending.alongside:
            return self.s.seed + ALONGSIDE_SEEDS + 1_000 * pending.n + k
        return self.s.seed + k

    def _spec(self, pending: Pending, k: int, slot: Slot | None, preflight: bool = False) -> ExperimentSpec:
        commit = pending.commit_of(k)
        run_dir = self.ledger.run_dir(pending.n, commit, k)
        train_py = run_dir / "train.py"
        run_dir.mkdir(parents=True, exist_ok=True)
        if not train_py.exists():
            train_py.write_bytes(git.file_at(self.repo, commit, self.train_rel))
        labels = {LABEL_TAG: self.s.tag, "overnight.experiment": str(pending.n), "overnight.replicate": str(k)}
        return ExperimentSpec(
            run_id=f"{self.s.tag}-{pending.n:04d}" + (f"-r{k}" if k else "") + ("-pre" if preflight else ""),
            train_py=train_py.resolve(),
            run_dir=run_dir.resolve(),
            profile=self.s.profile,
            data_dir=Path(self.s.data_dir).resolve(),
            image=self.s.image,
            gpu=slot.gpu if slot is not None else None,
            cpuset=slot.cpuset if slot is not None else None,
            seed=self._seed(pending, k),
            vram_cap_gb=self.s.vram_cap_gb,
            memory_limit_gb=self.s.container_memory_gb,
            labels=labels,
            compile_cache=None if preflight else self.d.compile_cache,
        )

    def _run(self, spec: ExperimentSpec) -> ExperimentResult | None:
        """The experiment through the sandbox, in a slot's thread. An infrastructure error
        (SandboxError) is retried a bounded number of times; anything else is this run's crash."""
        waits = _backoff()
        source = Path(spec.train_py).read_bytes()
        for attempt in range(1, INFRA_ATTEMPTS + 1):
            try:
                return self.d.runner(spec)
            except SandboxError as exc:
                if self.d.stop.now:
                    raise KeyboardInterrupt from exc
                if attempt == INFRA_ATTEMPTS:
                    raise InfrastructureError(f"the sandbox failed {attempt} times in a row: {exc}") from None
                delay = next(waits)
                self.log.error("sandbox_error", run_id=spec.run_id, error=str(exc), attempt=attempt, retry_in_s=delay)
                self.d.observer.say(
                    f"sandbox error: {exc}; try {attempt + 1}/{INFRA_ATTEMPTS} in {delay:.0f}s", "error"
                )
            except Exception as exc:
                if self.d.stop.now:
                    raise KeyboardInterrupt from exc
                self.log.error("experiment_failed", run_id=spec.run_id, error=type(exc).__name__, exc_info=True)
                return ExperimentResult(
                    status="crash",
                    run_dir=spec.run_dir,
                    reason=(
                        f"the sandbox failed on this experiment ({type(exc).__name__}); "
                        f"see {self.s.tag_dir.name}/controller.log.jsonl"
                    ),
                )
            self._remove_orphans()
            self._wait(delay)
            if self._stop_now():
                return None
            self.ledger.set_aside(spec.run_dir, _stamp())
            spec.run_dir.mkdir(parents=True, exist_ok=True)
            Path(spec.train_py).write_bytes(source)
        return None

    def _run_finished(self, task: RunTask, slot: Slot, future: Future) -> None:
        pending = self.pending.get(task.n)
        result, begun, t0 = future.result()  # InfrastructureError and KeyboardInterrupt go up
        if pending is None:
            return
        if result is None:  # stopped while waiting to retry: redone on resume
            return
        try:
            self._record_run(pending, task, slot, result, begun, t0)
            self._decide(pending)
        except Exception as exc:
            exc.experiment = pending.n  # type: ignore[attr-defined]
            raise

    def _record_run(
        self,
        pending: Pending,
        task: RunTask,
        slot: Slot | None,
        result: ExperimentResult,
        begun: dt.datetime,
        t0: float,
        preflight: bool = False,
    ) -> None:
        score = result.score
        of_commit = pending.alongside.get(task.k)
        replicate = ReplicateRecord(
            k=task.k,
            of_commit=of_commit,
            seed=self._seed(pending, task.k),
            status=result.status,
            reason=_reason(result),
            val_bpb=result.val_bpb,
            run_dir=self.ledger.run_dir(pending.n, pending.commit_of(task.k), task.k).name,
            slot=slot.index if slot is not None else None,
            memory_gb=0.0 if result.status == "crash" else result.peak_memory_gb,
            memory_kind=result.memory_kind,
            train_seconds=result.train_seconds,
            eval_seconds=result.eval_seconds,
            train_budget=result.train_budget_s,
            train_cap=result.train_cap_s,
            image_id=result.image_id,
            data_manifest_sha256=(score.manifest_sha256 if score and score.manifest_sha256 else self.d.manifest_sha256),
            train_exit_code=result.train_exit_code,
            eval_exit_code=result.eval_exit_code,
            preflight=preflight,
            started=begun,
            finished=utcnow(),
        )
        (self.s.tag_dir / replicate.run_dir).mkdir(parents=True, exist_ok=True)
        self.ledger.write_replicate(pending.n, pending.commit, replicate)
        with self.lock:
            pending.replicates.append(replicate)
            self._remember_runs(pending.commit, [replicate])
            self._save_journal()
        self._hook(pending.n, "recorded")

    # -- decisions -------------------------------------------------------------------------

    def _decide(self, pending: Pending) -> None:
        """Once every run it needs has finished: keep, discard, a failure status, or one more
        (confirmation) run. Decisions are made in completion order."""
        if len(pending.replicates) < pending.wanted and not any(r.preflight for r in pending.replicates):
            return
        ok = [r for r in pending.own_replicates if r.status == "ok" and r.val_bpb is not None]
        if not ok:
            first = min(pending.replicates, key=lambda r: r.k)
            self._finalize(pending, status=first.status)
            return
        if pending.kind == "baseline":
            self._finalize(pending, status="keep")
            return
        best_row = self._best_row()
        best_commit = self._best_commit()
        best_values = self.runs_of.get(best_commit) or []
        if not best_values:  # the baseline never scored: the first scored experiment is the best
            self._finalize(pending, status="keep")
            return
        decision = self._rule(pending, ok, best_row, best_commit, best_values)
        if decision.verdict == "confirm":
            self._confirm(pending, best_commit, decision)
            return
        if decision.verdict == "keep" and pending.parent != best_commit:
            self._merge_onto_best(pending, decision, best_commit)
            return
        self._finalize(pending, status=decision.verdict, decision=decision)

    def _confirm(self, pending: Pending, best_commit: str, decision: NoiseDecision) -> None:
        """A confirmation step: a run of the best alongside the candidate's (its first run, or
        from the second step on, one more run of the candidate next to it). Both run at the
        first free slots, ahead of first runs, so that a drift of the machine hits both."""
        k = max(r.k for r in pending.replicates) + 1
        if any(r.of_commit == best_commit for r in pending.replicates):
            self._enqueue(pending, k)  # one more run of the candidate
            pending.wanted += 1
            k += 1
        pending.alongside[k] = best_commit
        pending.wanted += 1
        self._save_journal()
        self.d.observer.say(f"#{pending.n}: {decision.text}")
        self._enqueue(pending, k)

    def _rule(
        self,
        pending: Pending,
        ok: list[ReplicateRecord],
        best_row: LedgerRow | None,
        best_commit: str,
        best_values: list[float],
    ) -> NoiseDecision:
        """The rule on the candidate's runs: against the runs of the best made alongside them
        when it has some (paired in time), else against the best's latest runs. Runs alongside a
        former best (another candidate was kept meanwhile) count against its confirmation steps."""
        noise = self._noise()
        settings = self.s.rule()
        paired = [
            r for r in pending.replicates if r.of_commit == best_commit and r.status == "ok" and r.val_bpb is not None
        ]
        # runs alongside a former best, and runs alongside that failed, use up confirmation steps
        stale = sum(r.of_commit is not None for r in pending.replicates) - len(paired)
        if stale:
            settings = settings.model_copy(update={"max_confirm": max(0, settings.max_confirm - stale)})
        se_eval = self._paired_se(pending, ok, best_row, paired)
        simpler = is_simpler(
            code_size(git.file_at(self.repo, pending.commit, self.train_rel).decode("utf-8", "replace")),
            code_size(git.file_at(self.repo, best_commit, self.train_rel).decode("utf-8", "replace")),
        )
        return decide_rule(
            [r.val_bpb for r in ok if r.val_bpb is not None],
            best_values[-settings.anchor_runs :],
            noise,
            settings,
            se_eval,
            simpler,
            alongside=[r.val_bpb for r in paired if r.val_bpb is not None],
        )

    def _noise(self) -> NoiseEstimate:
        """The run-to-run noise, pooled over every commit run at least twice (calibration,
        confirmations, replays); none at all on a step-budget profile."""
        if self.profile.max_steps is not None:
            return NoiseEstimate.for_deterministic_profile()
        with self.lock:
            return pooled_noise({c: list(v) for c, v in self.runs_of.items() if len(v) >= 2})

    def _noise_sigma(self) -> float | None:
        """The measured run-to-run noise for the agent's history (None: not measured, or a
        deterministic profile where there is none to measure)."""
        try:
            noise = self._noise()
        except NoiseError:
            return None
        return None if noise.deterministic else noise.sigma

    def _paired_se(
        self,
        pending: Pending,
        ok: list[ReplicateRecord],
        best_row: LedgerRow | None,
        alongside: list[ReplicateRecord],
    ) -> float | None:
        """The eval-sampling SE from the per-row losses of both sides: the candidate's runs against
        the best's runs alongside them, or the best's own runs (None when some are missing: the
        bare runner, or records from before they existed)."""
        rows = profile_rows(self.profile)
        best_runs: list[ReplicateRecord] = list(alongside)
        if not best_runs and best_row is not None:
            record = self.ledger.read_record(best_row.n, best_row.commit)
            best_runs = [r for r in (record.own_replicates if record else []) if r.status == "ok"]
        try:
            cand = [read_rowloss(self.s.tag_dir / r.run_dir / ROWLOSS_FILE, rows) for r in ok]
            best = [read_rowloss(self.s.tag_dir / r.run_dir / ROWLOSS_FILE, rows) for r in best_runs]
            if not cand or not best:
                return None
            return paired_eval_se(cand, best).se
        except (RowLossError, NoiseError, OSError):
            return None

    def _merge_onto_best(self, pending: Pending, decision: NoiseDecision, best: str) -> None:
        """A candidate that beats the best but was built on an older parent: its change is merged
        onto the best and the merged commit runs before anything lands (or, on a conflict, the
        agent proposes the idea again)."""
        merged = git.merge_text(
            git.file_at(self.repo, pending.parent, self.train_rel),
            git.file_at(self.repo, best, self.train_rel),
            git.file_at(self.repo, pending.commit, self.train_rel),
        )
        problem = None if merged is None else compile_error(merged)
        if merged is None or problem is not None:
            why = "its change conflicts with the best kept since it started"
            self._finalize(pending, status="discard", decision=decision, note=f"{why}: proposed again")
            failure = Failure(
                n=pending.n,
                description=clean_description(pending.proposal.description if pending.proposal else pending.kind),
                status="conflict",
                log_tail=f"{why}; propose this idea again on the current best",
            )
            self.reproposals.append(FixTask(of=pending.n, attempt=0, failure=failure, source=None))
            return
        if self._experiments_done():
            self._finalize(
                pending,
                status="discard",
                decision=decision,
                note="built on an older best; no experiments left to run the merge",
            )
            return
        m = self._next_number()
        message = (
            f"merge #{pending.n} onto the best: "
            f"{clean_description(pending.proposal.description if pending.proposal else '')}"
            f"\n\nOvernight-Tag: {self.s.tag}\nOvernight-Experiment: {m}\nOvernight-Merge-Of: {pending.n}\n"
        )
        commit = git.commit_file(self.repo, best, self.train_rel, merged, message)
        git.update_ref(self.repo, git.experiment_ref(self.s.tag, m), commit)
        merge = Pending(
            n=m,
            kind="merge",
            commit=commit,
            parent=best,
            merge_of=pending.n,
            wanted=1,
            proposal=Proposal(
                description=clean_description(
                    f"merge of #{pending.n}: {pending.proposal.description if pending.proposal else ''}"
                )
            ),
        )
        self._add_pending(merge)
        self._finalize(pending, status="discard", decision=decision, note=f"built on an older best: merged as #{m}")
        self._first_run(merge)

    def _finalize(
        self,
        pending: Pending,
        status: str | None = None,
        decision: NoiseDecision | None = None,
        note: str | None = None,
        crashed: bool = False,
    ) -> None:
        """Write run.json and the row, move the branch on a keep, drop it from the journal."""
        n, commit = pending.n, pending.commit
        if crashed:
            status = "crash"
        assert status is not None
        record = self._run_record(pending, status, decision, note)
        self.ledger.write_record(record)
        self._hook(n, "decided-record")
        ok = [r for r in pending.own_replicates if r.status == "ok" and r.val_bpb is not None]
        first = min(pending.replicates, key=lambda r: r.k) if pending.replicates else None
        row = LedgerRow(
            commit=commit[:7],
            val_bpb=record.val_bpb if status in ("keep", "discard") and record.val_bpb is not None else 0.0,
            memory_gb=record.memory_gb,
            status=status,
            description=record.description,
            n=n,
            runs=len(ok) if status in ("keep", "discard") else 0,
            delta=decision.short if decision is not None else "-",
            train_s=(
                statistics.fmean([r.train_seconds for r in pending.own_replicates]) if pending.own_replicates else 0.0
            ),
            slot=first.slot if first is not None else None,
        )
        old_best = self._best_commit()
        with self.lock:
            self.ledger.append(row)
            self._hook(n, "appended")
            self.rows.append(row)
            self.commits[n] = commit
            if decision is not None:
                self.evidence[n] = decision.text
        if status == "keep" and not git.move_branch(self.repo, git.branch_name(self.s.tag), commit, old_best):
            git.update_ref(self.repo, f"refs/heads/{git.branch_name(self.s.tag)}", commit)
        self._hook(n, "decided")
        with self.lock:
            self.pending.pop(n, None)
            self._save_journal()
        self.log.info(
            "experiment",
            **record.model_dump(mode="json", exclude={"usage", "replicates", "decision"}),
            cost_usd=record.usage.cost_usd,
            evidence=decision.text if decision else None,
        )
        self.d.observer.finished(record, self._best_row())
        try:
            self.d.agent.observe(n, record.val_bpb, record.status)
        except Exception as exc:
            self.log.error("agent_observe_failed", n=n, error=f"{type(exc).__name__}: {exc}")

    def _run_record(self, pending: Pending, status: str, decision: NoiseDecision | None, note: str | None) -> RunRecord:
        replicates = sorted(pending.replicates, key=lambda r: r.k)
        ok = [r.val_bpb for r in replicates if r.status == "ok" and r.val_bpb is not None and r.of_commit is None]
        first = replicates[0] if replicates else None
        proposal = pending.proposal
        run_dir = self.ledger.run_dir(pending.n, pending.commit)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "train.py").exists():
            (run_dir / "train.py").write_bytes(git.file_at(self.repo, pending.commit, self.train_rel))
        atomic_write_text(run_dir / "transcript.json", _transcript_json(pending))
        reason = first.reason if first is not None and status not in ("keep", "discard") else None
        if note:
            reason = clean_line(note if reason is None else f"{reason}; {note}", 300)
        description = (
            proposal.description
            if proposal is not None
            else ("baseline" if pending.kind == "baseline" else pending.kind)
        )
        return RunRecord(
            n=pending.n,
            kind=pending.kind,
            commit=pending.commit,
            parent=pending.parent,
            tag=self.s.tag,
            program=self.s.program,
            profile=self.s.profile,
            seed=self.s.seed,
            agent=self.d.agent.name
            if pending.kind in ("proposal", "fix")
            else ("seed" if pending.kind == "baseline" else "controller"),
            model=agent_model(self.d.agent) if pending.kind in ("proposal", "fix") else None,
            image_id=first.image_id if first else None,
            data_manifest_sha256=first.data_manifest_sha256 if first else self.d.manifest_sha256,
            data_dir=str(self.s.data_dir),
            gpu=self.s.gpu,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            val_bpb=statistics.fmean(ok) if ok and status in ("keep", "discard") else None,
            memory_gb=max((r.memory_gb for r in replicates), default=0.0),
            memory_kind=first.memory_kind if first else "ram",
            timings=Timings(
                propose=pending.propose_seconds,
                train=first.train_seconds if first else 0.0,
                eval=first.eval_seconds if first else 0.0,
                total=pending.propose_seconds + sum(r.train_seconds + r.eval_seconds for r in replicates),
                train_budget=first.train_budget if first else 0.0,
                train_cap=first.train_cap if first else 0.0,
            ),
            usage=proposal.usage if proposal is not None else Usage(),
            description=description,
            fix_of=pending.fix_of,
            fix_attempt=pending.fix_attempt,
            merge_of=pending.merge_of,
            train_exit_code=first.train_exit_code if first else None,
            eval_exit_code=first.eval_exit_code if first else None,
            slot=first.slot if first else None,
            replicates=replicates,
            decision=decision,
            started=pending.started,
            finished=utcnow(),
        )


PREFLIGHT_FILES = frozenset({"train.py", "preflight.log"})


def _only_preflight(run_dir: Path) -> bool:
    """The run folder holds only what the preflight that let this run through left (its log
    stays next to the run's own logs)."""
    try:
        entries = {p.name for p in run_dir.iterdir()}
    except OSError:
        return False
    return "preflight.log" in entries and entries <= PREFLIGHT_FILES and not (run_dir / "train.py").is_symlink()


def _run_label(pending: Pending, k: int) -> str:
    """What a run is, in a few words: 'baseline, calibration run 2/3', 'confirmation run 2',
    'the best (abc1234) alongside #5', 'merge of #7', 'fix 1 of #5: <description>', or the
    proposal's description."""
    if pending.kind == "baseline":
        return f"baseline, calibration run {k + 1}/{pending.wanted}" if pending.wanted > 1 else "baseline"
    if k in pending.alongside:
        return f"the best ({pending.alongside[k][:7]}) alongside #{pending.n}"
    description = clean_line(pending.proposal.description if pending.proposal else pending.kind, 60)
    if k > 0:
        return f"confirmation run {k + 1}: {description}"
    if pending.kind == "merge":
        return f"merge of #{pending.merge_of}"
    if pending.kind == "fix":
        return f"fix {pending.fix_attempt} of #{pending.fix_of}: {description}"
    return description


def _reason(result: ExperimentResult) -> str | None:
    raw = result.reason or (result.score.reason if result.score else None)
    return clean_line(raw, 300) if raw else None


def _scrub(value: object) -> object:
    """JSON-safe copy of agent/model output: lone surrogates and NULs replaced (they cannot be
    written as UTF-8 JSON and would otherwise end the night when the journal is saved)."""
    if isinstance(value, str):
        return _SURROGATE_OR_NUL.sub("\ufffd", value)
    if isinstance(value, dict):
        return {str(_scrub(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


_SURROGATE_OR_NUL = re.compile("[\ud800-\udfff\x00]")


def safe_proposal(proposal: Proposal) -> Proposal:
    """A proposal fit for git, the TSV, the terminal and JSON."""
    return proposal.model_copy(
        update={"description": clean_description(proposal.description), "transcript": _scrub(proposal.transcript)}
    )


def agent_model(agent: Agent) -> str | None:
    """The model behind an LLM agent (its settings say), None for others."""
    model = getattr(getattr(agent, "settings", None), "model", None)
    return model if isinstance(model, str) else None


def _stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def _add_usage(a: Usage, b: Usage) -> Usage:
    return a + b  # an unknown cost stays unknown


def _transcript_json(pending: Pending) -> str:
    proposal = pending.proposal
    data = {
        "n": pending.n,
        "refused_attempts": pending.attempts,
        "description": proposal.description if proposal else pending.kind,
        "usage": proposal.usage.model_dump() if proposal else None,
        "transcript": proposal.transcript if proposal else [],
    }
    return json.dumps(data, indent=1, default=str) + "\n"
