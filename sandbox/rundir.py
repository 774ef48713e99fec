"""The run folder: what the host makes before the jobs start, and where things land.

<run_dir>/
  train.py          the exact script that ran (mounted read-only into the train job)
  train.log         the train job's output, streamed live, capped
  eval.log          the eval job's output (fixed lines only), streamed live, capped
  model.pt2         the host's checked copy of the train job's /out/model.pt2 (eval reads it)
  score.json        the validated score record, written by the host
  rowloss.bin       the nats and bytes of every eval row (evaluator.rowloss), checked against it
  eval-detail.log   the evaluator's private detail log (tracebacks): no agent tool reads it
  nvml.jsonl        GPU samples (GPU runs)
Nothing else a job wrote ever reaches the host: its writable folder is a volume that is
removed with the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluator import layout
from evaluator.hostile import UnsafeFileError, read_regular
from evaluator.rowloss import ROWLOSS_FILE
from sandbox.errors import SandboxError
from sandbox.trainpy import TrainPyRefused, check_train_py

DETAIL_LOG = "eval-detail.log"
RUN_FILES = (
    "train.py",
    "train.log",
    "eval.log",
    layout.ARTIFACT_NAME,
    layout.SCORE_NAME,
    ROWLOSS_FILE,
    DETAIL_LOG,
    "nvml.jsonl",
    "preflight.log",
)  # preflight.log: sandbox.preflight


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path

    @property
    def train_py(self) -> Path:
        return self.run_dir / "train.py"

    @property
    def train_log(self) -> Path:
        return self.run_dir / "train.log"

    @property
    def eval_log(self) -> Path:
        return self.run_dir / "eval.log"

    @property
    def artifact(self) -> Path:
        return self.run_dir / layout.ARTIFACT_NAME

    @property
    def score_json(self) -> Path:
        return self.run_dir / layout.SCORE_NAME

    @property
    def row_losses(self) -> Path:
        return self.run_dir / ROWLOSS_FILE

    @property
    def preflight_log(self) -> Path:
        return self.run_dir / "preflight.log"

    @property
    def detail_log(self) -> Path:
        return self.run_dir / DETAIL_LOG

    @property
    def nvml_jsonl(self) -> Path:
        return self.run_dir / "nvml.jsonl"


def check_data_dir(data_dir: Path) -> Path:
    data_dir = Path(data_dir).resolve()
    missing = [
        name
        for name in (layout.MANIFEST, layout.TOKENIZER_DIR, layout.TRAIN_DIR, layout.EVAL_DIR)
        if not (data_dir / name).exists()
    ]
    if missing:
        hint = (
            " (it was prepared before eval rows became a private sample: prepare it again with --force)"
            if missing == [layout.EVAL_DIR]
            else ""
        )
        raise SandboxError(f"{data_dir} is not a prepared data dir (no {missing[0]}){hint}: run `make prepare` first")
    return data_dir


PREFLIGHT_LOG = "preflight.log"


def prepare_run_dir(run_dir: Path, train_py: Path, train_py_max_bytes: int, keep: tuple[str, ...] = ()) -> RunPaths:
    """Make the run folder with the checked copy of train.py; remove what an earlier attempt of
    the same run left (known file names only, never recursively), except the names in `keep`
    (the experiment keeps the log of the preflight that let it through)."""
    paths = RunPaths(Path(run_dir).resolve())
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    source = Path(train_py).absolute()  # the last component is not resolved: no symlinks
    try:
        text = read_regular(source, train_py_max_bytes)
        check_train_py(text)
    except (UnsafeFileError, TrainPyRefused, OSError) as exc:
        raise SandboxError(f"cannot use {train_py} as train.py: {exc}") from None
    for name in RUN_FILES:
        if name in keep:
            continue
        stale = paths.run_dir / name
        if stale.is_symlink() or stale.exists():
            if not (stale == paths.train_py and source == paths.train_py):
                stale.unlink()
    if source != paths.train_py:
        paths.train_py.write_bytes(text)
    paths.train_py.chmod(0o644)
    return paths
