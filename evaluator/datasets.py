"""Where the text comes from: one small reader per dataset, each yielding a train and a val split.

Every dataset splits its documents into train and validation BY CONSTRUCTION (which file or
which content, never by position in a shuffled stream), and preparation additionally drops from
train any document whose exact text also occurs in validation.

`stdlib` -- the Python standard library of the interpreter running the preparation (the
  sysconfig `stdlib` path), `.py` files in sorted path order, `site-packages` skipped.
  Validation is the standard library's own test suite: every file with a `test`, `tests` or
  `idle_test` directory component in its path. Train is everything else. Why: the image the
  train container runs has the standard library but not its test suite (Debian ships the test
  suite as a separate package, libpython3.X-testsuite, which only the preparation needs), so the
  validation text is not readable by training code even though the library itself is.
`climbmix` -- parquet shards of karpathy/climbmix-400b-shuffle from the Hugging Face hub, as the
  original autoresearch uses: train is the first N shards (shard_00000.parquet, ...), validation
  is the last shard (shard_06542.parquet), pinned. The repo's `main` is resolved to a commit once,
  every shard is downloaded at that commit, bounded by and checked against the size and sha256
  (LFS object id) the hub's API publishes for it (evaluator/hub.py), and the commit and hashes go
  into the manifest. OVERNIGHT_HF_BASE_URL sets where shards are downloaded from (a mirror that
  serves the hub's paths), OVERNIGHT_HF_API_URL where their hashes are asked; both default to
  https://huggingface.co, and tests point them at a loopback server.
`parquet:<glob>` -- bring your own parquet files with a `text` column. A document goes to
  validation when the first 8 bytes of the sha256 of its UTF-8 text, as an integer, mod 100 is
  below 5 (about 5%): the split depends only on the content, so it does not change when files
  are added, reordered or renamed, and identical texts always land in the same split.
"""

from __future__ import annotations

import glob
import hashlib
import os
import platform
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from evaluator.download import DownloadJob, RetryPolicy, download_all
from evaluator.hub import HF_ENDPOINT, published_files, resolve_revision, resolve_url

STDLIB_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})

CLIMBMIX_REPO = "karpathy/climbmix-400b-shuffle"
CLIMBMIX_REVISION = "main"  # resolved to a commit once per preparation, recorded in the manifest
CLIMBMIX_VAL_SHARD = 6542  # the last shard of the repo, pinned as validation
CLIMBMIX_TRAIN_SHARDS = 10  # default number of train shards, as in the original
HF_BASE_URL_ENV = "OVERNIGHT_HF_BASE_URL"  # where shards are downloaded from: the hub or a mirror
HF_API_URL_ENV = "OVERNIGHT_HF_API_URL"  # where their hashes are asked: the hub
CACHE_DIR_ENV = "OVERNIGHT_CACHE_DIR"

PARQUET_VAL_PERCENT = 5
PARQUET_BATCH_ROWS = 1024

DEFAULT_RETRY = RetryPolicy()  # frozen: one shared default is safe


class DatasetError(ValueError):
    """Bad dataset input; the message is one line for a person."""


@dataclass(frozen=True)
class TextSource:
    """A dataset: two re-readable streams of documents plus facts for the manifest."""

    name: str
    read_train: Callable[[], Iterator[str]]
    read_val: Callable[[], Iterator[str]]
    facts: dict[str, Any] = field(default_factory=dict)


def open_dataset(
    spec: str,
    *,
    cache_dir: Path | None = None,
    train_shards: int = CLIMBMIX_TRAIN_SHARDS,
    retry: RetryPolicy = DEFAULT_RETRY,
    val: str | None = None,
) -> TextSource:
    """The dataset named by `spec`: stdlib, climbmix or parquet:<glob>; with `val`
    (parquet:<glob>), a private validation set replaces the dataset's own validation text."""
    if val is not None:
        return with_private_val(
            open_dataset_only(spec, cache_dir=cache_dir, train_shards=train_shards, retry=retry, val_needed=False), val
        )
    return open_dataset_only(spec, cache_dir=cache_dir, train_shards=train_shards, retry=retry)


