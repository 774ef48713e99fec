"""Rows of pre-tokenized text for training and evaluation.

Every row is BOS-aligned and packed with no padding: it starts at a document's BOS and is filled
with whole documents chosen best-fit from a small buffer; only when no buffered document fits the
space left is one cropped to fill the row exactly.

Shards are read through memory maps, one per shard, never concatenated (ClimbMix's ten train
shards are about 1.5 GB of tokens); documents are addressed as (shard, start, end), read from
train/docs.bin, which preparation writes once, or found by a BOS scan of each shard when a data
dir has no docs.bin. Training code sees train/ only. The scored eval rows are a private sample
that preparation stored in eval/ (evaluator.prepare), which only the eval container mounts.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right, insort
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evaluator import layout
from evaluator.profiles import Profile

if TYPE_CHECKING:
    import torch

PROBE_SPARE_BATCHES = 4  # batches of other real validation text kept for the causality probe


def load_shards(data_dir: Path, split: str) -> list[np.ndarray]:
    """One read-only memory map per shard of a split, in shard order."""
    paths = layout.shard_paths(Path(data_dir), split)
    if not paths:
        raise FileNotFoundError(f"no {split} shards in {data_dir}: run `make prepare` first")
    return [np.memmap(p, dtype=layout.TOKEN_DTYPE, mode="r") for p in paths]


def load_split(data_dir: Path, split: str) -> np.ndarray:
    """All tokens of one split in one array (small tools and tests; training never does this)."""
    shards = load_shards(data_dir, split)
    return shards[0] if len(shards) == 1 else np.concatenate(shards)


def shard_documents(shards: Sequence[np.ndarray], bos_id: int) -> np.ndarray:
    """(shard, start, end) of every document, found by scanning each shard for BOS (documents
    never cross shards). Used at preparation to write docs.bin, and for data dirs without it."""
    spans = []
    for index, tokens in enumerate(shards):
        starts = np.flatnonzero(np.asarray(tokens) == bos_id)
        ends = np.append(starts[1:], len(tokens))
        spans.append(np.stack([np.full(len(starts), index), starts, ends], axis=1))
    return np.concatenate(spans).astype(np.int64) if spans else np.zeros((0, 3), dtype=np.int64)


def load_documents(data_dir: Path, split: str, shards: Sequence[np.ndarray], bos_id: int) -> np.ndarray:
    path = Path(data_dir) / layout.TRAIN_DOCS if split == layout.TRAIN_DIR else None
    if path is not None and path.is_file():
        spans = np.fromfile(path, dtype=layout.DOCS_DTYPE)
        if spans.size % 3:
            raise ValueError(f"{path} is damaged: run `make prepare` again")
        return spans.reshape(-1, 3)
    return shard_documents(shards, bos_id)


def packed_rows(
    shards: Sequence[np.ndarray],
    spans: np.ndarray,
    row_len: int,
    buffer_docs: int = 256,
    doc_order: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """BOS-aligned rows of exactly row_len tokens, best-fit packed, in a deterministic order.

    spans: (N, 3) (shard, start, end) per document; doc_order, when given, is a permutation of
    them to draw from (a training epoch).
    """
    if doc_order is not None:
        spans = spans[doc_order]
    docs = (tuple(span) for span in spans.tolist())
    buffer: list[tuple[int, int, int, int]] = []  # (length, order, shard, start), sorted by length
    order = 0

    def refill() -> None:
        nonlocal order
        while len(buffer) < buffer_docs:
            nxt = next(docs, None)
            if nxt is None:
                return
            shard, start, end = nxt
            insort(buffer, (end - start, order, shard, start))
            order += 1

    while True:
        refill()
        if not buffer:
            return
        row = np.empty(row_len, dtype=np.int64)
        filled = 0
        while filled < row_len:
            refill()
            if not buffer:
                return  # the last partial row is dropped: rows are never padded
            space = row_len - filled
            i = bisect_right(buffer, (space, float("inf"), 0, 0)) - 1
            if i >= 0:  # the longest document that fits whole
                length, _, shard, start = buffer.pop(i)
                row[filled : filled + length] = shards[shard][start : start + length]
                filled += length
            else:  # nothing fits: crop the shortest document to fill the row
                _, _, shard, start = buffer.pop(0)
                row[filled:] = shards[shard][start : start + space]
                filled = row_len
        yield row


def _bos_id(data_dir: Path) -> int:
    from evaluator.tokenizer import bos_id

    return bos_id(data_dir)


# ---------------------------------------------------------------------------------------------
# Training


def train_batches(
    data_dir: Path,
    batch_size: int,
    seq_len: int,
    device: str = "cpu",
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Endless (inputs, targets, epoch) batches from the train split, shuffled per epoch by seed.

    On CUDA each batch is staged in its own pinned buffer from torch's caching host allocator and
    copied without blocking the host; the allocator does not hand a buffer out again until the
    copy that reads it has run, so the next batch can never overwrite one still in flight.
    """
    import torch

    shards = load_shards(data_dir, layout.TRAIN_DIR)
    spans = load_documents(data_dir, layout.TRAIN_DIR, shards, _bos_id(data_dir))
    row_len = seq_len + 1
    cuda = device.startswith("cuda")
    rng = np.random.default_rng(seed)
    epoch = 0
    while True:
        rows = packed_rows(shards, spans, row_len, doc_order=rng.permutation(len(spans)))
        yielded = False
        while True:
            batch_rows = [row for _, row in zip(range(batch_size), rows, strict=False)]
            if len(batch_rows) < batch_size:
                break
            host = torch.from_numpy(np.stack(batch_rows))
            batch = host.pin_memory().to(device, non_blocking=True) if cuda else host
            yielded = True
            yield batch[:, :-1], batch[:, 1:], epoch
        if not yielded:
            raise ValueError(
                f"the train split packs into fewer than {batch_size} rows of {row_len} tokens: "
                "prepare more data or use a smaller batch"
            )
        epoch += 1


