"""controller/git.py against real git in temporary repositories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from controller_fakes import TOY_TRAIN_PY, git, make_repo

from controller import git as g

TRAIN = "programs/default/train.py"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def wt(repo: Path) -> g.Worktree:
    return g.open_worktree(repo, Path("worktrees"), "t1", TRAIN, g.head_commit(repo))


def test_worktree_is_a_new_branch_from_head_and_leaves_the_checkout_alone(repo: Path, wt: g.Worktree) -> None:
    head = git(repo, "rev-parse", "HEAD")
    assert wt.path == repo / "worktrees" / "t1"
    # detached at the branch's commit: the agent's checkout never holds the branch, the controller moves it
    assert not wt.on_branch() and wt.head() == head
    assert git(repo, "rev-parse", "autoresearch/t1") == head
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"  # the user's checkout did not move
    assert git(repo, "status", "--porcelain") == ""
    again = g.open_worktree(repo, Path("worktrees"), "t1", TRAIN, None)  # reopening finds the same one
    assert again.path == wt.path and again.head() == head


def test_a_removed_worktree_folder_is_reattached_to_its_branch(repo: Path, wt: g.Worktree) -> None:
    wt.train_py.write_text(TOY_TRAIN_PY.replace("LR = 0.001", "LR = 0.002"))
    commit = wt.commit_train_py("LR 0.002", wt.head())
    assert g.move_branch(repo, wt.branch, commit, wt.head())
    import shutil

    shutil.rmtree(wt.path)
    again = g.open_worktree(repo, Path("worktrees"), "t1", TRAIN, None)
    assert again.head() == commit and not again.on_branch()


def test_a_repository_without_commits_is_a_clear_error(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    with pytest.raises(g.GitError, match="no commit yet"):
        g.head_commit(tmp_path)


def test_commit_uses_the_controller_identity_and_touches_only_train_py(repo: Path, wt: g.Worktree) -> None:
    base = wt.head()
    wt.train_py.write_text(TOY_TRAIN_PY.replace("LR = 0.001", "LR = 0.01"))
    assert wt.check_proposal(base) is None
    commit = wt.commit_train_py("LR 0.01\n\nOvernight-Experiment: 1\n", base)
    assert (
        git(repo, "log", "-1", "--format=%an <%ae>|%cn|%s", commit)
        == "overnight <overnight@localhost>|overnight|LR 0.01"
    )
    assert git(repo, "diff", "--name-only", base, commit) == TRAIN
    assert git(repo, "rev-parse", f"{commit}^") == base
    # plumbing: neither the branch, nor the worktree's HEAD, nor the user's index moved
    assert git(repo, "rev-parse", "autoresearch/t1") == base and wt.head() == base
    assert git(repo, "status", "--porcelain") == ""


def test_refs_keep_every_experiment(repo: Path, wt: g.Worktree) -> None:
    base = wt.head()
    wt.train_py.write_text(TOY_TRAIN_PY + "\nX = 1\n")
    commit = wt.commit_train_py("x", base)
    g.update_ref(repo, g.experiment_ref("t1", 0), base)
    g.update_ref(repo, g.experiment_ref("t1", 1), commit)
    wt.reset_to(base)  # discard: the branch forgets it, the ref keeps it
    assert wt.head() == base
    assert g.experiment_refs(repo, "t1") == {0: base, 1: commit}
    assert g.file_at(repo, commit, TRAIN).endswith(b"X = 1\n")
    g.delete_ref(repo, g.experiment_ref("t1", 1))
    assert g.experiment_refs(repo, "t1") == {0: base}


def test_reset_removes_every_other_change(wt: g.Worktree) -> None:
    base = wt.head()
    wt.train_py.write_text("broken(")
    (wt.path / "new.txt").write_text("x")
    (wt.path / "README.md").write_text("changed")
    os.makedirs(wt.path / "__pycache__")
    (wt.path / "__pycache__" / "x.pyc").write_bytes(b"\0")
    wt.reset_to(base)
    assert wt.changed_paths() == []
    assert wt.train_py.read_text() == TOY_TRAIN_PY


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda wt: (wt.path / "README.md").write_text("edited\n"),
            "files other than programs/default/train.py changed: README.md",
        ),
        (lambda wt: (wt.path / "evaluator.py").write_text("x = 1\n"), "changed: evaluator.py"),
        (lambda wt: (wt.path / "programs/default/program.md").unlink(), "changed: programs/default/program.md"),
        (lambda wt: (wt.path / "runs").mkdir() or (wt.path / "runs" / "x").write_text("1"), "changed: runs/"),
        (lambda wt: (wt.path / "programs/default/helper.py").write_text("y = 2\n"), "helper.py"),
    ],
)
def test_only_train_py_may_change(wt: g.Worktree, change, reason: str) -> None:
    base = wt.head()
    wt.train_py.write_text(TOY_TRAIN_PY.replace("DEPTH = 4", "DEPTH = 5"))
    change(wt)
    refusal = wt.check_proposal(base)
    assert refusal is not None and reason in refusal.reason


def test_staged_changes_to_other_files_are_refused(repo: Path, wt: g.Worktree) -> None:
    base = wt.head()
    wt.train_py.write_text(TOY_TRAIN_PY.replace("DEPTH = 4", "DEPTH = 5"))
    (wt.path / "README.md").write_text("staged\n")
    git(wt.path, "add", "README.md")
    assert "README.md" in wt.check_proposal(base).reason


def test_a_moved_branch_is_refused(wt: g.Worktree) -> None:
    base = wt.head()
    wt.train_py.write_text(TOY_TRAIN_PY + "\nY = 2\n")
    git(wt.path, "commit", "-qam", "agent committed by itself")
    wt.train_py.write_text(TOY_TRAIN_PY + "\nY = 3\n")
    assert "was moved" in wt.check_proposal(base).reason


def test_a_symlinked_train_py_is_refused(tmp_path: Path, wt: g.Worktree) -> None:
    base = wt.head()
    target = tmp_path / "elsewhere.py"
    target.write_text("print('hi')\n")
    wt.train_py.unlink()
    wt.train_py.symlink_to(target)
    assert "not a regular file" in wt.check_proposal(base).reason


def test_unchanged_and_too_big_are_refused(wt: g.Worktree) -> None:
    base = wt.head()
    assert "unchanged" in wt.check_proposal(base).reason
    wt.train_py.write_text("#" * (g.MAX_TRAIN_PY_BYTES + 1))
    assert "byte cap" in wt.check_proposal(base).reason


def test_a_fix_that_changes_nothing_is_refused(wt: g.Worktree) -> None:
    base = wt.head()
    crashed = (TOY_TRAIN_PY + "\nCRASH = 1\n").encode()
    wt.write_train_py(crashed)
    assert "same as the crashed version" in wt.check_proposal(base, previous=crashed).reason


def test_non_compiling_edit_is_refused_without_running_it(tmp_path: Path, wt: g.Worktree) -> None:
    base = wt.head()
    marker = tmp_path / "ran"
    # Valid code would create the marker if it were ever executed; the syntax error comes after.
    wt.train_py.write_text(f"open({str(marker)!r}, 'w').write('x')\ndef broken(:\n")
    refusal = wt.check_proposal(base)
    assert refusal is not None and refusal.reason.startswith("train.py does not compile: invalid syntax (line 2)")
    assert not marker.exists()
    # And code that compiles is not executed by the check either.
    wt.train_py.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    assert wt.check_proposal(base) is None
    assert not marker.exists()


def test_compile_error_messages() -> None:
    assert g.compile_error(b"x = 1\n") is None
    assert "not UTF-8" in g.compile_error(b"x = '\xff'\n")
    assert "does not compile" in g.compile_error(b"return 5\n")  # compile-time, not parse-time, error


def test_a_change_made_on_an_old_best_is_merged_onto_the_new_one() -> None:
    base = TOY_TRAIN_PY.encode()
    new_best = base.replace(b"WIDTH = 64", b"WIDTH = 96")
    change = base.replace(b"LR = 0.001", b"LR = 0.01")
    merged = g.merge_text(base, new_best, change)
    assert merged is not None and b"WIDTH = 96" in merged and b"LR = 0.01" in merged
    assert g.merge_text(base, new_best, new_best) == new_best  # the same change on both sides
    both = base.replace(b"WIDTH = 64", b"WIDTH = 32")  # the same line changed both ways: a conflict
    assert g.merge_text(base, new_best, both) is None
    # git's rule: changes to adjacent lines conflict too (the agent proposes again on the new best)
    assert g.merge_text(base, new_best, base.replace(b"DEPTH = 4", b"DEPTH = 6")) is None


def test_moving_the_branch_is_compare_and_swap(repo: Path, wt: g.Worktree) -> None:
    base = wt.head()
    wt.train_py.write_text(TOY_TRAIN_PY + "\nA = 1\n")
    first = wt.commit_train_py("a", base)
    second = g.commit_file(repo, base, TRAIN, (TOY_TRAIN_PY + "\nB = 1\n").encode(), "b")
    assert g.move_branch(repo, wt.branch, first, base)
    assert not g.move_branch(repo, wt.branch, second, base)  # the branch is no longer at base: refused
    assert git(repo, "rev-parse", "autoresearch/t1") == first


def test_the_agent_checking_out_the_branch_is_refused(wt: g.Worktree) -> None:
    base = wt.head()
    git(wt.path, "checkout", "-q", wt.branch)  # attached HEAD: a commit would move the branch
    wt.train_py.write_text(TOY_TRAIN_PY + "\nC = 1\n")
    assert "was moved" in wt.check_proposal(base).reason
