"""Rows of pre-tokenized text for training and evaluation.

Every row is BOS-aligned and packed with no padding: it starts at a document's BOS and is filled
with whole documents chosen best-fit from a small buffer; only when no buffered document fits the
space left is one cropped to fill the row exactly. Shards are read through a memory map.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluator import layout
from evaluator.profiles import Profile

PROBE_SPARE_BATCHES = 4  # batches of other real validation text kept for the causality probe


def load_split(data_dir: Path, split: str) -> np.ndarray:
    """All tokens of one split, in shard order (a memory map when there is one shard)."""
    paths = layout.shard_paths(Path(data_dir), split)
    if not paths:
        raise FileNotFoundError(f"no {split} shards in {data_dir}: run `make prepare` first")
    maps = [np.memmap(p, dtype=layout.TOKEN_DTYPE, mode="r") for p in paths]
    return maps[0] if len(maps) == 1 else np.concatenate(maps)


def documents(tokens: np.ndarray, bos_id: int) -> np.ndarray:
    """(start, end) of every document as an (N, 2) array; documents start at BOS."""
    starts = np.flatnonzero(tokens == bos_id)
    ends = np.append(starts[1:], len(tokens))
    return np.stack([starts, ends], axis=1)


def packed_rows(
    tokens: np.ndarray,
    bos_id: int,
    row_len: int,
    buffer_docs: int = 256,
    doc_order: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """BOS-aligned rows of exactly row_len tokens, best-fit packed, in a deterministic order.

    doc_order, when given, is a permutation of the documents to draw from (a training epoch).
    """
    spans = documents(tokens, bos_id)
    if doc_order is not None:
        spans = spans[doc_order]
    docs = (tuple(span) for span in spans.tolist())
    buffer: list[tuple[int, int, int]] = []  # (length, start, order), sorted by length
    order = 0

    def refill() -> None:
        nonlocal order
        while len(buffer) < buffer_docs:
            nxt = next(docs, None)
            if nxt is None:
                return
            insort(buffer, (nxt[1] - nxt[0], nxt[0], order))
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
            i = bisect_right(buffer, (space, float("inf"), 0)) - 1
            if i >= 0:  # the longest document that fits whole
                length, start, _ = buffer.pop(i)
                row[filled : filled + length] = tokens[start : start + length]
                filled += length
            else:  # nothing fits: crop the shortest document to fill the row
                length, start, _ = buffer.pop(0)
                row[filled:] = tokens[start : start + space]
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
) -> Iterator[tuple["torch.Tensor", "torch.Tensor", int]]:
    """Endless (inputs, targets, epoch) batches from the train split, shuffled per epoch by seed.

    On CUDA the batch is staged in pinned memory and copied without blocking the host.
    """
    import torch

    tokens = load_split(data_dir, layout.TRAIN_DIR)
    bos = _bos_id(data_dir)
    n_docs = len(documents(tokens, bos))
    row_len = seq_len + 1
    cuda = device.startswith("cuda")
    staging = torch.empty((batch_size, row_len), dtype=torch.int64, pin_memory=cuda)
    rng = np.random.default_rng(seed)
    epoch = 0
    while True:
        rows = packed_rows(tokens, bos, row_len, doc_order=rng.permutation(n_docs))
        yielded = False
        while True:
            batch_rows = [row for _, row in zip(range(batch_size), rows)]
            if len(batch_rows) < batch_size:
                break
            staging.copy_(torch.from_numpy(np.stack(batch_rows)))
            batch = staging.to(device, non_blocking=True) if cuda else staging.clone()
            yielded = True
            yield batch[:, :-1], batch[:, 1:], epoch
        if not yielded:
            raise ValueError(
                f"the train split packs into fewer than {batch_size} rows of {row_len} tokens: "
                "prepare more data or use a smaller batch"
            )
        epoch += 1


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class EvalData:
    inputs: np.ndarray  # (n_batches, B, T) int64: exactly profile.eval_tokens input positions
    targets: np.ndarray  # (n_batches, B, T) int64: the next token of every input position
    spare: np.ndarray  # (k, B, T) int64: other real validation text, for the causality probe


class NotEnoughValidationData(ValueError):
    pass


def eval_rows(val_tokens: np.ndarray, bos_id: int, profile: Profile) -> EvalData:
    """The fixed evaluation set: the first packed rows of the validation split, then spare rows."""
    B, T = profile.eval_batch_size, profile.seq_len
    n_batches = profile.eval_batches
    needed = (n_batches + PROBE_SPARE_BATCHES) * B
    rows = []
    for row in packed_rows(val_tokens, bos_id, T + 1):
        rows.append(row)
        if len(rows) == needed:
            break
    if len(rows) < needed:
        raise NotEnoughValidationData(
            f"the validation split packs into {len(rows)} rows of {T + 1} tokens; profile "
            f"{profile.name!r} needs {needed}: prepare with more validation text"
        )
    data = np.stack(rows).reshape(n_batches + PROBE_SPARE_BATCHES, B, T + 1)
    scored, spare = data[:n_batches], data[n_batches:]
    return EvalData(inputs=scored[..., :-1].copy(), targets=scored[..., 1:].copy(), spare=spare[..., :-1].copy())


def eval_batches(data_dir: Path, profile: Profile) -> EvalData:
    return eval_rows(load_split(data_dir, layout.VAL_DIR), _bos_id(data_dir), profile)
