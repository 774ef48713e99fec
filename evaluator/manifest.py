"""manifest.json: what a data dir must contain, byte for byte, and the hash that names it.

Preparation writes the manifest last: the preparation's facts (profile, dataset, vocab_size,
bos_id, seq_len, created, source) plus the sha256 and size of every file under tokenizer/,
train/ and val/, and per split the number of documents, tokens and shards.

`verify_manifest(data_dir, splits)` checks the tokenizer files and the requested splits against
it (a split that is not requested may be absent, as in the train and eval containers, which
each see only their own split) and returns the data identity, `manifest_sha256`.

The identity is the sha256 of the manifest's canonical JSON (sorted keys, compact) WITHOUT the
`created` timestamp. Runs record it and replay refuses data with another identity; leaving the
timestamp out means re-preparing the same data (preparation is deterministic) gives the same
identity, so a replay on a fresh machine is not refused for the date alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evaluator.layout import (
    EVAL_DIR,
    EVAL_SCORED,
    EVAL_SPARE,
    MANIFEST,
    SHARD_GLOB,
    TOKEN_BYTES,
    TOKENIZER_DIR,
    TOKENIZER_JSON,
    TRAIN_DIR,
    VAL_DIR,
)

SPLITS = (TRAIN_DIR, VAL_DIR)
PARTS = (*SPLITS, EVAL_DIR)  # what verify_manifest can be asked to check, besides the tokenizer
HASHED_DIRS = (TOKENIZER_DIR, *SPLITS, EVAL_DIR)
MANIFEST_MAX_BYTES = 16 << 20
CHUNK_BYTES = 1 << 20
FIX = "re-run make prepare"


class ManifestError(ValueError):
    """A data dir that does not match its manifest; the message is one line for a person."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class SplitEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    docs: int = Field(ge=0)  # BOS-prefixed documents in the shards (long texts count per piece)
    tokens: int = Field(ge=0)
    shards: int = Field(ge=0)
    source_docs: int = Field(ge=0)  # texts read from the dataset


class EvalEntry(BaseModel):
    """The private eval sample: which rows exist is public, which val text they hold is not."""

    model_config = ConfigDict(extra="forbid")

    rows: int = Field(ge=1)  # scored rows (eval/scored.bin)
    spare_rows: int = Field(ge=0)  # probe rows (eval/spare.bin)
    row_tokens: int = Field(ge=2)  # seq_len + 1
    drawn_from: int = Field(ge=1)  # distinct packed val rows the sample was drawn from


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str
    dataset: str
    vocab_size: int
    bos_id: int
    seq_len: int
    created: str
    files: dict[str, FileEntry]
    splits: dict[str, SplitEntry]
    eval: EvalEntry
    source: dict[str, Any]

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in files:
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts or len(parts) != 2 or parts[0] not in HASHED_DIRS:
                raise ValueError(f"unexpected file path {name!r}")
        return files


