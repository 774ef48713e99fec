"""The dataloader packs BOS-aligned rows with no padding, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from evaluator import layout
from evaluator.dataloader import NotEnoughValidationData, documents, eval_rows, packed_rows
from evaluator.profiles import get_profile

BOS = 0


def make_stream(n_docs: int, seed: int = 0, max_len: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n_docs):
        parts.append([BOS, *rng.integers(1, 500, rng.integers(1, max_len)).tolist()])
    return np.array([t for p in parts for t in p], dtype=layout.TOKEN_DTYPE)


def test_rows_start_at_bos_and_are_full():
    tokens = make_stream(300)
    rows = list(packed_rows(tokens, BOS, 33))
    assert rows, "no rows packed"
    assert all(len(r) == 33 and r[0] == BOS for r in rows)


def test_rows_are_whole_documents_except_the_cropped_last_one():
    tokens = make_stream(300, seed=1)
    spans = {tuple(tokens[s:e].tolist()) for s, e in documents(tokens, BOS).tolist()}
    for row in packed_rows(tokens, BOS, 65):
        starts = np.flatnonzero(row == BOS).tolist() + [len(row)]
        pieces = [tuple(row[a:b].tolist()) for a, b in zip(starts, starts[1:])]
        assert all(p in spans for p in pieces[:-1])  # every piece but the last is a whole document
        assert any(d[: len(pieces[-1])] == pieces[-1] for d in spans)  # the last is a prefix


def test_packing_wastes_little():
    tokens = make_stream(2000, seed=2)
    rows = list(packed_rows(tokens, BOS, 129))
    used = len(rows) * 129
    assert used > 0.9 * len(tokens), f"packing used only {used / len(tokens):.0%} of the tokens"


def test_packing_is_deterministic_and_order_follows_doc_order():
    tokens = make_stream(400, seed=3)
    a = np.stack(list(packed_rows(tokens, BOS, 33)))
    b = np.stack(list(packed_rows(tokens, BOS, 33)))
    assert np.array_equal(a, b)
    order = np.random.default_rng(0).permutation(400)
    c = np.stack(list(packed_rows(tokens, BOS, 33, doc_order=order)))
    assert not np.array_equal(a[: len(c)], c[: len(a)])


def test_eval_rows_have_the_profile_shape_and_shifted_targets():
    profile = get_profile("test")
    tokens = make_stream(3000, seed=4, max_len=60)
    data = eval_rows(tokens, BOS, profile)
    B, T = profile.eval_batch_size, profile.seq_len
    assert data.inputs.shape == (profile.eval_batches, B, T)
    assert data.targets.shape == data.inputs.shape
    assert data.inputs.size == profile.eval_tokens
    assert np.array_equal(data.inputs[:, :, 1:], data.targets[:, :, :-1])
    assert data.spare.shape[1:] == (B, T)
    # the spare rows are other text than the scored rows
    scored = {r.tobytes() for r in data.inputs.reshape(-1, T)}
    assert not any(r.tobytes() in scored for r in data.spare.reshape(-1, T))


def test_too_little_validation_text_is_a_clear_error():
    with pytest.raises(NotEnoughValidationData, match="prepare with more validation text"):
        eval_rows(make_stream(10), BOS, get_profile("test"))


def test_train_batches_cover_epochs(test_data_dir):
    import torch

    from evaluator.dataloader import train_batches

    batches = train_batches(test_data_dir, batch_size=4, seq_len=64, seed=0)
    x, y, epoch = next(batches)
    assert x.shape == (4, 64) and y.shape == (4, 64) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and epoch == 0
    again = train_batches(test_data_dir, batch_size=4, seq_len=64, seed=0)
    assert torch.equal(next(again)[0], x)
