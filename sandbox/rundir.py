"""The run folder: what the host makes before the containers start, and where things land.

<run_dir>/
  train.py     the exact script that ran (mounted read-only into the train container)
  train.log    the train container's output, streamed live
  eval.log     the eval container's output, streamed live
  out/         the train container's /out (owned by the container user); hostile afterwards
  artifact/    a fresh folder with the host's checked copy of out/model.pt2 (eval's /artifact)
  score/       the eval container's /score; score.json there is read as hostile input too
  score.json   the validated score record, written by the host
  nvml.jsonl   GPU samples (GPU runs)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from evaluator import layout
from sandbox.errors import SandboxError
from sandbox.hostile import HostileFileError, read_regular

CONTAINER_UID = CONTAINER_GID = 1000


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path

    @property
    def train_py(self) -> Path:
        return self.run_dir / "train.py"

    @property
    def out_dir(self) -> Path:
        return self.run_dir / "out"

    @property
    def artifact_dir(self) -> Path:
        return self.run_dir / "artifact"

    @property
    def score_dir(self) -> Path:
        return self.run_dir / "score"

    @property
    def train_log(self) -> Path:
        return self.run_dir / "train.log"

    @property
    def eval_log(self) -> Path:
        return self.run_dir / "eval.log"

    @property
    def score_json(self) -> Path:
        return self.run_dir / layout.SCORE_NAME

    @property
    def nvml_jsonl(self) -> Path:
        return self.run_dir / "nvml.jsonl"


def _fresh_dir(path: Path, owner_is_container: bool) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)  # fd-based on Linux: does not follow symlinks inside
    path.mkdir(mode=0o755)
    if not owner_is_container:
        return
    if os.geteuid() == 0:
        os.chown(path, CONTAINER_UID, CONTAINER_GID)
    elif os.geteuid() != CONTAINER_UID:
        path.chmod(0o777)  # a non-root host user: the container user must still write here


def check_data_dir(data_dir: Path) -> Path:
    data_dir = Path(data_dir).resolve()
    missing = [name for name in (layout.MANIFEST, layout.TOKENIZER_DIR, layout.TRAIN_DIR,
                                 layout.VAL_DIR) if not (data_dir / name).exists()]
    if missing:
        raise SandboxError(f"{data_dir} is not a prepared data dir (no {missing[0]}): "
                           "run `make prepare` first")
    return data_dir


def prepare_run_dir(run_dir: Path, train_py: Path, train_py_max_bytes: int) -> RunPaths:
    """Make the run folder: a copy of train.py, fresh out/ and score/ for the container user,
    a fresh artifact/ for the host. Leftovers of an earlier attempt are removed first."""
    paths = RunPaths(Path(run_dir).resolve())
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    source = Path(train_py).absolute()  # the last component is not resolved: no symlinks
    try:
        text = read_regular(source.parent, source.name, train_py_max_bytes)
    except (HostileFileError, OSError) as exc:
        raise SandboxError(f"cannot use {train_py} as train.py: {exc}") from None
    if source != paths.train_py:
        if paths.train_py.is_symlink():
            paths.train_py.unlink()
        paths.train_py.write_bytes(text)
    paths.train_py.chmod(0o644)
    _fresh_dir(paths.out_dir, owner_is_container=True)
    _fresh_dir(paths.score_dir, owner_is_container=True)
    _fresh_dir(paths.artifact_dir, owner_is_container=False)
    for stale in (paths.score_json, paths.nvml_jsonl):
        stale.unlink(missing_ok=True)
    return paths
