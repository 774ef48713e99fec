"""What a person reads: the live status line of a night, one line per finished experiment, the
ledger as a table, and a run's logs. Agent-written text is shown as plain text (never as markup)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller.ledger import LedgerRow, RunLocation, clean_description
from controller.records import RunRecord
from controller.safefiles import read_tail
from evaluator.hostile import clean_line

STATUS_STYLE = {"keep": "green", "discard": "grey50", "crash": "red", "timeout": "yellow", "rejected": "magenta"}
PHASE_LABEL = {
    "proposing": "agent proposing",
    "checking": "checking the edit",
    "committed": "committing",
    "ref": "committing",
    "training": "training + scoring",
    "recorded": "recording",
    "appended": "recording",
    "decided": "recording",
}
LOG_PRINT_BYTES = 256 * 1024


def _hms(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _val(row: LedgerRow) -> str:
    return f"{row.val_bpb:.6f}" if row.scored else "-"


def _best(rows: list[LedgerRow]) -> tuple[int, LedgerRow] | None:
    keeps = [(n, r) for n, r in enumerate(rows) if r.status == "keep"]
    return keeps[-1] if keeps else None


class ConsoleObserver:
    """The loop's observer for a terminal: a live status line (experiment, phase, last result,
    best so far, elapsed and time left) under a growing list of finished experiments. Without a
    terminal (a log file, CI), only the lines are printed."""

    def __init__(self, console: Console, tag: str, rows: list[LedgerRow], deadline: dt.datetime | None,
                 max_experiments: int | None) -> None:
        self.console = console
        self.tag = tag
        self.rows = list(rows)
        self.deadline = deadline
        self.max_experiments = max_experiments
        self.started = time.monotonic()
        self.n = len(rows)
        self.phase_name = "starting"
        self.phase_started = time.monotonic()
        self.live: Live | None = None

    def __enter__(self) -> ConsoleObserver:
        if self.console.is_terminal:
            self.live = Live(self, console=self.console, refresh_per_second=2, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def __rich__(self) -> Text:
        return self.line()

    def line(self) -> Text:
        t = Text()
        t.append(f"{self.tag} ", style="bold")
        t.append(f"#{self.n} ", style="bold cyan")
        t.append(f"{PHASE_LABEL.get(self.phase_name, self.phase_name)} {_hms(time.monotonic() - self.phase_started)}")
        if self.rows:
            last = self.rows[-1]
            t.append(" · last ")
            t.append(last.status, style=STATUS_STYLE.get(last.status, ""))
            t.append(f" {_val(last)}")
        best = _best(self.rows)
        if best is not None:
            t.append(" · best ")
            t.append(f"{best[1].val_bpb:.6f}", style="green")
            t.append(f" (#{best[0]})")
        t.append(f" · {_hms(time.monotonic() - self.started)} elapsed")
        if self.deadline is not None:
            left = (self.deadline - dt.datetime.now(self.deadline.tzinfo)).total_seconds()
            t.append(f" · {_hms(left)} left")
        if self.max_experiments is not None:
            t.append(f" · {max(0, len(self.rows) - 1)}/{self.max_experiments} experiments")
        return t

    # -- LoopObserver ------------------------------------------------------------------------

    def phase(self, n: int, phase: str) -> None:
        if PHASE_LABEL.get(phase) != PHASE_LABEL.get(self.phase_name) or n != self.n:
            self.phase_started = time.monotonic()
        self.n, self.phase_name = n, phase

    def finished(self, record: RunRecord, best: LedgerRow | None) -> None:
        row = LedgerRow(record.commit[:7], record.val_bpb or 0.0, record.memory_gb, record.status, record.description,
                        record.timings.train)
        self.rows.append(row)
        self.n = len(self.rows)
        self.console.print(experiment_line(record.n, row, record))

    def say(self, text: str, level: str = "info") -> None:
        style = {"warning": "yellow", "error": "red"}.get(level, "")
        self.console.print(Text(text, style=style))


def experiment_line(n: int, row: LedgerRow, record: RunRecord | None = None) -> Text:
    t = Text()
    t.append(f"#{n:<3} {row.commit} ")
    t.append(f"{row.status:<8}", style=STATUS_STYLE.get(row.status, ""))
    t.append(f" {_val(row):>9}  {row.memory_gb:5.1f} GB  ")
    t.append(clean_description(row.description))
    if record is not None:
        t.append(f"  ({record.timings.total:.0f}s", style="grey50")
        if record.usage.cost_usd is None:
            t.append(", cost unknown", style="grey50")
        elif record.usage.cost_usd:
            t.append(f", ${record.usage.cost_usd:.3f}", style="grey50")
        t.append(")", style="grey50")
        if record.reason and not row.scored:
            t.append(f"\n     {clean_line(record.reason, 300)}", style=STATUS_STYLE.get(row.status, ""))
    return t


def ledger_table(tag: str, rows: list[LedgerRow]) -> Table:
    counts = {s: sum(1 for r in rows if r.status == s) for s in STATUS_STYLE}
    best = _best(rows)
    title = f"{tag}: {len(rows)} experiments, " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    if best is not None and rows and rows[0].scored:
        gain = (best[1].val_bpb - rows[0].val_bpb) / rows[0].val_bpb * 100
        title += f"; best {best[1].val_bpb:.6f} (#{best[0]}), {gain:+.2f}% vs the baseline"
    table = Table(title=Text(title), title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("commit")
    table.add_column("val_bpb", justify="right")
    table.add_column("memory_gb", justify="right")
    table.add_column("status")
    table.add_column("description", overflow="fold")
    for n, row in enumerate(rows):
        marker = " *" if best is not None and n == best[0] else ""
        table.add_row(
            str(n), row.commit, Text(_val(row) + marker), f"{row.memory_gb:.1f}",
            Text(row.status, style=STATUS_STYLE.get(row.status, "")), Text(clean_description(row.description)),
        )
    return table


def print_run_logs(console: Console, loc: RunLocation, which: str = "both") -> None:
    """train.log and/or eval.log of a run, as plain text (escape sequences removed)."""
    names = {"train": ["train.log"], "eval": ["eval.log"]}.get(which, ["train.log", "eval.log"])
    console.print(Text(f"{loc.tag} #{loc.n} {loc.row.commit} {loc.row.status}: {loc.row.description}", style="bold"))
    for name in names:
        path: Path = loc.run_dir / name
        console.rule(Text(f"{name}  ({path})"))
        if not path.exists():
            console.print(Text(f"(no {name}: the run ended before it started)", style="grey50"))
            continue
        size = path.lstat().st_size
        if size > LOG_PRINT_BYTES:
            console.print(Text(f"(last {LOG_PRINT_BYTES // 1024} KiB of {size // 1024} KiB)", style="grey50"))
        console.print(Text(read_tail(path, LOG_PRINT_BYTES)), end="")
