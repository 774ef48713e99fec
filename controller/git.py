"""Git, and only git: the experiment worktree (detached, where the agent edits train.py), the checks
on a proposal (only train.py changed, and it may run), controller-owned commits made with plumbing
(never on a checked-out branch, so several experiments can be in flight), three-way merges of
train.py, and the refs `refs/autoresearch/<tag>/<n>` that keep every experiment replayable. Real
git via subprocess.

The branch `autoresearch/<tag>` always holds the baseline plus the kept experiments, each the
parent of the next; it only moves by a compare-and-swap to a commit that was measured. A discarded
or crashed experiment lives on only under its ref."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sandbox.trainpy import MAX_BYTES, TrainPyRefused, check_train_py

IDENTITY = ("overnight", "overnight@localhost")
MAX_TRAIN_PY_BYTES = MAX_BYTES
_SAFE_CONFIG = [
    "-c",
    "core.hooksPath=/dev/null",  # no hook of the user's runs on the controller's commits
    "-c",
    "commit.gpgsign=false",
    "-c",
    "core.autocrlf=false",
    "-c",
    "advice.detachedHead=false",
]


class GitError(RuntimeError):
    """A git command failed; the message holds git's own last line."""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        LC_ALL="C",
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME=IDENTITY[0],
        GIT_AUTHOR_EMAIL=IDENTITY[1],
        GIT_COMMITTER_NAME=IDENTITY[0],
        GIT_COMMITTER_EMAIL=IDENTITY[1],
    )
    return env


def git(
    cwd: Path, *args: str, check: bool = True, input: bytes | None = None, env: dict[str, str] | None = None
) -> str:
    return git_bytes(cwd, *args, check=check, input=input, env=env).decode("utf-8", errors="replace").strip()


def git_bytes(
    cwd: Path, *args: str, check: bool = True, input: bytes | None = None, env: dict[str, str] | None = None
) -> bytes:
    proc = subprocess.run(
        ["git", *_SAFE_CONFIG, *args],
        cwd=cwd,
        env={**_env(), **(env or {})},
        input=input,
        capture_output=True,
    )
    if check and proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", errors="replace").strip().splitlines() or ["(no output)"]
        raise GitError(f"git {' '.join(args[:3])} failed: {lines[-1]}")
    return proc.stdout


# -- the user's repository -------------------------------------------------------------------


def repo_root(path: Path) -> Path:
    try:
        return Path(git(path, "rev-parse", "--show-toplevel"))
    except (GitError, FileNotFoundError):
        where = Path(path).resolve()
        raise GitError(f"{where} is not inside a git repository: run from the project checkout") from None


def head_commit(repo: Path) -> str:
    try:
        return git(repo, "rev-parse", "--verify", "HEAD^{commit}")
    except GitError:
        raise GitError("this repository has no commit yet: commit programs/ first (a night starts from HEAD)") from None


def resolve(repo: Path, rev: str) -> str | None:
    out = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    return out or None


def file_at(repo: Path, commit: str, path: str) -> bytes:
    return git_bytes(repo, "show", f"{commit}:{path}")


def has_file(repo: Path, commit: str, path: str) -> bool:
    return (
        subprocess.run(
            ["git", "cat-file", "-e", f"{commit}:{path}"], cwd=repo, env=_env(), capture_output=True
        ).returncode
        == 0
    )


def short(repo: Path, commit: str) -> str:
    return git(repo, "rev-parse", "--short=7", commit)


def experiment_ref(tag: str, n: int) -> str:
    return f"refs/autoresearch/{tag}/{n}"


def update_ref(repo: Path, ref: str, commit: str) -> None:
    git(repo, "update-ref", ref, commit)


def delete_ref(repo: Path, ref: str) -> None:
    git(repo, "update-ref", "-d", ref)