def open_dataset_only(
    spec: str, *, cache_dir: Path | None, train_shards: int, retry: RetryPolicy, val_needed: bool = True
) -> TextSource:
    if spec == "stdlib":
        return stdlib_source()
    if spec == "climbmix":
        return climbmix_source(train_shards, cache_dir or default_cache_dir(), retry, with_val=val_needed)
    if spec.startswith("parquet:"):
        return parquet_glob_source(spec.removeprefix("parquet:"))
    raise DatasetError(f"unknown dataset {spec!r}: choose stdlib, climbmix or parquet:<glob>")


def with_private_val(source: TextSource, val: str) -> TextSource:
    """`source`'s train text with the user's own validation documents (all of them)."""
    if not val.startswith("parquet:") or not val.removeprefix("parquet:"):
        raise DatasetError(f"--val takes parquet:<glob> (files with a text column), not {val!r}")
    files = _parquet_files(val.removeprefix("parquet:"))
    return TextSource(
        name=f"{source.name}+val:{val.removeprefix('parquet:')}",
        read_train=source.read_train,
        read_val=partial(read_parquet_texts, files),
        facts={
            **source.facts,
            "val_files": [path.name for path in files],
            "val_rule": "every document of the private validation files",
        },
    )


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "overnight"


# ---------------------------------------------------------------------------------------------
# stdlib


def stdlib_source(root: Path | None = None) -> TextSource:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DatasetError(f"the standard library directory {root} does not exist")
    train_files, val_files = stdlib_files(root)
    if not val_files:
        version = f"{platform.python_version_tuple()[0]}.{platform.python_version_tuple()[1]}"
        raise DatasetError(
            f"no standard-library test files under {root}: the stdlib dataset validates on "
            f"them; install the test suite for preparation (on Debian/Ubuntu: "
            f"apt-get install libpython{version}-testsuite) or use --dataset parquet:<glob>"
        )
    return TextSource(
        name="stdlib",
        read_train=partial(_read_text_files, train_files),
        read_val=partial(_read_text_files, val_files),
        facts={
            "kind": "stdlib",
            "python": platform.python_version(),
            "root": str(root),
            "train_files": len(train_files),
            "val_files": len(val_files),
            "val_rule": "path has a test, tests or idle_test directory",
        },
    )


def stdlib_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(train, val) .py files under `root`, each in sorted relative-path order."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow directory symlinks
        dirnames[:] = [name for name in dirnames if name not in STDLIB_SKIP_DIRS]
        for name in filenames:
            path = Path(dirpath) / name
            if name.endswith(".py") and path.is_file() and not path.is_symlink():
                found.append((path.relative_to(root).as_posix(), path))
    found.sort()
    train: list[Path] = []
    val: list[Path] = []
    for relative, path in found:
        is_test = not STDLIB_TEST_DIRS.isdisjoint(relative.split("/")[:-1])
        (val if is_test else train).append(path)
    return train, val


def _read_text_files(paths: Sequence[Path]) -> Iterator[str]:
    """Each file's text; files that are not valid UTF-8 (a few deliberate test cases) are skipped."""
    for path in paths:
        try:
            yield path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue


# ---------------------------------------------------------------------------------------------
# parquet


def _parquet_files(pattern: str) -> list[Path]:
    if not pattern:
        raise DatasetError("parquet: needs a glob, e.g. --dataset 'parquet:data/raw/*.parquet'")
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [path for path in files if path.is_file()]
    if not files:
        raise DatasetError(
            f"no files match {pattern!r}: give parquet:<glob> a pattern that matches parquet files with a text column"
        )
    for path in files:
        check_text_parquet(path)
    return files


def parquet_glob_source(pattern: str) -> TextSource:
    files = _parquet_files(pattern)
    return TextSource(
        name=f"parquet:{pattern}",
        read_train=partial(_hash_split, files, want_val=False),
        read_val=partial(_hash_split, files, want_val=True),
        facts={
            "kind": "parquet",
            "glob": pattern,
            "files": [path.name for path in files],
            "val_rule": f"sha256(text)[:8] mod 100 < {PARQUET_VAL_PERCENT}",
        },
    )


