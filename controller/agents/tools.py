"""The tools an LLM agent may call, and nothing else: view/edit/write train.py; read the history
(table, summary, search, any experiment's diff) and a past run's log; update the tag's notebook;
give up on a fix; finish.

Everything here treats files as hostile: train.py and the run logs were written by agent code.
Files are read through evaluator.hostile (no symlink followed, every folder under the runs folder
walked one component at a time, only regular files, unchanged between check and open; its
UnsafeFileError becomes a ToolError whose message goes back to the model), reads and writes are
size-capped, and the model never names a path: a log is asked for by run number and kind, and
its folder comes from the controller's history, confined to `context.runs_dir`.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller import git
from controller.agents.base import HistoryRow, ProposalContext
from controller.agents.history import (
    HistoryError,
    best_row,
    cap_diff,
    experiment_diff,
    history_table,
    one_line,
    search,
    summary,
)
from controller.agents.notebook import MAX_NOTEBOOK_BYTES, NotebookError, update_notebook
from controller.agents.textsafe import deep_no_surrogates
from evaluator import hostile
from evaluator.hostile import UnsafeFileError

__all__ = ["ToolError", "ToolOutcome", "TrainPyTools", "history_table", "one_line", "tool_specs"]

MAX_TRAIN_PY_BYTES = 512_000  # cap on train.py, read or written
MAX_VIEW_CHARS = 60_000  # one view_train_py result
MAX_LOG_TAIL_BYTES = 32_000  # the most of a log one read_run_log returns
SNIPPET_CONTEXT_LINES = 4


class ToolError(Exception):
    """A tool call that cannot be done; its message goes back to the model as an error result."""


@dataclass(frozen=True)
class ToolOutcome:
    text: str
    is_error: bool = False
    finish_description: str | None = None  # set when `finish` succeeded
    give_up_reason: str | None = None  # set when `give_up` succeeded


# --- files -----------------------------------------------------------------------------------


def read_regular_file(path: Path, cap: int) -> str:
    """Text of a regular file, not following a symlink at its last component, at most `cap` bytes."""
    try:
        return hostile.read_regular(path, cap).decode("utf-8", errors="replace")
    except UnsafeFileError as exc:  # the one hostile-file check, its reason told to the model
        raise ToolError(str(exc)) from None


def read_train_py(path: Path) -> str:
    return read_regular_file(path, MAX_TRAIN_PY_BYTES)


def write_train_py(path: Path, text: str) -> None:
    """Replace train.py atomically (a new file renamed over it: a symlink there is replaced, not followed)."""
    data = text.encode("utf-8")
    if len(data) > MAX_TRAIN_PY_BYTES:
        raise ToolError(f"train.py would be {len(data)} bytes, over the {MAX_TRAIN_PY_BYTES} byte cap")
    try:
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o644
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".train.py.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_tail_under(root: Path, folder: Path, name: str, cap: int) -> tuple[str, int]:
    """The last `cap` bytes of regular file `folder/name` (folder inside `root`, reached without
    following a symlink below it) and its full size."""
    try:
        dir_fd = hostile.open_dir_under(root, folder)
    except UnsafeFileError as exc:
        raise ToolError(f"that run's folder: {exc}") from None
    try:
        if not _exists(name, dir_fd):
            raise ToolError(f"{name} does not exist for that run")
        data, size = hostile.read_tail(name, cap, dir_fd=dir_fd)
    except UnsafeFileError as exc:
        raise ToolError(str(exc)) from None
    finally:
        os.close(dir_fd)
    return data.decode("utf-8", errors="replace"), size


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


# --- tool inputs -----------------------------------------------------------------------------


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ViewInput(_Input):
    start_line: int | None = Field(default=None, ge=1)
    end_line: int | None = Field(default=None, ge=1)


class EditInput(_Input):
    old_str: str = Field(min_length=1)
    new_str: str


class WriteInput(_Input):
    content: str = Field(min_length=1)


class HistoryInput(_Input):
    first: int | None = Field(default=None, ge=0)
    last: int | None = Field(default=None, ge=0)


class SummaryInput(_Input):
    pass


class SearchInput(_Input):
    words: str | None = Field(default=None, max_length=200)
    constant: str | None = Field(default=None, max_length=64)


class ShowInput(_Input):
    run: int = Field(ge=0)
    against: Literal["parent", "best", "baseline"] = "parent"


class RunLogInput(_Input):
    run: int = Field(ge=0)
    log: Literal["train", "eval"] = "train"
    lines: int = Field(default=80, ge=1, le=400)


class NotebookInput(_Input):
    section: str = Field(min_length=1, max_length=200)
    text: str = Field(max_length=MAX_NOTEBOOK_BYTES)
    mode: Literal["append", "replace"] = "append"


class GiveUpInput(_Input):
    reason: str = Field(min_length=1)


class FinishInput(_Input):
    description: str = Field(min_length=1)


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
        if "anyOf" in prop:  # `int | None` -> integer (optional: simply not required)
            kinds = [k for k in prop.pop("anyOf") if k.get("type") != "null"]
            prop.update(kinds[0])
            prop.pop("default", None)
    schema["additionalProperties"] = False
    return schema


# The tool definitions are part of the cached prompt prefix: their text and order never change
# within a tag, so every proposal reads them from the cache.
TOOL_DESCRIPTIONS: dict[str, tuple[str, type[_Input]]] = {
    "view_train_py": (
        "Show the current train.py with line numbers. Optional start_line/end_line (1-based, inclusive) "
        "to see a part. At the start of a proposal train.py is the current best: the seed in your "
        "instructions with the diff in the first message applied, so view it only to be sure of exact "
        "text before an edit.",
        ViewInput,
    ),
    "edit_train_py": (
        "Replace one exact occurrence of old_str in train.py by new_str. old_str must match exactly "
        "(whitespace included) and be unique; include surrounding lines to make it unique. Returns the "
        "edited region with line numbers. Several edits may be made in one turn; they apply in order.",
        EditInput,
    ),
    "write_train_py": (
        f"Replace the whole of train.py with content (at most {MAX_TRAIN_PY_BYTES} bytes). Prefer "
        "edit_train_py: a whole file costs many output tokens and may be cut off at the output limit.",
        WriteInput,
    ),
    "read_history": (
        "The results table of this tag: experiment number, commit, val_bpb, peak memory, status and "
        "description. All rows by default; first/last (experiment numbers, inclusive) for a range. "
        "The first message shows a compact version (baseline, every keep, the latest rows).",
        HistoryInput,
    ),
    "history_summary": (
        "A summary of the night so far: experiments and their statuses, the baseline and the best "
        "val_bpb, the trend of the best, the measured run-to-run noise when there is one, and the "
        "constants changed most often (times changed / times kept).",
        SummaryInput,
    ),
    "search_history": (
        "Find past experiments. words: all of them must appear (any case) in the description or in "
        "the lines the experiment changed in train.py. constant: experiments that changed the "
        "assignment of that name (e.g. MATRIX_LR), with the old and new values. Give either or both.",
        SearchInput,
    ),
    "show_experiment": (
        "The full diff of a past experiment's train.py, by experiment number. against='parent' (the "
        "default): what that experiment changed, relative to the best it started from. "
        "against='best': from the current best to it. against='baseline': from the seed to it.",
        ShowInput,
    ),
    "read_run_log": (
        "The last lines of a past run's train.log (log='train') or eval.log (log='eval'), by experiment "
        "number as listed in the history.",
        RunLogInput,
    ),
    "update_notebook": (
        "Your research notebook for this tag, kept across proposals (each proposal is a fresh "
        "conversation; the notebook is shown in its first message). Write one '## section' at a "
        "time: mode='append' adds text to the end of the section (creating it), mode='replace' "
        f"rewrites it (empty text removes it). The whole notebook is capped at {MAX_NOTEBOOK_BYTES} "
        "bytes: keep it condensed. Suggested sections: Hypotheses, What worked, What failed, Next.",
        NotebookInput,
    ),
    "give_up": (
        "Only when you were asked to fix a broken experiment: give up on it instead, with a one-line "
        "reason (e.g. 'out of memory at this width; the idea needs a smaller model'). The loop records "
        "the reason and starts a fresh proposal from the best. Do not give up on trivial failures.",
        GiveUpInput,
    ),
    "finish": (
        "End this proposal once train.py holds your change. description: one short line saying what "
        "you changed (it goes into the results table). train.py must compile and still call "
        "submit(model). finish ends your turn: tool calls after it in the same turn are not run.",
        FinishInput,
    ),
}


def tool_specs() -> list[dict[str, Any]]:
    """Tool definitions for the Messages API, in a fixed order (so the prompt cache stays valid)."""
    return [
        {"name": name, "description": desc, "input_schema": _schema(model)}
        for name, (desc, model) in TOOL_DESCRIPTIONS.items()
    ]


# --- the tools -------------------------------------------------------------------------------


def numbered(lines: list[str], first: int) -> str:
    width = len(str(first + len(lines)))
    return "\n".join(f"{i:>{width}}| {line}" for i, line in enumerate(lines, start=first))


class TrainPyTools:
    """The tool calls of one proposal, bound to its context."""

    def __init__(self, context: ProposalContext) -> None:
        self.context = context
        self.path = context.train_py
        self.original = read_train_py(self.path)

    def changed(self) -> bool:
        return read_train_py(self.path) != self.original

    def restore(self) -> None:
        write_train_py(self.path, self.original)

    def run(self, name: str, raw_input: object) -> ToolOutcome:
        entry = TOOL_DESCRIPTIONS.get(name)
        if entry is None:
            return ToolOutcome(
                f"unknown tool {one_line(name, 64)!r}; the tools are: {', '.join(TOOL_DESCRIPTIONS)}", is_error=True
            )
        if not isinstance(raw_input, dict):
            return ToolOutcome(f"bad input for {name}: expected a JSON object", is_error=True)
        try:
            args = entry[1].model_validate(deep_no_surrogates(raw_input))
        except ValidationError as exc:
            return ToolOutcome(f"bad input for {name}: {_validation_message(exc)}", is_error=True)
        try:
            return getattr(self, f"_{name}")(args)
        except (ToolError, HistoryError, NotebookError) as exc:
            return ToolOutcome(str(exc), is_error=True)
        except git.GitError:
            return ToolOutcome("the history of that experiment cannot be read from git", is_error=True)

    def _view_train_py(self, args: ViewInput) -> ToolOutcome:
        lines = read_train_py(self.path).splitlines()
        if not lines:
            return ToolOutcome("train.py is empty")
        start = args.start_line or 1
        end = min(args.end_line or len(lines), len(lines))
        if start > len(lines) or end < start:
            raise ToolError(f"line range {start}-{args.end_line} is outside train.py (1-{len(lines)})")
        text = numbered(lines[start - 1 : end], start)
        if len(text) > MAX_VIEW_CHARS:
            text = text[:MAX_VIEW_CHARS] + "\n[... cut: ask for a smaller line range]"
        return ToolOutcome(text)

    def _edit_train_py(self, args: EditInput) -> ToolOutcome:
        text = read_train_py(self.path)
        count = text.count(args.old_str)
        if count == 0:
            raise ToolError(
                "old_str was not found in train.py; view the file and copy the exact text (whitespace matters)"
            )
        if count > 1:
            raise ToolError(
                f"old_str occurs {count} times in train.py; include more surrounding lines to make it unique"
            )
        if args.old_str == args.new_str:
            raise ToolError("old_str and new_str are the same; nothing to change")
        at = text.index(args.old_str)
        new_text = text[:at] + args.new_str + text[at + len(args.old_str) :]
        write_train_py(self.path, new_text)
        first = new_text.count("\n", 0, at) + 1
        last = first + args.new_str.count("\n")
        lines = new_text.splitlines()
        lo = max(1, first - SNIPPET_CONTEXT_LINES)
        hi = min(len(lines), last + SNIPPET_CONTEXT_LINES)
        return ToolOutcome(f"edited train.py; lines {lo}-{hi} now read:\n{numbered(lines[lo - 1 : hi], lo)}")

    def _write_train_py(self, args: WriteInput) -> ToolOutcome:
        write_train_py(self.path, args.content)
        return ToolOutcome(f"wrote train.py: {len(args.content.splitlines())} lines")

    def _read_history(self, args: HistoryInput) -> ToolOutcome:
        table = history_table(self.context.history, first=args.first, last=args.last)
        return ToolOutcome(table or "no experiments in that range" if self.context.history else "no experiments yet")

    def _history_summary(self, args: SummaryInput) -> ToolOutcome:
        c = self.context
        return ToolOutcome(summary(c.history, c.noise_bpb, c.repo, c.train_rel))

    def _search_history(self, args: SearchInput) -> ToolOutcome:
        c = self.context
        return ToolOutcome(search(c.history, args.words, args.constant, c.repo, c.train_rel))

    def _show_experiment(self, args: ShowInput) -> ToolOutcome:
        c = self.context
        row = self._row(args.run)
        if c.repo is None or c.train_rel is None or not row.full_commit:
            raise ToolError("diffs are not available in this session")
        if row.n == 0 and args.against == "parent":
            return ToolOutcome("experiment 0 is the baseline: the seed train.py in your instructions")
        against = None
        if args.against == "best":
            best = best_row(c.history)
            against = best.full_commit if best is not None else None
        elif args.against == "baseline":
            against = c.history[0].full_commit if c.history else None
        if args.against != "parent" and not against:
            raise ToolError(f"there is no {args.against} to compare with yet")
        diff = experiment_diff(c.repo, row.full_commit, c.train_rel, against)
        bpb = f"{row.val_bpb:.6f}" if row.val_bpb is not None else "-"
        head = (
            f"experiment {row.n} ({row.commit}, {row.status}, val_bpb {bpb}): {one_line(row.description)}\n"
            f"diff of train.py against {'its parent' if args.against == 'parent' else 'the ' + args.against}:"
        )
        return ToolOutcome(head + "\n" + (cap_diff(diff) if diff.strip() else "(no change)"))

    def _read_run_log(self, args: RunLogInput) -> ToolOutcome:
        row = self._row(args.run)
        data, size = read_tail_under(self.context.runs_dir, row.run_dir, f"{args.log}.log", MAX_LOG_TAIL_BYTES)
        lines = data.replace("\r\n", "\n").replace("\r", "\n").splitlines()[-args.lines :]
        header = f"{args.log}.log of run {args.run} ({size} bytes), last {len(lines)} lines:"
        return ToolOutcome(header + "\n" + "\n".join(lines))

    def _update_notebook(self, args: NotebookInput) -> ToolOutcome:
        return ToolOutcome(update_notebook(self.context.runs_dir, args.section, args.text, args.mode))

    def _give_up(self, args: GiveUpInput) -> ToolOutcome:
        if self.context.fix_attempt is None:
            raise ToolError("give_up is only for a fix request, and there is none: propose a change and finish")
        reason = one_line(args.reason)
        if not reason:
            raise ToolError("reason is empty; say in one line why the experiment cannot be fixed")
        return ToolOutcome(f"gave up: {reason}", give_up_reason=reason)

    def _finish(self, args: FinishInput) -> ToolOutcome:
        description = one_line(args.description)
        if not description:
            raise ToolError("description is empty; say in one line what you changed")
        text = read_train_py(self.path)
        try:
            compile(text, "train.py", "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise ToolError(f"train.py does not compile: line {exc.lineno}: {exc.msg}; fix it, then finish") from None
        except (ValueError, RecursionError, MemoryError) as exc:
            raise ToolError(f"train.py does not compile: {type(exc).__name__}; fix it, then finish") from None
        if "submit(" not in text:
            raise ToolError("train.py no longer calls submit(model); the run would produce nothing to score")
        return ToolOutcome(f"finished: {description}", finish_description=description)

    def _row(self, n: int) -> HistoryRow:
        rows = [row for row in self.context.history if row.n == n]
        if not rows:
            known = self.context.history
            span = f"0-{known[-1].n}" if known else "none"
            raise ToolError(f"no run {n} in the history; runs: {span}")
        return rows[-1]


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "input"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
