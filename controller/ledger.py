"""The ledger of a tag: `runs/<tag>/results.tsv`, append-only and fsynced, and the per-run folders
`runs/<tag>/<n>-<short sha>/` with their run.json.

results.tsv starts with autoresearch's five columns in its format (commit val_bpb memory_gb status
description), then overnight's evidence:
  n        the experiment's number (given when it was committed; rows come in the order
           experiments were decided, which with several slots is not always n's order)
  runs     how many runs of the commit val_bpb averages (calibration, confirmation runs)
  delta    the keep rule's evidence against the incumbent: delta+/-se and runs on each side,
           e.g. "-0.004100+/-0.001200 2v3" ("-" for the baseline and for runs that did not score)
  train_s  the train container's wall clock, measured by the host (what the budget limits)
  slot     the slot (a GPU, or pinned CPUs) its first run used
Every experiment is a row. Descriptions are hostile text (an LLM wrote them): cleaned to one
printable line before they are stored."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from controller.records import Journal, ReplicateRecord, RunRecord, SlotsRecord, TagRecord
from controller.safefiles import (
    UnsafeFileError,
    atomic_write_model,
    atomic_write_text,
    fsync_dir,
    read_regular,
)
from evaluator.hostile import clean_line

AUTORESEARCH_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")
EXTRA_COLUMNS = ("n", "runs", "delta", "train_s", "slot")
HEADER = "\t".join(AUTORESEARCH_COLUMNS + EXTRA_COLUMNS)
STATUSES = ("keep", "discard", "crash", "timeout", "rejected")
RESULTS = "results.tsv"
RUN_JSON = "run.json"
TAG_JSON = "tag.json"
STATE_JSON = "state.json"
SLOTS_JSON = "slots.json"
REPLICATE_JSON = "replicate.json"
MAX_DESCRIPTION = 200
SHORT = 7


class LedgerError(RuntimeError):
    """The ledger or a run folder cannot be read as written; one line for a person."""


def clean_description(text: object) -> str:
    """One printable line for the TSV, git and the terminal: no tabs, newlines, escapes, control or
    bidi characters, NUL or lone surrogates; bounded length."""
    return clean_line(text, MAX_DESCRIPTION, empty="(no description)")


@dataclass(frozen=True)
class LedgerRow:
    commit: str  # 7-character short sha
    val_bpb: float  # 0.0 when the run did not score; the mean of its runs when it did
    memory_gb: float
    status: str
    description: str
    n: int = 0  # experiment number
    runs: int = 1  # runs averaged in val_bpb
    delta: str = "-"  # the keep rule's evidence (noise.Decision.short), "-" when there is none
    train_s: float = 0.0  # the train container's wall clock, measured by the host
    slot: int | None = None

    def line(self) -> str:
        delta = clean_line(self.delta, 60) or "-"
        slot = "-" if self.slot is None else str(self.slot)
        return (
            f"{self.commit[:SHORT]}\t{self.val_bpb:.6f}\t{self.memory_gb:.1f}\t{self.status}\t"
            f"{clean_description(self.description)}\t{self.n}\t{self.runs}\t{delta}\t{self.train_s:.1f}\t{slot}\n"
        )

    @classmethod
    def parse(cls, line: str) -> LedgerRow:
        parts = line.rstrip("\n").split("\t")
        if len(parts) != len(AUTORESEARCH_COLUMNS) + len(EXTRA_COLUMNS) or parts[3] not in STATUSES:
            raise LedgerError(f"malformed results.tsv row: {clean_line(line, 120)!r}")
        try:
            return cls(
                parts[0],
                float(parts[1]),
                float(parts[2]),
                parts[3],
                parts[4],
                int(parts[5]),
                int(parts[6]),
                parts[7],
                float(parts[8]),
                None if parts[9] == "-" else int(parts[9]),
            )
        except ValueError:
            raise LedgerError(f"malformed results.tsv row: {clean_line(line, 120)!r}") from None

    @property
    def scored(self) -> bool:
        return self.status in ("keep", "discard")


def run_dir_name(n: int, commit: str, k: int = 0) -> str:
    """<n>-<short sha> for an experiment's first run; <n>-<short sha>-r<k> for its later runs."""
    return f"{n:04d}-{commit[:SHORT]}" + (f"-r{k}" if k else "")


