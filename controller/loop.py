"""The overnight loop: baseline, then propose -> check -> commit (+ref) -> run -> record -> keep or
discard, until the night ends by itself (--hours, --until, --max-experiments) or is stopped.

Every run is a row of results.tsv and has a ref, as in autoresearch where every run is a row:

- Refused edit (files other than train.py, does not compile, unchanged, not a regular file): not
  committed, not run, no row. The agent is asked again with the reason (context.fix_attempt, status
  "refused") up to max_fix_attempts times; then the proposal is dropped and a new one starts.
- Crash or rejected run: a row with that status. The agent is then asked to fix it, starting from
  the crashed train.py, with the log tail in context.fix_attempt; a fix that runs is a new
  experiment (its own number, commit, ref and row; run.json says fix_of and fix_attempt). After
  max_fix_attempts fixes that still fail, the next proposal starts from the best again.
- Timeouts are not sent back for fixing (a fix would cost another full budget).

One run's failure is that run's: anything unexpected while running or recording an experiment
(a bug, hostile input nobody foresaw, a cleanup that raises) is recorded as that experiment's
`crash` with its reason, and the night goes on; it never loops on one experiment. Agent errors
are retried after a capped backoff. Infrastructure errors (the Docker engine down, the
evaluator's own setup failing, the controller's disk full) are retried a bounded number of times
with a clear message, then the night stops and says what to fix and how to resume. A restart
after kill -9 at any point finishes or redoes the experiment in flight, from the journal
`runs/<tag>/state.json` and the ledger: no row is lost or written twice, and the branch holds
exactly the baseline and the kept commits of the ledger.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
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
    Proposal,
    ProposalContext,
    Usage,
)
from controller.ledger import Ledger, LedgerRow, clean_description
from controller.records import (
    FIX_DECLINED_JSON,
    FIXABLE,
    FixDeclinedRecord,
    Journal,
    RunRecord,
    TagRecord,
    Timings,
    utcnow,
)
from controller.safefiles import atomic_write_model, atomic_write_text, read_tail
from controller.settings import Settings
from evaluator.hostile import clean_line
from sandbox.errors import SandboxError
from sandbox.result import ExperimentResult, ExperimentSpec

Runner = Callable[[ExperimentSpec], ExperimentResult]
LOG_TAIL_BYTES = 6000
FAILURES_SHOWN = 5
BACKOFF_START_S = 10.0
BACKOFF_CAP_S = 600.0
INFRA_ATTEMPTS = 6  # tries of one experiment through an infrastructure error (~10 min of backoff)
STORAGE_ATTEMPTS = 6  # tries through errors writing the controller's own records
UNEXPECTED_LIMIT = 5  # unexpected errors in a row without a row written: something is systematically broken


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
    attempt: int  # 1..max_fix_attempts
    failure: Failure
    source: bytes  # the crashed train.py the fix starts from


# -- settings of a resumed tag ---------------------------------------------------------------

RESUMED_FIELDS = ("program", "profile", "seed", "data_dir")


def resume_settings(settings: Settings) -> Settings:
    """For a tag that exists, take program, profile, seed and data dir from its tag.json unless
    they were given; refuse ones given that differ (a night cannot change them half-way)."""
    record = Ledger(settings.tag_dir).read_tag()
    if record is None:
        return settings
    recorded = {"program": record.program, "profile": record.profile, "seed": record.seed,
                "data_dir": Path(record.data_dir)}
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


def decide(result: ExperimentResult, best_val: float | None) -> str:
    """keep | discard | crash | timeout | rejected for one run against the best so far."""
    if result.status != "ok":
        return result.status
    value = result.val_bpb
    if value is None:
        return "rejected"
    return "keep" if best_val is None or value < best_val else "discard"


def _backoff() -> Iterator[float]:
    delay = BACKOFF_START_S
    while True:
        yield delay
        delay = min(BACKOFF_CAP_S, delay * 2)


class NightLoop:
    def __init__(self, settings: Settings, deps: LoopDeps) -> None:
        self.s = settings
        self.d = deps
        self.ledger = Ledger(settings.tag_dir)
        self.train_rel = f"programs/{settings.program}/train.py"
        self.log = structlog.get_logger("overnight.loop").bind(tag=settings.tag)
        self.rows: list[LedgerRow] = []
        self.commits: list[str] = []
        self.pending: Journal | None = None
        self.deadline: dt.datetime | None = None

    # -- the night ---------------------------------------------------------------------------

    def run(self) -> NightSummary:
        with tag_lock(self.s.tag_dir):
            self._setup()
            self._reconcile()
            self.deadline = self.s.deadline(self.d.now())
            self.log.info("night_start", n=len(self.rows), deadline=str(self.deadline),
                          max_experiments=self.s.max_experiments, agent=self.d.agent.name)
            failed_rounds = 0
            waits, storage_waits = _backoff(), _backoff()
            storage_failures = unexpected = 0
            while (reason := self._why_stop()) is None:
                rows_before = len(self.rows)
                try:
                    stepped = self._step()
                except (InfrastructureError, AgentFatalError, SetupError, KeyboardInterrupt):
                    raise
                except OSError as exc:
                    storage_failures += 1
                    if storage_failures >= STORAGE_ATTEMPTS:
                        raise InfrastructureError(
                            f"cannot write under {self.s.tag_dir} ({exc.strerror or exc}) after "
                            f"{storage_failures} tries: free some disk, then resume") from None
                    self._storage_error(exc, next(storage_waits))
                    continue
                except Exception as exc:
                    unexpected = unexpected + 1 if len(self.rows) == rows_before else 1
                    if unexpected >= UNEXPECTED_LIMIT:
                        raise InfrastructureError(
                            f"{unexpected} unexpected errors in a row ({type(exc).__name__}); "
                            f"see {self.s.tag_dir}/controller.log.jsonl") from exc
                    self._unexpected(exc)
                    continue
                storage_waits, storage_failures, unexpected = _backoff(), 0, 0
                if stepped:
                    failed_rounds, waits = 0, _backoff()
                else:
                    failed_rounds += 1
                    if failed_rounds > 1:  # a second dropped proposal in a row: slow down
                        self._wait(next(waits))
            self.log.info("night_end", reason=reason, rows=len(self.rows))
            return NightSummary(reason=reason, rows=list(self.rows), best=self._best_row())

    def _storage_error(self, exc: OSError, delay: float) -> None:
        """The controller could not write its own records (a full disk, a vanished folder). Every
        record is written atomically, so nothing is half-done: say so, wait, and take the night up
        again as a resume after kill -9 would."""
        self.log.error("storage_error", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
        self.d.observer.say(f"cannot write under {self.s.tag_dir}: {exc.strerror or exc}; "
                            f"retrying in {delay:.0f}s", "error")
        self._wait(delay)
        try:
            self.ledger.repair()
            self._reconcile()
        except OSError:
            pass  # still failing: the next step fails the same way and waits longer

    def _unexpected(self, exc: Exception) -> None:
        """A bug or hostile input nobody foresaw, while proposing, running or recording: that
        experiment becomes a crash row (when it was committed) and the night goes on."""
        self.log.error("unexpected_error", error=type(exc).__name__, exc_info=True)
        journal = self.ledger.read_journal()
        self.pending = None
        if journal is not None and journal.phase == "committed" and journal.commit is not None \
                and journal.n == len(self.rows):
            reason = (f"internal error ({type(exc).__name__}) while handling this experiment; "
                      f"see {self.s.tag_dir.name}/controller.log.jsonl")
            self.d.observer.say(f"#{journal.n}: {reason}; recorded as a crash", "error")
            self._finish(journal, crashed=reason)
            return
        if journal is not None:
            self.ledger.clear_journal()
        self.wt.reset_to(self._best_commit())
        self.d.observer.say(f"proposal dropped after an internal error ({type(exc).__name__})", "error")

    def _why_stop(self) -> str | None:
        if self.d.stop.requested:
            return "stopped"
        if self.s.max_experiments is not None and len(self.rows) >= self.s.max_experiments + 1:
            return "max-experiments"
        if self.deadline is not None and self.d.now() >= self.deadline:
            return "deadline"
        return None

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
                tag=self.s.tag, program=self.s.program, profile=self.s.profile, seed=self.s.seed,
                base_commit=base, data_dir=str(self.s.data_dir),
                data_manifest_sha256=self.d.manifest_sha256, created=utcnow(),
            )
            self.ledger.write_tag(record)
        else:
            for name in ("program", "profile", "seed"):
                if getattr(self.s, name) != getattr(record, name):
                    raise SetupError(f"tag {self.s.tag} was started with {name} {getattr(record, name)}; "
                                     f"resume it with the same {name} or choose a new --tag")
            if (record.data_manifest_sha256 and self.d.manifest_sha256
                    and record.data_manifest_sha256 != self.d.manifest_sha256):
                raise SetupError(f"the data in {self.s.data_dir} differs from the data tag {self.s.tag} started "
                                 "with (manifest hash): use that data or choose a new --tag")
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
        """Make git agree with the ledger, and pick up the experiment in flight, if any."""
        rows = self.ledger.rows()
        refs = git.experiment_refs(self.repo, self.s.tag)
        commits = []
        for n, row in enumerate(rows):
            sha = refs.get(n)
            if sha is None or not sha.startswith(row.commit):
                raise SetupError(f"results.tsv row {n} ({row.commit}) has no matching ref "
                                 f"{git.experiment_ref(self.s.tag, n)}: the ledger and the repository disagree")
            commits.append(sha)
        self.rows, self.commits = rows, commits
        best = self._best_commit()
        journal = self.ledger.read_journal()
        in_flight = (
            journal is not None and journal.phase == "committed" and journal.n == len(rows)
            and journal.commit is not None and refs.get(journal.n) == journal.commit and journal.parent == best
        )
        for n in refs:
            if n >= len(rows) and not (in_flight and n == journal.n):
                git.delete_ref(self.repo, git.experiment_ref(self.s.tag, n))
        if rows:
            self.d.observer.say(f"resuming tag {self.s.tag}: {len(rows)} experiments in the ledger")
        if in_flight:
            assert journal is not None and journal.commit is not None
            self.pending = journal
            self.wt.reset_to(journal.commit)
            self.log.info("resume_in_flight", n=journal.n, commit=journal.commit)
            self.d.observer.say(f"resuming experiment {journal.n} ({journal.commit[:7]}) that was in flight")
        else:
            if journal is not None:
                self.ledger.clear_journal()
            self.wt.reset_to(best)

    # -- the current best ------------------------------------------------------------------

    def _best_index(self) -> int | None:
        keeps = [n for n, row in enumerate(self.rows) if row.status == "keep"]
        return keeps[-1] if keeps else None

    def _best_row(self) -> LedgerRow | None:
        i = self._best_index()
        return self.rows[i] if i is not None else None

    def _best_commit(self) -> str:
        i = self._best_index()
        return self.commits[i] if i is not None else self.tag_record.base_commit

    def _best_val(self) -> float | None:
        """The best score at full precision (run.json), not the ledger's 6 decimals."""
        i = self._best_index()
        if i is None:
            return None
        record = self.ledger.read_record(i, self.commits[i])
        return record.val_bpb if record is not None and record.val_bpb is not None else self.rows[i].val_bpb

    # -- one step --------------------------------------------------------------------------

    def _step(self) -> bool:
        """One experiment; False when no experiment ran (the proposal was dropped)."""
        if self.pending is not None:
            journal, self.pending = self.pending, None
            return self._finish(journal)
        if not self.rows:
            return self._finish(self._baseline())
        journal = self._propose(len(self.rows), self._pending_fix())
        return self._finish(journal) if journal is not None else False

    def _baseline(self) -> Journal:
        base = self.tag_record.base_commit
        self.wt.reset_to(base)
        git.update_ref(self.repo, git.experiment_ref(self.s.tag, 0), base)
        journal = Journal(n=0, phase="committed", commit=base, parent=base)
        self.ledger.write_journal(journal)
        return journal

    def _pending_fix(self) -> FixTask | None:
        n = len(self.rows) - 1
        if n < 1 or self.s.max_fix_attempts == 0 or self.rows[n].status not in FIXABLE:
            return None
        if not getattr(self.d.agent, "can_fix_crashes", True):
            return None
        row = self.rows[n]
        if (self.ledger.row_run_dir(n, row) / FIX_DECLINED_JSON).is_file():
            return None  # the agent gave up on it: never asked again, across restarts too
        record = self.ledger.read_record(n, row.commit)
        attempt = (record.fix_attempt + 1) if record is not None else 1
        if attempt > self.s.max_fix_attempts:
            return None
        origin = record.fix_of if record is not None and record.fix_of is not None else n
        failure = Failure(n=n, description=row.description, status=row.status,
                          log_tail=self._log_tail(n, row, record))
        return FixTask(of=origin, attempt=attempt, failure=failure,
                       source=git.file_at(self.repo, self.commits[n], self.train_rel))

    def _log_tail(self, n: int, row: LedgerRow, record: RunRecord | None, cap: int = LOG_TAIL_BYTES) -> str:
        run_dir = self.ledger.row_run_dir(n, row)
        parts = []
        if record is not None and record.reason:
            parts.append(f"[{record.status}] {record.reason}")
        for name in ("train.log", "eval.log"):
            tail = read_tail(run_dir / name, cap)
            if tail.strip():
                parts.append(f"--- {name} (last lines) ---\n{tail}")
        return "\n".join(parts)[-cap:]

    def _context(self, n: int, fix: Failure | None) -> ProposalContext:
        history = [
            HistoryRow(n=i, commit=row.commit, val_bpb=row.val_bpb if row.scored else None,
                       memory_gb=row.memory_gb, status=row.status, description=row.description,
                       run_dir=self.ledger.row_run_dir(i, row).resolve(), full_commit=self.commits[i])
            for i, row in enumerate(self.rows)
        ]
        failures = [
            Failure(n=i, description=row.description, status=row.status,
                    log_tail=self._log_tail(i, row, self.ledger.read_record(i, row.commit), cap=2000))
            for i, row in enumerate(self.rows) if not row.scored
        ][-FAILURES_SHOWN:]
        base, best = self.tag_record.base_commit, self._best_commit()
        program_md = self.wt.path / "programs" / self.s.program / "program.md"
        return ProposalContext(
            tag=self.s.tag, experiment=n, train_py=self.wt.train_py.resolve(),
            program_md=program_md.read_text(encoding="utf-8") if program_md.is_file() else "",
            profile=self.s.profile, history=history,
            best_diff=git.diff(self.repo, base, best, self.train_rel) if best != base else "",
            failures=failures, fix_attempt=fix, runs_dir=self.s.tag_dir.resolve(),
            repo=self.repo, train_rel=self.train_rel,
            seed_train_py=git.file_at(self.repo, base, self.train_rel).decode("utf-8", errors="replace"),
        )

    def _propose(self, n: int, fix: FixTask | None) -> Journal | None:
        best = self._best_commit()
        journal = Journal(n=n, phase="proposing", parent=best,
                          fix_of=fix.of if fix else None, fix_attempt=fix.attempt if fix else 0)
        self.ledger.write_journal(journal)
        previous = fix.source if fix else None
        failure = fix.failure if fix else None
        usage, attempts = Usage(), []
        started = time.monotonic()
        for _ in range(1 + self.s.max_fix_attempts):
            self._hook(n, "proposing")
            proposal = self._ask_agent(self._context(n, failure), best, previous)
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
            attempts.append({"refused": refusal.reason, "description": proposal.description,
                             "transcript": proposal.transcript})
            failure = Failure(n=n, description=clean_description(proposal.description), status="refused",
                              log_tail=refusal.reason)
        else:
            self.wt.reset_to(best)
            self.d.observer.say(f"#{n}: no valid edit after {len(attempts)} tries; starting a new proposal", "warning")
            return None
        description = clean_description(proposal.description)
        if fix is not None:
            self.d.observer.say(f"#{n} is fix {fix.attempt}/{self.s.max_fix_attempts} of #{fix.failure.n}")
        message = f"{description}\n\nOvernight-Tag: {self.s.tag}\nOvernight-Experiment: {n}\n"
        commit = self.wt.commit_train_py(message)
        self._hook(n, "committed")
        git.update_ref(self.repo, git.experiment_ref(self.s.tag, n), commit)
        self._hook(n, "ref")
        journal = journal.model_copy(update=dict(
            phase="committed", commit=commit,
            proposal=proposal.model_copy(update={"usage": usage, "description": description}),
            attempts=attempts, propose_seconds=time.monotonic() - started,
        ))
        self.ledger.write_journal(journal)
        self.log.info("proposed", n=n, commit=commit, description=description, fix_of=journal.fix_of)
        return journal

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
        record = FixDeclinedRecord(n=failed, commit=self.commits[failed], fix_attempt=fix.attempt, reason=reason,
                                   usage=usage, transcript=getattr(declined, "transcript", None) or [])
        atomic_write_model(self.ledger.row_run_dir(failed, self.rows[failed]) / FIX_DECLINED_JSON, record)
        self.log.warning("fix_declined", n=failed, fix_attempt=fix.attempt, reason=reason,
                         cost_usd=record.usage.cost_usd)
        self.d.observer.say(f"#{failed}: the agent gave up fixing it: {reason}; a fresh proposal follows", "warning")

    def _ask_agent(self, context: ProposalContext, best: str,
                   previous: bytes | None) -> Proposal | FixDeclined | None:
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
                self.log.error(kind, n=context.experiment, error=f"{type(exc).__name__}: {exc}",
                               retry_in_s=delay, exc_info=not isinstance(exc, AgentError),
                               cost_usd=usage.cost_usd if isinstance(usage, Usage) else None)
                self.d.observer.say(f"agent error: {exc}; trying again in {delay:.0f}s", "error")
                self._wait(delay)
        return None

    # -- run, record, decide ---------------------------------------------------------------

    def _spec(self, n: int, run_dir: Path) -> ExperimentSpec:
        return ExperimentSpec(
            run_id=f"{self.s.tag}-{n:04d}", train_py=self.wt.train_py.resolve(), run_dir=run_dir.resolve(),
            profile=self.s.profile, data_dir=Path(self.s.data_dir).resolve(), image=self.s.image,
            gpu=self.s.gpu, seed=self.s.seed, vram_cap_gb=self.s.vram_cap_gb,
            memory_limit_gb=self.s.memory_limit_gb,
            labels={"overnight.tag": self.s.tag, "overnight.experiment": str(n)},
        )

    def _run(self, spec: ExperimentSpec) -> ExperimentResult | None:
        """The experiment through the sandbox. An infrastructure error (SandboxError) is retried a
        bounded number of times; anything else is this experiment's own crash."""
        waits = _backoff()
        for attempt in range(1, INFRA_ATTEMPTS + 1):
            try:
                return self.d.runner(spec)
            except SandboxError as exc:
                if self.d.stop.now:
                    raise KeyboardInterrupt from exc
                if attempt == INFRA_ATTEMPTS:
                    raise InfrastructureError(f"the sandbox failed {attempt} times in a row: {exc}") from None
                delay = next(waits)
                self.log.error("sandbox_error", run_id=spec.run_id, error=str(exc), attempt=attempt,
                               retry_in_s=delay)
                self.d.observer.say(f"sandbox error: {exc}; try {attempt + 1}/{INFRA_ATTEMPTS} in {delay:.0f}s",
                                    "error")
            except Exception as exc:
                if self.d.stop.now:
                    raise KeyboardInterrupt from exc
                self.log.error("experiment_failed", run_id=spec.run_id, error=type(exc).__name__, exc_info=True)
                return ExperimentResult(status="crash", run_dir=spec.run_dir, reason=(
                    f"the sandbox failed on this experiment ({type(exc).__name__}); "
                    f"see {self.s.tag_dir.name}/controller.log.jsonl"))
            self._remove_orphans()
            self._wait(delay)
            if self._stop_now():
                return None
            self.ledger.set_aside(spec.run_dir, _stamp())
            spec.run_dir.mkdir(parents=True, exist_ok=True)
        return None

    def _finish(self, journal: Journal, crashed: str | None = None) -> bool:
        n, commit = journal.n, journal.commit
        assert commit is not None
        record = self.ledger.read_record(n, commit)
        if record is None or record.commit != commit:
            if crashed is not None:
                result = ExperimentResult(status="crash", reason=crashed, run_dir=self.ledger.run_dir(n, commit))
                record = self._record(journal, result, utcnow(), time.monotonic())
            else:
                record = self._run_and_record(journal)
            if record is None:
                return False
        row = LedgerRow(commit=commit[:7], val_bpb=record.val_bpb if record.status in ("keep", "discard") else 0.0,
                        memory_gb=record.memory_gb, status=record.status, description=record.description,
                        train_s=record.timings.train)
        self.ledger.append(row)
        self._hook(n, "appended")
        self.rows.append(row)
        self.commits.append(commit)
        if record.status != "keep":
            self.wt.reset_to(journal.parent)
        self._hook(n, "decided")
        self.ledger.clear_journal()
        self.log.info("experiment", **record.model_dump(mode="json", exclude={"usage"}),
                      cost_usd=record.usage.cost_usd)
        self.d.observer.finished(record, self._best_row())
        observe = getattr(self.d.agent, "observe", None)
        if callable(observe):
            try:
                observe(n, record.val_bpb, record.status)
            except Exception as exc:
                self.log.error("agent_observe_failed", n=n, error=f"{type(exc).__name__}: {exc}")
        return True

    def _run_and_record(self, journal: Journal) -> RunRecord | None:
        n, commit = journal.n, journal.commit
        assert commit is not None
        run_dir = self.ledger.run_dir(n, commit)
        self.ledger.set_aside(run_dir, _stamp())
        run_dir.mkdir(parents=True)
        started = utcnow()
        t0 = time.monotonic()
        self._hook(n, "training")
        result = self._run(self._spec(n, run_dir))
        if result is None:
            return None
        return self._record(journal, result, started, t0)

    def _record(self, journal: Journal, result: ExperimentResult, started: dt.datetime, t0: float) -> RunRecord:
        n, commit = journal.n, journal.commit
        assert commit is not None
        run_dir = self.ledger.run_dir(n, commit)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "train.py").exists():
            (run_dir / "train.py").write_bytes(git.file_at(self.repo, commit, self.train_rel))
        status = decide(result, self._best_val())
        proposal = journal.proposal
        atomic_write_text(run_dir / "transcript.json", _transcript_json(journal))
        score = result.score
        record = RunRecord(
            n=n, commit=commit, parent=journal.parent, tag=self.s.tag, program=self.s.program,
            profile=self.s.profile, seed=self.s.seed,
            agent=self.d.agent.name if proposal is not None else "seed",
            model=agent_model(self.d.agent) if proposal is not None else None,
            image_id=result.image_id,
            data_manifest_sha256=(score.manifest_sha256 if score and score.manifest_sha256 else self.d.manifest_sha256),
            data_dir=str(self.s.data_dir), gpu=self.s.gpu, status=status,  # type: ignore[arg-type]
            reason=_reason(result),
            val_bpb=result.val_bpb, memory_gb=0.0 if status == "crash" else result.peak_memory_gb,
            memory_kind=result.memory_kind,
            timings=Timings(propose=journal.propose_seconds, train=result.train_seconds, eval=result.eval_seconds,
                            total=journal.propose_seconds + time.monotonic() - t0,
                            train_budget=result.train_budget_s, train_cap=result.train_cap_s),
            usage=proposal.usage if proposal is not None else Usage(),
            description=proposal.description if proposal is not None else "baseline",
            fix_of=journal.fix_of, fix_attempt=journal.fix_attempt,
            train_exit_code=result.train_exit_code, eval_exit_code=result.eval_exit_code,
            started=started, finished=utcnow(),
        )
        self.ledger.write_record(record)
        self._hook(n, "recorded")
        return record


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
    return proposal.model_copy(update={"description": clean_description(proposal.description),
                                       "transcript": _scrub(proposal.transcript)})


def agent_model(agent: Agent) -> str | None:
    """The model behind an LLM agent (its settings say), None for others."""
    model = getattr(getattr(agent, "settings", None), "model", None)
    return model if isinstance(model, str) else None


def _stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def _add_usage(a: Usage, b: Usage) -> Usage:
    return a + b  # an unknown cost stays unknown


def _transcript_json(journal: Journal) -> str:
    proposal = journal.proposal
    data = {
        "n": journal.n,
        "refused_attempts": journal.attempts,
        "description": proposal.description if proposal else "baseline",
        "usage": proposal.usage.model_dump() if proposal else None,
        "transcript": proposal.transcript if proposal else [],
    }
    return json.dumps(data, indent=1, default=str) + "\n"