# ---------------------------------------------------------------------------------------------
# Evaluation: the private sample written at preparation


@dataclass(frozen=True)
class EvalData:
    inputs: np.ndarray  # (n_batches, B, T) int64: exactly profile.eval_tokens input positions
    targets: np.ndarray  # (n_batches, B, T) int64: the next token of every input position
    spare: np.ndarray  # (k, B, T) int64: other real validation text, for the causality probe


class NotEnoughValidationData(ValueError):
    pass


def spare_rows_needed(profile: Profile) -> int:
    return PROBE_SPARE_BATCHES * profile.eval_batch_size


def read_rows(path: Path, rows: int, row_tokens: int) -> np.ndarray:
    """A (rows, row_tokens) uint16 file of exactly that size, as int64."""
    want = rows * row_tokens * np.dtype(layout.TOKEN_DTYPE).itemsize
    size = Path(path).stat().st_size
    if size != want:
        raise ValueError(f"{path} holds {size} bytes, expected {want}: prepare the data again")
    return np.fromfile(path, dtype=layout.TOKEN_DTYPE).astype(np.int64).reshape(rows, row_tokens)


def eval_data(data_dir: Path, profile: Profile) -> EvalData:
    """The scored rows and the probe's spare rows of a prepared data dir."""
    B, T = profile.eval_batch_size, profile.seq_len
    scored = read_rows(Path(data_dir) / layout.EVAL_SCORED, profile.eval_rows, T + 1)
    spare = read_rows(Path(data_dir) / layout.EVAL_SPARE, spare_rows_needed(profile), T + 1)
    scored = scored.reshape(profile.eval_batches, B, T + 1)
    spare = spare.reshape(PROBE_SPARE_BATCHES, B, T + 1)
    return EvalData(inputs=scored[..., :-1].copy(), targets=scored[..., 1:].copy(), spare=spare[..., :-1].copy())


def distinct_rows(rows: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The rows of a stream whose model input (every token but the last) was not seen in an earlier
    row: repeated boilerplate is drawn at most once, so no eval row is scored twice and a probe's
    spare row is never a scored one. Keyed on the input, not the whole row: two packed rows can
    share their first T tokens and differ only in the last (the stdlib split has such pairs).
    Keeps a 16-byte digest per distinct input."""
    seen: set[bytes] = set()
    for row in rows:
        digest = hashlib.blake2b(row[:-1].tobytes(), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            yield row


def sample_rows(rows: Iterator[np.ndarray], k: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A uniform sample of k rows from the stream, in one pass (reservoir sampling), and how many
    rows the stream had. The order of the sample is random too."""
    reservoir: list[np.ndarray] = []
    seen = 0
    for row in rows:
        if seen < k:
            reservoir.append(row)
        else:
            j = int(rng.integers(seen + 1))
            if j < k:
                reservoir[j] = row
        seen += 1
    if len(reservoir) < k:
        raise NotEnoughValidationData(f"the validation split packs into {seen} rows; {k} are needed")
    order = rng.permutation(k)
    return np.stack([reservoir[i] for i in order]), seen