class Ledger:
    """results.tsv and the run folders of one tag."""

    def __init__(self, tag_dir: Path) -> None:
        self.tag_dir = Path(tag_dir)
        self.path = self.tag_dir / RESULTS

    # -- results.tsv ---------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.is_file()

    def create(self) -> None:
        if not self.path.exists():
            atomic_write_text(self.path, HEADER + "\n")

    def repair(self) -> None:
        """Drop a torn last line (a kill during a write): the file ends at its last newline."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
        if not data.startswith(HEADER.encode()):
            raise LedgerError(
                f"{self.path} does not start with the ledger's header line ({HEADER!r}): "
                "it was written by another version; start a new --tag"
            )

    def rows(self) -> list[LedgerRow]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").split("\n")
        if lines[0] != HEADER:
            raise LedgerError(
                f"{self.path} does not start with the ledger's header line ({HEADER!r}): "
                "it was written by another version; start a new --tag"
            )
        body = lines[1:-1]  # the text after the last newline is empty, or a torn line
        return [LedgerRow.parse(line) for line in body if line]

    def append(self, row: LedgerRow) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(row.line())
            f.flush()
            os.fsync(f.fileno())

    # -- run folders ---------------------------------------------------------------------------

    def run_dir(self, n: int, commit: str, k: int = 0) -> Path:
        return self.tag_dir / run_dir_name(n, commit, k)

    def row_run_dir(self, n: int, row: LedgerRow) -> Path:
        return self.run_dir(row.n, row.commit)

    def by_number(self) -> dict[int, LedgerRow]:
        return {row.n: row for row in self.rows()}

    def in_flight(self, n: int) -> bool:
        """Experiment n is committed and not yet decided (state.json)."""
        try:
            journal = self.read_journal()
        except LedgerError:
            return False
        return journal is not None and any(p.n == n for p in journal.pending)

    def write_replicate(self, n: int, commit: str, replicate: ReplicateRecord) -> None:
        atomic_write_model(self.tag_dir / replicate.run_dir / REPLICATE_JSON, replicate)

    def write_record(self, record: RunRecord) -> Path:
        path = self.run_dir(record.n, record.commit) / RUN_JSON
        atomic_write_model(path, record)
        return path

    def read_record(self, n: int, commit: str) -> RunRecord | None:
        path = self.run_dir(n, commit) / RUN_JSON
        try:
            return RunRecord.model_validate_json(read_regular(path, 16 * 2**20))
        except FileNotFoundError:
            return None
        except UnsafeFileError as exc:
            raise LedgerError(f"{path} cannot be read: {exc}") from None
        except ValidationError as exc:
            raise LedgerError(f"{path} is not a valid run record: {exc.errors()[0]['msg']}") from None

    def set_aside(self, run_dir: Path, stamp: str) -> Path | None:
        """Move a half-finished run folder (from an interrupted controller) to interrupted/."""
        if not run_dir.exists():
            return None
        dest = self.tag_dir / "interrupted" / f"{run_dir.name}-{stamp}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run_dir), str(dest))
        fsync_dir(self.tag_dir)
        return dest

    # -- tag.json and the journal --------------------------------------------------------------

    def read_tag(self) -> TagRecord | None:
        path = self.tag_dir / TAG_JSON
        return TagRecord.model_validate_json(path.read_bytes()) if path.exists() else None

    def write_tag(self, record: TagRecord) -> None:
        atomic_write_model(self.tag_dir / TAG_JSON, record)

    def read_journal(self) -> Journal | None:
        path = self.tag_dir / STATE_JSON
        if not path.exists():
            return None
        try:
            return Journal.model_validate_json(path.read_bytes())
        except ValidationError:
            return None  # unreadable journal: the ledger alone decides

    def write_journal(self, journal: Journal) -> None:
        atomic_write_model(self.tag_dir / STATE_JSON, journal)

    def write_slots(self, record: SlotsRecord) -> None:
        atomic_write_model(self.tag_dir / SLOTS_JSON, record)

    def read_slots(self) -> SlotsRecord | None:
        """What each slot is doing, as the running night last wrote it (None: none written, or
        unreadable). Whether that night is still running is the tag lock's to say."""
        path = self.tag_dir / SLOTS_JSON
        try:
            return SlotsRecord.model_validate_json(read_regular(path, 2**20))
        except (OSError, UnsafeFileError, ValidationError):
            return None

    def clear_journal(self) -> None:
        path = self.tag_dir / STATE_JSON
        if path.exists():
            path.unlink()
            fsync_dir(self.tag_dir)


