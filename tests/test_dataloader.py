"""The dataloader packs BOS-aligned rows with no padding, deterministically, from per-shard memory
maps (never one concatenated split), and reads the private eval sample that preparation drew."""

from __future__ import annotations

import numpy as np
import pytest

from evaluator import layout
from evaluator.dataloader import (
    NotEnoughValidationData,
    distinct_rows,
    eval_data,
    load_documents,
    load_shards,
    packed_rows,
    sample_rows,
    shard_documents,
)
from evaluator.profiles import get_profile

BOS = 0


def make_stream(n_docs: int, seed: int = 0, max_len: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n_docs):
        parts.append([BOS, *rng.integers(1, 500, rng.integers(1, max_len)).tolist()])
    return np.array([t for p in parts for t in p], dtype=layout.TOKEN_DTYPE)


def one_shard(tokens: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    return [tokens], shard_documents([tokens], BOS)


def test_rows_start_at_bos_and_are_full():
    rows = list(packed_rows(*one_shard(make_stream(300)), 33))
    assert rows, "no rows packed"
    assert all(len(r) == 33 and r[0] == BOS for r in rows)


def test_rows_are_whole_documents_except_the_cropped_last_one():
    tokens = make_stream(300, seed=1)
    shards, spans = one_shard(tokens)
    docs = {tuple(tokens[s:e].tolist()) for _, s, e in spans.tolist()}
    for row in packed_rows(shards, spans, 65):
        starts = np.flatnonzero(row == BOS).tolist() + [len(row)]
        pieces = [tuple(row[a:b].tolist()) for a, b in zip(starts, starts[1:], strict=False)]
        assert all(p in docs for p in pieces[:-1])  # every piece but the last is a whole document
        assert any(d[: len(pieces[-1])] == pieces[-1] for d in docs)  # the last is a prefix


def test_packing_wastes_little():
    tokens = make_stream(2000, seed=2)
    rows = list(packed_rows(*one_shard(tokens), 129))
    assert len(rows) * 129 >= 0.9 * len(tokens)


def test_packing_is_deterministic_and_follows_the_document_order():
    shards, spans = one_shard(make_stream(300, seed=3))
    a = np.stack(list(packed_rows(shards, spans, 33)))
    b = np.stack(list(packed_rows(shards, spans, 33)))
    assert np.array_equal(a, b)
    order = np.random.default_rng(0).permutation(len(spans))
    c = np.stack(list(packed_rows(shards, spans, 33, doc_order=order)))
    assert not np.array_equal(a[: len(c)], c[: len(a)])


def test_documents_of_several_shards_are_read_in_place(tmp_path):
    first, second = make_stream(100, seed=4), make_stream(100, seed=5)
    (tmp_path / "train").mkdir()
    first.tofile(tmp_path / "train" / "shard_00000.bin")
    second.tofile(tmp_path / "train" / "shard_00001.bin")
    shards = load_shards(tmp_path, "train")
    assert all(isinstance(s, np.memmap) for s in shards)  # no concatenated copy of the split
    spans = load_documents(tmp_path, "train", shards, BOS)
    assert set(spans[:, 0].tolist()) == {0, 1} and spans[spans[:, 0] == 1][0, 1] == 0
    rows = np.concatenate(list(packed_rows(shards, spans, 41)))
    assert len(rows) >= 0.9 * (len(first) + len(second))


def test_prepared_docs_file_matches_a_bos_scan(test_data_dir):
    shards = load_shards(test_data_dir, "train")
    from evaluator.tokenizer import bos_id

    stored = load_documents(test_data_dir, "train", shards, bos_id(test_data_dir))
    assert (test_data_dir / layout.TRAIN_DOCS).is_file()
    assert np.array_equal(stored, shard_documents(shards, bos_id(test_data_dir)))


def test_eval_data_has_the_profile_shape_and_shifted_targets(test_data_dir):
    profile = get_profile("test")
    data = eval_data(test_data_dir, profile)
    B, T = profile.eval_batch_size, profile.seq_len
    assert data.inputs.shape == (profile.eval_batches, B, T)
    assert data.targets.shape == data.inputs.shape
    assert data.inputs.size == profile.eval_tokens
    assert np.array_equal(data.inputs[:, :, 1:], data.targets[:, :, :-1])
    assert data.spare.shape[1:] == (B, T)
    scored = {r.tobytes() for r in data.inputs.reshape(-1, T)}
    assert not any(r.tobytes() in scored for r in data.spare.reshape(-1, T))  # other text


def test_a_sample_of_rows_is_uniform_over_the_whole_stream():
    stream = (np.full(8, i) for i in range(10_000))
    rows, seen = sample_rows(stream, 200, np.random.default_rng(1))
    picked = rows[:, 0]
    assert seen == 10_000 and len(set(picked.tolist())) == 200
    assert picked.min() < 1_000 and picked.max() > 9_000  # spread over the whole split
    assert abs(picked.mean() - 5_000) < 600
    assert not np.array_equal(np.sort(picked), picked)  # in random order, not stream order


def test_too_little_validation_text_is_a_clear_error():
    with pytest.raises(NotEnoughValidationData, match="needed"):
        sample_rows((np.zeros(4) for _ in range(10)), 20, np.random.default_rng(0))


def test_train_batches_cover_epochs(test_data_dir):
    import torch

    from evaluator.dataloader import train_batches

    batches = train_batches(test_data_dir, batch_size=4, seq_len=64, seed=0)
    x, y, epoch = next(batches)
    assert x.shape == (4, 64) and y.shape == (4, 64) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and epoch == 0
    again = train_batches(test_data_dir, batch_size=4, seq_len=64, seed=0)
    assert torch.equal(next(again)[0], x)


def test_repeated_rows_are_drawn_at_most_once():
    stream = [np.full(8, i % 5) for i in range(40)] + [np.arange(8)]
    rows = list(distinct_rows(iter(stream)))
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4, 0] and np.array_equal(rows[-1], np.arange(8))
    sample, seen = sample_rows(distinct_rows(iter(stream)), 6, np.random.default_rng(0))
    assert seen == 6 and len({r.tobytes() for r in sample}) == 6


def test_rows_that_differ_only_in_their_last_token_are_one_input():
    first = np.arange(8)
    last_differs = np.concatenate([np.arange(7), [99]])
    rows = list(distinct_rows(iter([first, last_differs, np.arange(1, 9)])))
    assert len(rows) == 2 and np.array_equal(rows[0], first) and rows[1][0] == 1


def test_no_spare_input_is_a_scored_input_for_any_draw(test_data_dir):
    """Every secret draw, not only the one prepared: the sample comes from distinct inputs."""
    from evaluator.tokenizer import bos_id

    shards = load_shards(test_data_dir, "val")
    spans = shard_documents(shards, bos_id(test_data_dir))
    T = get_profile("test").seq_len
    rows = list(distinct_rows(packed_rows(shards, spans, T + 1)))
    assert len({r[:-1].tobytes() for r in rows}) == len(rows)
    assert len(rows) < sum(1 for _ in packed_rows(shards, spans, T + 1))  # the split does repeat