def write_manifest(
    data_dir: Path,
    *,
    profile: str,
    dataset: str,
    vocab_size: int,
    bos_id: int,
    seq_len: int,
    splits: dict[str, SplitEntry],
    eval: EvalEntry,
    source: dict[str, Any],
) -> Manifest:
    """Hash every file of the data dir and write manifest.json; returns what was written."""
    data_dir = Path(data_dir)
    files = {}
    for folder in HASHED_DIRS:
        directory = data_dir / folder
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                relpath = f"{folder}/{path.name}"
                files[relpath] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
    manifest = Manifest(
        profile=profile,
        dataset=dataset,
        vocab_size=vocab_size,
        bos_id=bos_id,
        seq_len=seq_len,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        files=files,
        splits=splits,
        eval=eval,
        source=source,
    )
    text = json.dumps(manifest.model_dump(), indent=1, sort_keys=True) + "\n"
    (data_dir / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def read_manifest(data_dir: Path | str) -> Manifest:
    path = Path(data_dir) / MANIFEST
    try:
        raw = _read_regular(path, MANIFEST_MAX_BYTES)
    except FileNotFoundError:
        raise ManifestError(f"{path} is missing: run make prepare") from None
    except OSError as error:
        raise ManifestError(f"{path} cannot be read ({error.strerror or error}): {FIX}") from None
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as error:
        detail = error.errors()[0]
        where = ".".join(str(part) for part in detail["loc"]) or "top level"
        if detail["loc"] and detail["loc"][0] == "eval" and detail["type"] == "missing":
            raise ManifestError(
                f"{Path(data_dir)} was prepared before evaluation rows became a private "
                f"sample: prepare it again (make prepare, with --force)"
            ) from None
        raise ManifestError(f"{path} is not a valid manifest ({where}: {detail['msg']}): {FIX}") from None


def manifest_sha256(data_dir: Path | str) -> str:
    """The data identity: sha256 of the manifest's canonical JSON without `created`."""
    return identity_of(read_manifest(data_dir))


def identity_of(manifest: Manifest) -> str:
    record = manifest.model_dump()
    del record["created"]
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def verify_manifest(data_dir: Path | str, parts: Iterable[str]) -> str:
    """Check the tokenizer files and the given parts (train, val, eval); return the data identity.
    A part not asked for may be absent, as in the containers, which each see only their own."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    wanted = list(dict.fromkeys(parts))
    for part in wanted:
        if part not in PARTS:
            raise ManifestError(f"unknown part {part!r}: choose from {', '.join(PARTS)}")
        if part in SPLITS and part not in manifest.splits:
            raise ManifestError(f"{data_dir / MANIFEST} has no {part} split: {FIX}")
    required = [TOKENIZER_JSON, TOKEN_BYTES] + ([EVAL_SCORED, EVAL_SPARE] if EVAL_DIR in wanted else [])
    for name in required:
        if name not in manifest.files:
            raise ManifestError(f"{data_dir / MANIFEST} does not list {name}: {FIX}")
    for folder in (TOKENIZER_DIR, *wanted):
        _verify_folder(data_dir, folder, manifest)
        if folder in SPLITS:
            listed = sum(
                1 for name in manifest.files if name.startswith(f"{folder}/") and PurePosixPath(name).match(SHARD_GLOB)
            )
            if listed != manifest.splits[folder].shards:
                raise ManifestError(
                    f"{data_dir / MANIFEST} lists {listed} {folder} shards but "
                    f"counts {manifest.splits[folder].shards}: {FIX}"
                )
    return identity_of(manifest)


def _verify_folder(data_dir: Path, folder: str, manifest: Manifest) -> None:
    directory = data_dir / folder
    try:
        mode = os.lstat(directory).st_mode
    except FileNotFoundError:
        raise ManifestError(f"{directory} is missing: {FIX}") from None
    if not stat.S_ISDIR(mode):
        raise ManifestError(f"{directory} is not a directory: {FIX}")
    expected = {name: entry for name, entry in manifest.files.items() if name.startswith(f"{folder}/")}
    present = {f"{folder}/{name}" for name in os.listdir(directory)}
    for name in sorted(present - expected.keys()):
        raise ManifestError(f"{data_dir / name} is not in the manifest: remove it or {FIX}")
    for name, entry in sorted(expected.items()):
        path = data_dir / name
        if name not in present:
            raise ManifestError(f"{path} is missing: {FIX}")
        try:
            digest, size = _hash_regular(path)
        except OSError as error:
            raise ManifestError(f"{path} cannot be read as a regular file ({error.strerror or error}): {FIX}") from None
        if size != entry.bytes or digest != entry.sha256:
            raise ManifestError(f"{path} does not match its manifest hash: {FIX}")


def sha256_file(path: Path) -> str:
    return _hash_regular(path)[0]


def _hash_regular(path: Path) -> tuple[str, int]:
    """sha256 and size of a regular file, read in chunks; symlinks and non-files raise OSError."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _read_regular(path: Path, cap: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise OSError(f"{path} is larger than {cap} bytes")
    return data
