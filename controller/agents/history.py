"""The history of a tag as the LLM agent reads it: the results table (whole or compact), a summary,
search by words or by constant, and any experiment's diff, read from the refs
`refs/autoresearch/<tag>/<n>` that the controller keeps for every experiment.

Diffs come from git through controller/git.py's runner; an experiment commit's git parent is the
best commit it was made on, so `<commit>^..<commit>` is exactly what the experiment changed.
Commits never change, so their diffs are cached for the life of the process.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from controller import git
from controller.agents.base import HistoryRow
from evaluator.hostile import clean_line

MAX_DESCRIPTION_CHARS = 200
MAX_TABLE_ROWS = 300  # one read_history answer
MAX_DIFF_CHARS = 20_000
MAX_SEARCH_HITS = 50
RECENT_ROWS = 30  # rows of the compact table besides the baseline and the keeps
_CONSTANT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ASSIGN = re.compile(r"^([-+])\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::[^=]*)?=(?!=)\s*(.*)$")
_CACHE_MAX = 4096
_diff_cache: dict[tuple[str, str, str, int], str] = {}


class HistoryError(Exception):
    """A history request that cannot be answered; its message goes back to the model."""


def one_line(text: str, cap: int = MAX_DESCRIPTION_CHARS) -> str:
    """A description fit for a table row: no control characters or line breaks, capped."""
    return clean_line(text, cap)


# --- tables ----------------------------------------------------------------------------------


def best_row(history: list[HistoryRow]) -> HistoryRow | None:
    """The current best: the last kept experiment (the branch tip), as the loop sees it."""
    keeps = [r for r in history if r.status == "keep" and r.val_bpb is not None]
    return keeps[-1] if keeps else None


def _row(r: HistoryRow, best: HistoryRow | None) -> str:
    bpb = f"{r.val_bpb:.6f}" if r.val_bpb is not None else "-"
    mark = "  <- best" if best is not None and r is best else ""
    return f"{r.n}\t{r.commit}\t{bpb}\t{r.memory_gb:.1f}\t{r.status}\t{one_line(r.description)}{mark}"


HEADER = "n\tcommit\tval_bpb\tmemory_gb\tstatus\tdescription"


def history_table(
    history: list[HistoryRow], max_rows: int = MAX_TABLE_ROWS, first: int | None = None, last: int | None = None
) -> str:
    """Rows first..last (all by default; the newest `max_rows` when there are more)."""
    if not history:
        return ""
    best = best_row(history)
    rows = [r for r in history if (first is None or r.n >= first) and (last is None or r.n <= last)]
    if not rows:
        return ""
    out = [HEADER]
    if len(rows) > max_rows:
        out.append(f"[{len(rows) - max_rows} older rows left out: ask for a range with first/last]")
        rows = rows[-max_rows:]
    out += [_row(r, best) for r in rows]
    return "\n".join(out)


def compact_table(history: list[HistoryRow], recent: int = RECENT_ROWS) -> str:
    """The baseline, every kept experiment and the last `recent` rows, whatever the night's
    length; each gap is one line saying what it holds."""
    if not history:
        return ""
    best = best_row(history)
    cutoff = history[-recent].n if len(history) > recent else history[0].n
    shown = [r for r in history if r.n == history[0].n or r.status == "keep" or r.n >= cutoff]
    out = [HEADER]
    previous: int | None = None
    index = {r.n: i for i, r in enumerate(history)}
    for r in shown:
        if previous is not None and index[r.n] > index[previous] + 1:
            gap = history[index[previous] + 1 : index[r.n]]
            counts = Counter(g.status for g in gap)
            what = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            out.append(f"[{len(gap)} rows left out ({what}): read_history or search_history shows them]")
        out.append(_row(r, best))
        previous = r.n
    return "\n".join(out)


def summary(
    history: list[HistoryRow], noise_bpb: float | None, repo: Path | None = None, train_rel: str | None = None
) -> str:
    """Experiments, kept, best, trend, noise, and the constants changed most often."""
    if not history:
        return "no experiments yet: the baseline has not run"
    done = [r for r in history if r.n > 0]
    counts = Counter(r.status for r in done)
    lines = [
        f"experiments: {len(done)} after the baseline"
        + (f" ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})" if done else "")
    ]
    base = history[0]
    if base.val_bpb is not None:
        lines.append(f"baseline: val_bpb {base.val_bpb:.6f} (#{base.n})")
    best = best_row(history)
    if best is not None:
        gain = (
            f", {(best.val_bpb - base.val_bpb) / base.val_bpb * 100:+.2f}% vs the baseline"
            if base.val_bpb and best.val_bpb is not None
            else ""
        )
        lines.append(f"best: val_bpb {best.val_bpb:.6f} (#{best.n}: {one_line(best.description, 100)}){gain}")
        since = sum(1 for r in done if r.n > best.n)
        lines.append(f"since the best: {since} experiments without a keep")
    if noise_bpb is not None:
        lines.append(
            f"noise: run-to-run standard deviation of val_bpb about {noise_bpb:.6f} (measured); "
            "differences smaller than that are not real"
        )
    else:
        lines.append("noise: not measured this night; treat differences in the 4th decimal with care")
    lines += _trend(history)
    last10 = done[-10:]
    if last10:
        c = Counter(r.status for r in last10)
        lines.append(f"last {len(last10)}: " + ", ".join(f"{v} {k}" for k, v in sorted(c.items())))
    if repo is not None and train_rel is not None and done:
        try:
            tally = _constant_tally(history, repo, train_rel)
        except git.GitError:
            tally = ""
        if tally:
            lines.append("constants changed most (times changed / kept): " + tally)
    return "\n".join(lines)


def _trend(history: list[HistoryRow]) -> list[str]:
    """Best-so-far after every tenth of the night (at most 10 points)."""
    scored = [r for r in history if r.val_bpb is not None]
    if len(history) < 4 or not scored:
        return []
    step = max(1, len(history) // 10)
    points: list[str] = []
    best: float | None = None
    for i, r in enumerate(history):
        if r.status == "keep" and r.val_bpb is not None:
            best = r.val_bpb
        if best is not None and ((i + 1) % step == 0 or i == len(history) - 1):
            points.append(f"#{r.n}: {best:.6f}")
    return ["trend (best so far): " + ", ".join(points)]


# --- diffs -----------------------------------------------------------------------------------


def _cached(repo: Path, commit: str, train_rel: str, context_lines: int) -> str | None:
    return _diff_cache.get((str(repo), commit, train_rel, context_lines))


def _store(repo: Path, commit: str, train_rel: str, context_lines: int, text: str) -> None:
    if len(_diff_cache) >= _CACHE_MAX:
        _diff_cache.clear()
    _diff_cache[(str(repo), commit, train_rel, context_lines)] = text


def experiment_diff(repo: Path, commit: str, train_rel: str, against: str | None = None) -> str:
    """train.py's diff from `against` (default: the commit's git parent) to `commit`."""
    if against is None:
        hit = _cached(repo, commit, train_rel, 3)
        if hit is not None:
            return hit
        text = git.diff(repo, f"{commit}^", commit, train_rel)
        _store(repo, commit, train_rel, 3, text)
        return text
    return git.diff(repo, against, commit, train_rel)


def changed_lines(repo: Path, commits: list[str], train_rel: str) -> dict[str, str]:
    """{commit: its diff against its parent with no context lines}, one git call for the missing."""
    out: dict[str, str] = {}
    missing = []
    for c in commits:
        hit = _cached(repo, c, train_rel, 0)
        if hit is None:
            missing.append(c)
        else:
            out[c] = hit
    for start in range(0, len(missing), 200):
        chunk = missing[start : start + 200]
        raw = git.git_bytes(
            repo, "show", "--no-color", "--no-ext-diff", "--format=%x00%H", "-U0", *chunk, "--", train_rel
        ).decode("utf-8", errors="replace")
        for part in raw.split("\x00")[1:]:
            sha, _, body = part.partition("\n")
            _store(repo, sha.strip(), train_rel, 0, body)
            out[sha.strip()] = body
    for c in missing:
        out.setdefault(c, "")
    return out


def constant_changes(diff: str, name: str) -> list[str]:
    """`NAME = old -> new` (or `+NAME = v` / `-NAME = v`) for each change of an assignment to NAME."""
    removed: list[str] = []
    added: list[str] = []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        m = _ASSIGN.match(line)
        if m and m.group(2) == name:
            value = m.group(3).split("#", 1)[0].strip()
            (removed if m.group(1) == "-" else added).append(value)
    if removed and added:
        return (
            [f"{name} {a} -> {b}" for a, b in zip(removed, added, strict=False)]
            + [f"{name} = {v} added" for v in added[len(removed) :]]
            + [f"{name} = {v} removed" for v in removed[len(added) :]]
        )
    return [f"{name} = {v} added" for v in added] + [f"{name} = {v} removed" for v in removed]


def _constant_tally(history: list[HistoryRow], repo: Path, train_rel: str, top: int = 8) -> str:
    rows = [r for r in history if r.n > 0 and r.full_commit]
    diffs = changed_lines(repo, [r.full_commit for r in rows if r.full_commit], train_rel)
    changed: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    for r in rows:
        names = {
            m.group(2)
            for line in diffs.get(r.full_commit or "", "").splitlines()
            if not line.startswith(("---", "+++")) and (m := _ASSIGN.match(line))
        }
        for name in names:
            if name.isupper():
                changed[name] += 1
                kept[name] += r.status == "keep"
    return ", ".join(f"{name} {n}/{kept[name]}" for name, n in changed.most_common(top))


# --- search ----------------------------------------------------------------------------------


def search(
    history: list[HistoryRow], words: str | None, constant: str | None, repo: Path | None, train_rel: str | None
) -> str:
    """Experiments whose description or changed lines hold all `words` (any case), and/or that
    changed the constant `constant`, oldest first, with what changed."""
    terms = [w.casefold() for w in (words or "").split()]
    if not terms and not constant:
        raise HistoryError("give words and/or constant")
    if constant is not None and not _CONSTANT.match(constant):
        raise HistoryError(f"constant must be a Python name like MATRIX_LR, not {constant!r}")
    rows = [r for r in history if r.n > 0]
    diffs: dict[str, str] = {}
    if repo is not None and train_rel is not None:
        diffs = changed_lines(repo, [r.full_commit for r in rows if r.full_commit], train_rel)
    best = best_row(history)
    hits = []
    for r in rows:
        diff = diffs.get(r.full_commit or "", "")
        body = "\n".join(line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("---", "+++")))
        if terms:
            haystack = (r.description + "\n" + body).casefold()
            if not all(t in haystack for t in terms):
                continue
        notes = []
        if constant is not None:
            notes = constant_changes(diff, constant)
            if not notes:
                continue
        hits.append(_row(r, best) + (f"\n\t\t{'; '.join(notes)}" if notes else ""))
    what = " and ".join(filter(None, [f"words {words!r}" if terms else "", f"constant {constant}" if constant else ""]))
    if not hits:
        return f"no experiment matches {what}"
    shown = hits[-MAX_SEARCH_HITS:]
    head = f"{len(hits)} experiments match {what}" + (
        f" (the newest {len(shown)} shown)" if len(hits) > len(shown) else ""
    )
    return "\n".join([head, HEADER, *shown])


def cap_diff(diff: str, cap: int = MAX_DIFF_CHARS) -> str:
    return diff if len(diff) <= cap else diff[:cap] + f"\n[... diff cut at {cap} characters]"
