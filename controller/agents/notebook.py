"""The research notebook of a tag: `runs/<tag>/notebook.md`, the LLM agent's memory across proposals.

Each proposal is a fresh conversation; the notebook is what carries the agent's own thread of
ideas from one to the next: hypotheses, what worked, what to try next. The controller owns the
file (it lives under runs/<tag>/, never in a train.py commit), puts it in the first message of
every proposal, and changes it only through the agent's `update_notebook` tool, one `## section`
at a time. It is shown in the morning by `python -m controller notebook`.

The model writes hostile text, so every update is cleaned (control and bidi characters dropped,
lone surrogates replaced, a `## ` line inside a section demoted so it cannot forge a section), the
whole file is capped, and it is written atomically (a symlink planted at its name is replaced,
never followed) and read back without following links.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controller.safefiles import atomic_write_text
from evaluator.hostile import UnsafeFileError, clean_line, clean_text, read_regular

NOTEBOOK_NAME = "notebook.md"
MAX_NOTEBOOK_BYTES = 8_000  # it goes into every proposal's first message (about 2k tokens at most)
MAX_TITLE_CHARS = 80
TITLE = "# Research notebook\n"
Mode = Literal["append", "replace"]
_HEADING_1_2 = re.compile(r"^#{1,2}(\s|$)")


class NotebookError(Exception):
    """An update that cannot be made, or a notebook file that is not safe to read; one line."""


@dataclass(frozen=True)
class Section:
    title: str
    body: str


def notebook_path(tag_dir: Path) -> Path:
    return Path(tag_dir) / NOTEBOOK_NAME


def read_notebook(tag_dir: Path) -> str:
    """The notebook's text ("" when there is none yet). Refuses a symlink or a non-regular file."""
    path = notebook_path(tag_dir)
    if not os.path.lexists(path):
        return ""
    try:  # no symlink, regular files only, capped (evaluator.hostile)
        data = read_regular(path, 4 * MAX_NOTEBOOK_BYTES)
    except UnsafeFileError as exc:
        raise NotebookError(str(exc)) from None
    return clean_text(data.decode("utf-8", errors="replace"))


def parse(text: str) -> list[Section]:
    """The `## ` sections of a notebook, in order (text before the first one is dropped)."""
    sections: list[Section] = []
    title: str | None = None
    lines: list[str] = []
    for line in text.split("\n"):
        if line.startswith("## "):
            if title is not None:
                sections.append(Section(title, "\n".join(lines).strip("\n")))
            title, lines = line[3:].strip(), []
        elif title is not None:
            lines.append(line)
    if title is not None:
        sections.append(Section(title, "\n".join(lines).strip("\n")))
    return sections


def render(sections: list[Section]) -> str:
    parts = [TITLE]
    for s in sections:
        parts.append(f"\n## {s.title}\n" + (f"\n{s.body}\n" if s.body else ""))
    return "".join(parts)


def clean_title(raw: str) -> str:
    title = clean_line(raw, cap=4 * MAX_TITLE_CHARS).lstrip("#").strip()
    if not title:
        raise NotebookError("section must be a short non-empty title, e.g. 'Hypotheses'")
    return title[:MAX_TITLE_CHARS].rstrip()


def clean_body(raw: str) -> str:
    """Cleaned section text; a line that would start a new `## ` section is demoted to `### `."""
    lines = []
    for line in clean_text(raw).split("\n"):
        if _HEADING_1_2.match(line):
            line = "###" + line.lstrip("#")
        lines.append(line.rstrip())
    return "\n".join(lines).strip("\n")


def update_notebook(tag_dir: Path, section: str, text: str, mode: Mode) -> str:
    """Append `text` to section `section` (created when missing) or replace its text (empty text
    removes the section). Returns the section as it now reads. NotebookError when the notebook
    would pass its cap (the model is told to condense) or the file is unsafe."""
    title = clean_title(section)
    body = clean_body(text)
    sections = parse(read_notebook(tag_dir))
    index = next((i for i, s in enumerate(sections) if s.title.casefold() == title.casefold()), None)
    if mode == "append":
        if not body:
            raise NotebookError("text is empty: nothing to append")
        if index is None:
            sections.append(Section(title, body))
            index = len(sections) - 1
        else:
            old = sections[index]
            sections[index] = Section(old.title, f"{old.body}\n{body}" if old.body else body)
    elif index is None and not body:
        raise NotebookError(f"there is no section {title!r} to remove")
    elif not body:
        del sections[index]  # type: ignore[arg-type]
        index = None
    elif index is None:
        sections.append(Section(title, body))
        index = len(sections) - 1
    else:
        sections[index] = Section(sections[index].title, body)
    new_text = render(sections)
    size = len(new_text.encode("utf-8"))
    if size > MAX_NOTEBOOK_BYTES:
        raise NotebookError(
            f"the notebook would be {size} bytes, over its {MAX_NOTEBOOK_BYTES} byte cap: condense it "
            "(replace a long section with a shorter summary, or remove one) and try again"
        )
    atomic_write_text(notebook_path(tag_dir), new_text)
    used = f"the notebook is {size} of {MAX_NOTEBOOK_BYTES} bytes"
    if index is None:
        return f"removed section {title!r}; {used}"
    lines = sections[index].body.count("\n") + 1
    done = "appended to" if mode == "append" else "replaced"
    return f"{done} section {sections[index].title!r} ({lines} lines); {used}"  # (no echo: the model wrote it)