# -- finding runs across tags ----------------------------------------------------------------


@dataclass(frozen=True)
class RunLocation:
    tag: str
    n: int
    row: LedgerRow
    run_dir: Path

    def record(self) -> RunRecord | None:
        return Ledger(self.run_dir.parent).read_record(self.n, self.row.commit)


def list_tags(runs_dir: Path) -> list[str]:
    """Tags with a ledger, most recently written first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    tags = [p for p in runs_dir.iterdir() if (p / RESULTS).is_file()]
    tags.sort(key=lambda p: (p / RESULTS).stat().st_mtime, reverse=True)
    return [p.name for p in tags]


def latest_tag(runs_dir: Path) -> str | None:
    tags = list_tags(runs_dir)
    return tags[0] if tags else None


def _numbers(ns: list[int]) -> str:
    """0..3 for a contiguous run of numbers, 0..3, 5 when some are missing (still in flight)."""
    if not ns:
        return "none yet"
    parts, start = [], ns[0]
    for prev, cur in zip(ns, [*ns[1:], None], strict=True):
        if cur != prev + 1 if cur is not None else True:
            parts.append(f"{start}" if start == prev else f"{start}..{prev}")
            start = cur if cur is not None else start
    return ", ".join(parts)


def find_run(runs_dir: Path, ref: str, tag: str | None = None) -> RunLocation:
    """A run by experiment number (within `tag`, default the latest) or by commit prefix (any tag,
    unless `tag` is given). Raises LedgerError with one line when there is none or several."""
    runs_dir = Path(runs_dir)
    tags = [tag] if tag else list_tags(runs_dir)
    if not tags:
        raise LedgerError(f"no runs in {runs_dir}/ yet: start a night with `make overnight`")
    if ref.isdigit() and len(ref) < SHORT:
        the_tag = tag or tags[0]
        ledger = Ledger(runs_dir / the_tag)
        numbered = ledger.by_number()
        n = int(ref)
        if n not in numbered:
            raise LedgerError(
                f"tag {the_tag} has experiments {_numbers(sorted(numbered))}; there is no {n}"
                + ("; it is still running" if ledger.in_flight(n) else "")
            )
        return RunLocation(the_tag, n, numbered[n], ledger.row_run_dir(n, numbered[n]))
    prefix = ref.lower()
    if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
        raise LedgerError(f"{ref!r} is neither an experiment number nor a commit (4+ hex characters)")
    hits: list[RunLocation] = []
    for t in tags:
        ledger = Ledger(runs_dir / t)
        for row in ledger.rows():
            n = row.n
            if _matches(prefix, row, ledger, n):
                hits.append(RunLocation(t, n, row, ledger.row_run_dir(n, row)))
    if not hits:
        raise LedgerError(f"no run of commit {ref} in {runs_dir}/ (tags: {', '.join(tags)})")
    commits = {h.row.commit for h in hits}
    if len(commits) > 1:
        raise LedgerError(f"commit prefix {ref} is ambiguous: {', '.join(sorted(commits))}; give more characters")
    return hits[-1]  # the same commit run twice (the baseline of two tags): the latest


def _matches(prefix: str, row: LedgerRow, ledger: Ledger, n: int) -> bool:
    if len(prefix) <= SHORT:
        return row.commit.startswith(prefix)
    if not row.commit.startswith(prefix[:SHORT]):
        return False
    record = ledger.read_record(n, row.commit)
    return record is not None and record.commit.startswith(prefix)