def experiment_refs(repo: Path, tag: str) -> dict[int, str]:
    """{n: full sha} of refs/autoresearch/<tag>/<n>."""
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", f"refs/autoresearch/{tag}/")
    refs: dict[int, str] = {}
    for line in out.splitlines():
        name, sha = line.split()
        last = name.rsplit("/", 1)[1]
        if last.isdigit():
            refs[int(last)] = sha
    return refs


def branch_name(tag: str) -> str:
    return f"autoresearch/{tag}"


def first_parent_chain(repo: Path, base: str, tip: str) -> list[str]:
    """Commits from base (inclusive) to tip along first parents, oldest first."""
    later = git(repo, "rev-list", "--first-parent", "--reverse", f"{base}..{tip}").split()
    return [base, *later]


def diff(repo: Path, a: str, b: str, path: str) -> str:
    return git(repo, "diff", "--no-color", "--no-ext-diff", a, b, "--", path)


def locally_modified(repo: Path, path: str) -> bool:
    return bool(git(repo, "status", "--porcelain", "--", path, check=False))


# -- the experiment worktree -----------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    reason: str  # one line: why the proposal was not committed


@dataclass(frozen=True)
class Worktree:
    repo: Path  # the user's checkout (shares refs and objects with the worktree)
    path: Path  # worktrees/<tag>
    tag: str
    train_rel: str  # programs/<program>/train.py

    @property
    def branch(self) -> str:
        return branch_name(self.tag)

    @property
    def train_py(self) -> Path:
        return self.path / self.train_rel

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def on_branch(self) -> bool:
        return git(self.path, "symbolic-ref", "--quiet", "HEAD", check=False) == f"refs/heads/{self.branch}"

    def reset_to(self, commit: str) -> None:
        """The worktree at `commit`, detached, everything else in it removed."""
        git(self.path, "checkout", "--force", "--quiet", "--detach", commit)
        git(self.path, "reset", "--hard", "--quiet", commit)
        git(self.path, "clean", "-ffdxq")

    def write_train_py(self, source: bytes) -> None:
        """Put `source` in train.py (e.g. a crashed version, for the agent to fix)."""
        if self.train_py.is_symlink():
            self.train_py.unlink()
        self.train_py.write_bytes(source)

    def changed_paths(self) -> list[str]:
        """Every path that differs from HEAD: staged, unstaged, untracked or ignored."""
        out = git_bytes(self.path, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored=matching")
        paths: list[str] = []
        entries = out.split(b"\0")
        i = 0
        while i < len(entries):
            entry = entries[i]
            i += 1
            if len(entry) < 4:
                continue
            paths.append(entry[3:].decode("utf-8", errors="replace"))
            if entry[:1] in (b"R", b"C"):  # renames carry the source path next
                paths.append(entries[i].decode("utf-8", errors="replace"))
                i += 1
        return paths

    def check_proposal(self, expected_head: str, previous: bytes | None = None) -> Refusal | None:
        """None when the worktree holds a committable proposal: HEAD untouched, only train.py
        changed, a regular file of sane size that differs from HEAD (and from `previous`, the
        crashed version a fix starts from) and compiles. Never runs the code."""
        if self.on_branch() or self.head() != expected_head:
            return Refusal("the branch or HEAD of the worktree was moved; only train.py may change")
        others = [p for p in self.changed_paths() if p != self.train_rel]
        if others:
            shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
            return Refusal(f"files other than {self.train_rel} changed: {shown}")
        try:
            st = os.lstat(self.train_py)
        except FileNotFoundError:
            return Refusal(f"{self.train_rel} was deleted")
        if not stat.S_ISREG(st.st_mode):
            return Refusal(f"{self.train_rel} is not a regular file (symlink or other)")
        if st.st_size > MAX_TRAIN_PY_BYTES:
            return Refusal(f"{self.train_rel} is {st.st_size} bytes, over the {MAX_TRAIN_PY_BYTES}-byte cap")
        source = self.train_py.read_bytes()
        if source == file_at(self.path, "HEAD", self.train_rel):
            return Refusal(f"{self.train_rel} is unchanged")
        if previous is not None and source == previous:
            return Refusal(f"{self.train_rel} is the same as the crashed version it was meant to fix")
        problem = compile_error(source)
        return Refusal(problem) if problem else None

    def commit_train_py(self, message: str, parent: str) -> str:
        """A commit of the worktree's train.py on top of `parent`, made with plumbing: no branch
        moves and HEAD stays where it is. Returns its sha."""
        st = os.lstat(self.train_py)
        if not stat.S_ISREG(st.st_mode):
            raise GitError(f"{self.train_rel} is not a regular file")
        return commit_file(self.repo, parent, self.train_rel, self.train_py.read_bytes(), message)


def commit_file(repo: Path, parent: str, path: str, content: bytes, message: str) -> str:
    """A new commit: `parent`'s tree with `path` set to `content` (a regular file), parent `parent`."""
    blob = git_bytes(repo, "hash-object", "-w", "--stdin", input=content).decode().strip()
    with tempfile.TemporaryDirectory(prefix="overnight-index-") as tmp:
        env_index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(repo, "read-tree", parent, env=env_index)
        git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env_index)
        tree = git(repo, "write-tree", env=env_index)
    return git(repo, "commit-tree", tree, "-p", parent, input=message.encode("utf-8"))