def check_text_parquet(path: Path) -> None:
    """Raise DatasetError unless `path` is a readable parquet file with a string `text` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.ParquetFile(path).schema_arrow
    except (pa.ArrowException, OSError, ValueError) as error:
        raise DatasetError(f"{path} is not a readable parquet file ({_first_line(error)})") from None
    if "text" not in schema.names:
        columns = ", ".join(schema.names) or "none"
        raise DatasetError(
            f"{path} has no 'text' column (columns: {columns}): "
            "the parquet datasets read documents from a string column named text"
        )
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DatasetError(f"{path}: column 'text' has type {kind}, expected string")


def verify_parquet(path: Path) -> None:
    """A download check: the file parses as parquet (raises ValueError otherwise)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ValueError(f"not a parquet file ({_first_line(error)})") from None
    if metadata.num_columns == 0:
        raise ValueError("parquet file without columns")


def read_parquet_texts(paths: Sequence[Path]) -> Iterator[str]:
    import pyarrow.parquet as pq

    for path in paths:
        try:
            reader = pq.ParquetFile(path)
            for batch in reader.iter_batches(columns=["text"], batch_size=PARQUET_BATCH_ROWS):
                for text in batch.column(0).to_pylist():
                    if text:
                        yield text
        except (OSError, ValueError) as error:
            raise DatasetError(f"{path} could not be read ({_first_line(error)})") from None


def is_val_text(text: str) -> bool:
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < PARQUET_VAL_PERCENT


def _hash_split(paths: Sequence[Path], want_val: bool) -> Iterator[str]:
    for text in read_parquet_texts(paths):
        if is_val_text(text) == want_val:
            yield text


# ---------------------------------------------------------------------------------------------
# climbmix


def climbmix_source(train_shards: int, cache_dir: Path, retry: RetryPolicy, with_val: bool = True) -> TextSource:
    if not 1 <= train_shards <= CLIMBMIX_VAL_SHARD:
        raise DatasetError(f"--train-shards must be between 1 and {CLIMBMIX_VAL_SHARD}, got {train_shards}")
    base_url, api_url = hub_address(HF_BASE_URL_ENV), hub_address(HF_API_URL_ENV)
    shard_dir = Path(cache_dir) / "climbmix"
    train_names = [climbmix_shard_name(index) for index in range(train_shards)]
    val_names = [climbmix_shard_name(CLIMBMIX_VAL_SHARD)] if with_val else []
    names = val_names + train_names
    commit = resolve_revision(api_url, CLIMBMIX_REPO, CLIMBMIX_REVISION, retry)
    published = published_files(api_url, CLIMBMIX_REPO, commit, names, retry)
    jobs = [
        DownloadJob(
            resolve_url(base_url, CLIMBMIX_REPO, commit, name),
            shard_dir / name,
            sha256=published[name].sha256,
            size=published[name].size,
        )
        for name in names
    ]
    paths = download_all(jobs, retry, verify=verify_parquet)
    for path in paths:
        check_text_parquet(path)
    val_paths, train_paths = paths[: len(val_names)], paths[len(val_names) :]
    return TextSource(
        name="climbmix",
        read_train=partial(read_parquet_texts, train_paths),
        read_val=partial(read_parquet_texts, val_paths),
        facts={
            "kind": "climbmix",
            "repo": CLIMBMIX_REPO,
            "revision": commit,
            "train_files": train_names,
            "val_files": val_names,
            "sha256": {name: published[name].sha256 for name in names},
            "val_rule": "the repo's last shard, pinned",
        },
    )


def hub_address(variable: str) -> str:
    """The hub address set in `variable` (default: the hub itself), without a trailing slash."""
    value = (os.environ.get(variable) or HF_ENDPOINT).rstrip("/")
    if not value.startswith(("http://", "https://")) or "/resolve/" in value or "/api/" in value:
        raise DatasetError(
            f"{variable} must be a hub address such as {HF_ENDPOINT} (a mirror "
            "serving the hub's paths), without /resolve/ or /api/ in it"
        )
    return value


def climbmix_shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
