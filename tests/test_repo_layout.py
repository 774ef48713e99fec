"""The repository explains itself: its docs point only inside it, the README's layout table names
every top-level folder, and `make help` lists every Makefile target."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTSIDE_REFERENCES = ("../shared", "DESIGN.md")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name]


def test_no_tracked_file_points_outside_the_repository() -> None:
    offenders = []
    for name in tracked_files():
        path = REPO / name
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            if any(ref in line for ref in OUTSIDE_REFERENCES):
                offenders.append(f"{name}:{lineno}: {line.strip()[:100]}")
    this_file = Path(__file__).resolve().relative_to(REPO).as_posix()
    offenders = [o for o in offenders if not o.startswith(f"{this_file}:")]
    assert offenders == [], "cite docs/architecture.md (threat point N) instead:\n" + "\n".join(offenders)


def layout_table_paths(readme: str) -> set[str]:
    """The first cells of the README's "## Layout" table, e.g. `controller/`."""
    section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    return {m.group(1).rstrip("/") for m in re.finditer(r"^\| `([^`]+)` \|", section, re.MULTILINE)}


def test_the_readme_layout_table_names_every_top_level_folder() -> None:
    folders = {name.split("/", 1)[0] for name in tracked_files() if "/" in name}
    folders = {f for f in folders if not f.startswith(".")}  # .ci/ is CI's, not the reader's
    listed = layout_table_paths((REPO / "README.md").read_text(encoding="utf-8"))
    assert {"controller", "docs", "benchmarks"} <= folders  # the check reads the real tree
    assert folders - listed == set(), f"add these folders to README.md's layout table: {sorted(folders - listed)}"
    gone = listed - folders - {"Makefile", "compose.yaml", "pyproject.toml"}
    assert gone == set(), f"the table names folders that do not exist: {sorted(gone)}"


def makefile_targets(makefile: str) -> set[str]:
    """Every target: the .PHONY list and each rule line `name: ...` (not variables, not files)."""
    targets: set[str] = set()
    for line in makefile.splitlines():
        if line.startswith(".PHONY:"):
            targets.update(line.split(":", 1)[1].split())
            continue
        rule = re.match(r"^([a-z][a-z0-9-]*)\s*:(?!=)", line)
        if rule:
            targets.add(rule.group(1))
    return targets


def test_make_help_lists_every_target_with_one_line_each() -> None:
    targets = makefile_targets((REPO / "Makefile").read_text(encoding="utf-8"))
    assert {"help", "test", "unit", "lint", "overnight"} <= targets
    out = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    described = [line.split()[1] for line in out.splitlines() if line.startswith("make ")]
    missing = sorted(targets - set(described))
    assert missing == [], f"add a line for each to the Makefile's help target: {missing}"
    assert len(described) == len(set(described)), "a target is listed twice"
