"""What a person reads: the live status line of a night, one line per finished experiment, the
ledger as a table, and a run's logs. Agent-written text is shown as plain text (never as markup)."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller.ledger import LedgerRow, RunLocation, clean_description
from controller.records import Journal, RunRecord, SlotsRecord, SlotState
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
    """(experiment number, row) of the current best: the last keep in decision order."""
    keeps = [r for r in rows if r.status == "keep"]
    return (keeps[-1].n, keeps[-1]) if keeps else None


class ConsoleObserver:
    """The loop's observer for a terminal: a live view (the night's line, what the agent does,
    one line per slot, preflights in flight) under a growing list of decided experiments.
    Without a terminal (a log file, CI), only the lines are printed."""

    def __init__(
        self,
        console: Console,
        tag: str,
        rows: list[LedgerRow],
        deadline: dt.datetime | None,
        max_experiments: int | None,
    ) -> None:
        self.console = console
        self.tag = tag
        self.rows = list(rows)
        self.deadline = deadline
        self.max_experiments = max_experiments
        self.started = time.monotonic()
        self.agent: tuple[int, str, float] | None = None  # (experiment, phase, since)
        self.preflights: dict[int, float] = {}  # experiment -> since
        self.slots: dict[int, tuple[SlotState, float]] = {}  # slot index -> (state, since)
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
        return self.view()

    def line(self) -> Text:
        """The night in one line: last result, best so far, time, experiments."""
        t = Text()
        t.append(f"{self.tag}", style="bold")
        if self.rows:
            last = self.rows[-1]
            t.append(f" · last #{last.n} ")
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

    def view(self) -> Text:
        """The night's line, then the agent, each slot and the preflights, one line each."""
        now = time.monotonic()
        t = self.line()
        t.append("\n  agent: ")
        if self.agent is None:
            t.append("waiting for a free slot", style="grey50")
        else:
            n, phase, since = self.agent
            t.append(f"{PHASE_LABEL.get(phase, phase)} #{n} {_hms(now - since)}")
        for index in sorted(self.slots):
            state, since = self.slots[index]
            t.append(f"\n  {state.label}: ")
            if state.n is None:
                t.append("idle", style="grey50")
            else:
                t.append(f"#{state.n} ", style="bold cyan")
                t.append(f"{clean_line(state.what, 80)} {_hms(now - since)}")
        for n, since in sorted(self.preflights.items()):
            t.append(f"\n  preflight: #{n} {_hms(now - since)}", style="grey50")
        return t

    # -- LoopObserver ------------------------------------------------------------------------

    def phase(self, n: int, phase: str) -> None:
        now = time.monotonic()
        if phase in ("proposing", "checking"):
            same = self.agent is not None and self.agent[0] == n and self.agent[1] == phase
            self.agent = self.agent if same else (n, phase, now)
        elif phase in ("committed", "ref"):
            self.agent = None
        elif phase == "preflight":
            self.preflights[n] = now
        elif phase in ("training", "decided"):
            self.preflights.pop(n, None)

    def slot(self, state: SlotState) -> None:
        self.slots[state.index] = (state, time.monotonic())

    def finished(self, record: RunRecord, best: LedgerRow | None) -> None:
        ok = [r for r in record.own_replicates if r.status == "ok" and r.val_bpb is not None]
        row = LedgerRow(
            record.commit[:7],
            record.val_bpb or 0.0,
            record.memory_gb,
            record.status,
            record.description,
            n=record.n,
            runs=len(ok),
            train_s=record.timings.train,
            slot=record.slot,
        )
        self.rows.append(row)
        self.preflights.pop(record.n, None)
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
        if record.decision is not None and row.scored:
            t.append(f"\n     {clean_line(record.decision.text, 200)}", style="grey50")
        if record.reason:
            style = STATUS_STYLE.get(row.status, "") if not row.scored else "grey50"
            t.append(f"\n     {clean_line(record.reason, 300)}", style=style)
    return t


_DELTA = re.compile(r"^([+-]?\d+\.\d+)\+/-(\d+\.\d+)")


def _short_delta(delta: str) -> str:
    """The ledger's delta column ("-0.012345+/-0.002000 3v3") as "-0.0123±0.0020"; "-" when none."""
    m = _DELTA.match(delta or "")
    if m is None:
        return clean_line(delta, 16) if delta else "-"
    return f"{float(m.group(1)):+.4f}±{float(m.group(2)):.4f}"


def ledger_table(tag: str, rows: list[LedgerRow]) -> Table:
    counts = {s: sum(1 for r in rows if r.status == s) for s in STATUS_STYLE}
    best = _best(rows)
    title = f"{tag}: {len(rows)} experiments, " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    if best is not None and rows and rows[0].scored:
        gain = (best[1].val_bpb - rows[0].val_bpb) / rows[0].val_bpb * 100
        title += f"; best {best[1].val_bpb:.6f} (#{best[0]}), {gain:+.2f}% vs the baseline"
    several_slots = any(row.slot for row in rows)  # a slot column only when a night used more than one
    table = Table(title=Text(title), title_justify="left", padding=(0, 1), box=None, header_style="bold")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("commit", no_wrap=True)
    table.add_column("val_bpb", justify="right", no_wrap=True)
    table.add_column("runs", justify="right", no_wrap=True)
    table.add_column("mem_gb", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("delta ± se", justify="right", no_wrap=True)
    if several_slots:
        table.add_column("slot", justify="right", no_wrap=True)
    table.add_column("description", overflow="fold", min_width=16)
    for row in rows:  # in decision order; the number is the experiment's
        marker = " *" if best is not None and row.n == best[0] else ""
        cells: list[str | Text] = [
            str(row.n),
            row.commit,
            Text(_val(row) + marker),
            str(row.runs) if row.scored else "-",
            f"{row.memory_gb:.1f}",
            Text(row.status, style=STATUS_STYLE.get(row.status, "")),
            _short_delta(row.delta),
        ]
        if several_slots:
            cells.append("-" if row.slot is None else str(row.slot))
        table.add_row(*cells, Text(clean_description(row.description)))
    return table


def in_flight_lines(journal: Journal | None, slots: SlotsRecord | None, running_pid: int | None) -> list[Text]:
    """`make status` while a night runs: each slot's experiment, and the experiments in flight."""
    if running_pid is None:
        return (
            [Text("not running", style="grey50")]
            if journal is None or not journal.pending
            else [
                Text(
                    f"not running; {len(journal.pending)} experiment(s) in flight will be finished on resume",
                    style="yellow",
                )
            ]
        )
    lines = [Text(f"running (controller pid {running_pid})", style="bold")]
    now = dt.datetime.now(dt.UTC)
    if slots is not None and slots.pid == running_pid:
        for state in slots.slots:
            t = Text(f"  {state.label}: ")
            if state.n is None:
                t.append("idle", style="grey50")
            else:
                t.append(f"#{state.n} ", style="bold cyan")
                t.append(f"{clean_line(state.what, 80)} for {_hms((now - state.since).total_seconds())}")
            lines.append(t)
    for p in journal.pending if journal is not None else []:
        runs = f"{len(p.replicates)}/{p.wanted} runs done"
        what = clean_line(p.proposal.description if p.proposal else p.kind, 80)
        lines.append(Text(f"  in flight #{p.n} {p.commit[:7]} {p.kind}: {what} ({runs})"))
    return lines


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