def merge_text(base: bytes, ours: bytes, theirs: bytes) -> bytes | None:
    """A three-way merge of one file (git merge-file): the merged bytes, or None on a conflict."""
    with tempfile.TemporaryDirectory(prefix="overnight-merge-") as tmp:
        paths = []
        for name, data in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / name
            path.write_bytes(data)
            paths.append(str(path))
        done = subprocess.run(["git", "merge-file", "-p", "--quiet", *paths], env=_env(), capture_output=True)
    if done.returncode < 0 or done.returncode > 127:
        raise GitError(f"git merge-file failed: {done.stderr.decode(errors='replace').strip()[:200]}")
    return done.stdout if done.returncode == 0 else None


def move_branch(repo: Path, branch: str, new: str, old: str) -> bool:
    """Move refs/heads/<branch> from `old` to `new` atomically; False when it is no longer at `old`."""
    done = subprocess.run(
        ["git", *_SAFE_CONFIG, "update-ref", f"refs/heads/{branch}", new, old],
        cwd=repo,
        env=_env(),
        capture_output=True,
    )
    return done.returncode == 0


def compile_error(source: bytes) -> str | None:
    """None when `source` may run as train.py (sandbox.trainpy: size, UTF-8, compiles, little
    embedded data); else one line saying why not."""
    try:
        check_train_py(source)
    except TrainPyRefused as exc:
        return str(exc)
    return None


def open_worktree(repo: Path, worktrees_dir: Path, tag: str, train_rel: str, base: str | None) -> Worktree:
    """The worktree of `tag`, created from `base` (the user's HEAD) on a new branch when there is
    none yet, or re-attached when the folder was removed. The user's checkout is not touched."""
    repo = repo_root(repo)
    path = (repo / worktrees_dir / tag) if not Path(worktrees_dir).is_absolute() else Path(worktrees_dir) / tag
    branch = branch_name(tag)
    exists = resolve(repo, f"refs/heads/{branch}") is not None
    wt = Worktree(repo=repo, path=path, tag=tag, train_rel=train_rel)
    if (path / ".git").exists():
        if git(path, "rev-parse", "--show-toplevel", check=False) != str(path.resolve()):
            raise GitError(f"{path} is not a git worktree of {repo}: move it away")
        return wt
    git(repo, "worktree", "prune")
    if not exists:
        if base is None:
            raise GitError(f"branch {branch} does not exist and no base commit was given")
        git(repo, "branch", branch, base)
    git(repo, "worktree", "add", "--force", "--quiet", "--detach", str(path), branch)
    return wt
