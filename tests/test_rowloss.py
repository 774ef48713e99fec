"""Per-row losses: computed like score.py's totals, written atomically in a fixed-size file, read
back on the host as hostile input with one error type for every kind of damage."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluator.profiles import get_profile
from evaluator.records import ScoreRecord
from evaluator.rowloss import (
    HEADER_BYTES,
    ROWLOSS_FILE,
    RowLossError,
    RowLosses,
    encode,
    file_size,
    profile_rows,
    read_rowloss,
    row_totals,
    write_rowloss,
)
from evaluator.score import Totals, cross_entropy_totals

B, T, V, BOS = 4, 32, 50, 0


def random_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 3
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[torch.rand(B, T, generator=g) < 0.15] = BOS
    token_bytes = torch.randint(1, 7, (V,), generator=g)
    token_bytes[BOS] = 0
    return logits, targets, token_bytes


def scored_rows(batches: int = 3) -> tuple[RowLosses, Totals]:
    parts, totals = [], Totals()
    for seed in range(batches):
        logits, targets, token_bytes = random_batch(seed)
        parts.append(row_totals(logits, targets, token_bytes))
        totals.add(cross_entropy_totals(logits, targets, token_bytes))
    return RowLosses.concat(parts), totals


def score_of(totals: Totals) -> ScoreRecord:
    return ScoreRecord(
        status="ok",
        profile="tiny",
        val_bpb=totals.bpb,
        val_loss_nats=totals.loss,
        tokens=totals.tokens,
        bytes=totals.bytes,
    )


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, RowLosses, ScoreRecord]:
    rows, totals = scored_rows()
    path = tmp_path / ROWLOSS_FILE
    write_rowloss(rows, path)
    return path, rows, score_of(totals)


def test_rows_sum_to_the_totals_score_py_computes() -> None:
    rows, totals = scored_rows()
    assert rows.rows == 3 * B
    assert rows.total_tokens == totals.tokens
    assert rows.total_bytes == totals.bytes
    assert math.isclose(rows.total_nats, totals.nats, rel_tol=1e-12)
    assert math.isclose(rows.bpb, totals.bpb, rel_tol=1e-12)


def test_bos_targets_count_in_neither_nats_nor_bytes() -> None:
    logits, targets, token_bytes = random_batch(0)
    targets[0] = BOS  # row 0 is all BOS
    rows = row_totals(logits, targets, token_bytes)
    assert rows.nats[0] == 0.0 and rows.tokens[0] == 0 and rows.bytes[0] == 0
    assert (rows.tokens[1:] > 0).all()


def test_round_trip_and_fixed_size(written: tuple[Path, RowLosses, ScoreRecord]) -> None:
    path, rows, score = written
    assert path.stat().st_size == file_size(rows.rows) == HEADER_BYTES + 24 * rows.rows
    back = read_rowloss(path, rows.rows, score)
    np.testing.assert_array_equal(back.nats, rows.nats)
    np.testing.assert_array_equal(back.tokens, rows.tokens)
    np.testing.assert_array_equal(back.bytes, rows.bytes)


def test_write_leaves_no_temp_file_and_replaces_atomically(tmp_path: Path) -> None:
    rows, _ = scored_rows(1)
    path = tmp_path / ROWLOSS_FILE
    write_rowloss(rows, path)
    write_rowloss(RowLosses.concat([rows, rows]), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ROWLOSS_FILE]
    assert read_rowloss(path, 2 * rows.rows).rows == 2 * rows.rows


def test_profile_row_counts_follow_the_eval_set() -> None:
    assert profile_rows(get_profile("cpu")) == 65_536 // 256
    assert profile_rows(get_profile("gpu")) == 40 * 524_288 // 2048
    assert profile_rows(get_profile("test")) == 4_096 // 64


def test_reader_needs_no_torch() -> None:
    code = "import sys, evaluator.rowloss, controller.noise; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0


# ---------------------------------------------------------------------------------------------
# Damage: every kind is one RowLossError with a one-line reason


def _patch(path: Path, offset: int, data: bytes) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset : offset + len(data)] = data
    path.write_bytes(bytes(blob))


def _expect_refusal(path: Path, rows: int, score: ScoreRecord | None, words: str) -> None:
    with pytest.raises(RowLossError) as info:
        read_rowloss(path, rows, score)
    message = str(info.value)
    assert "\n" not in message and words in message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    _expect_refusal(tmp_path / ROWLOSS_FILE, 12, None, "missing")


def test_wrong_size_is_refused(written: tuple[Path, RowLosses, ScoreRecord]) -> None:
    path, rows, score = written
    with open(path, "ab") as f:
        f.write(b"\0" * 24)
    _expect_refusal(path, rows.rows, score, "bytes, expected")


def test_truncated_file_is_refused(written: tuple[Path, RowLosses, ScoreRecord]) -> None:
    path, rows, score = written
    path.write_bytes(path.read_bytes()[:-5])
    _expect_refusal(path, rows.rows, score, "bytes, expected")


def test_row_count_other_than_the_profile_is_refused(written: tuple[Path, RowLosses, ScoreRecord]) -> None:
    path, rows, score = written
    _expect_refusal(path, rows.rows + 1, score, "bytes, expected")
    _patch(path, 16, struct.pack("<Q", rows.rows - 1))
    _expect_refusal(path, rows.rows, score, "says")


def test_symlink_is_refused(written: tuple[Path, RowLosses, ScoreRecord], tmp_path: Path) -> None:
    path, rows, score = written
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    _expect_refusal(link, rows.rows, score, "symlink")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / ROWLOSS_FILE
    os.mkfifo(fifo)
    _expect_refusal(fifo, 12, None, "not a regular file")


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / ROWLOSS_FILE).mkdir()
    _expect_refusal(tmp_path / ROWLOSS_FILE, 12, None, "not a regular file")


def test_bad_magic_and_version_are_refused(written: tuple[Path, RowLosses, ScoreRecord]) -> None:
    path, rows, score = written
    good = path.read_bytes()
    _patch(path, 0, b"NOTROWS\0")
    _expect_refusal(path, rows.rows, score, "magic")
    path.write_bytes(good)
    _patch(path, 8, struct.pack("<I", 2))
    _expect_refusal(path, rows.rows, score, "version")


@pytest.mark.parametrize("value, words", [(math.nan, "NaN"), (math.inf, "infinite"), (-0.5, "negative nats")])
def test_bad_nats_are_refused(written: tuple[Path, RowLosses, ScoreRecord], value: float, words: str) -> None:
    path, rows, score = written
    _patch(path, HEADER_BYTES + 8 * 3, struct.pack("<d", value))
    _expect_refusal(path, rows.rows, score, words)


def test_negative_bytes_and_tokens_are_refused(written: tuple[Path, RowLosses, ScoreRecord]) -> None:
    path, rows, score = written
    good = path.read_bytes()
    _patch(path, HEADER_BYTES + 16 * rows.rows + 8 * 2, struct.pack("<q", -7))
    _expect_refusal(path, rows.rows, score, "negative")
    path.write_bytes(good)
    _patch(path, HEADER_BYTES + 8 * rows.rows, struct.pack("<q", -1))
    _expect_refusal(path, rows.rows, score, "negative")


def test_nats_on_a_row_with_nothing_scored_are_refused(tmp_path: Path) -> None:
    rows, _ = scored_rows(1)
    bad = RowLosses(nats=rows.nats, tokens=rows.tokens.copy(), bytes=rows.bytes.copy())
    bad.tokens[0] = bad.bytes[0] = 0
    path = tmp_path / ROWLOSS_FILE
    path.write_bytes(encode(bad))
    _expect_refusal(path, rows.rows, None, "no scored tokens")


def test_sums_that_disagree_with_score_json_are_refused(written: tuple[Path, RowLosses, ScoreRecord]) -> None:
    path, rows, score = written
    read_rowloss(path, rows.rows, score)
    nats = score.model_copy(update={"val_loss_nats": score.val_loss_nats * (1 + 1e-6)})
    _expect_refusal(path, rows.rows, nats, "nats, score.json says")
    more_bytes = score.model_copy(update={"bytes": score.bytes + 1})
    _expect_refusal(path, rows.rows, more_bytes, "score.json says")
    fewer_tokens = score.model_copy(update={"tokens": score.tokens - 1})
    _expect_refusal(path, rows.rows, fewer_tokens, "score.json says")
    bpb = score.model_copy(update={"val_bpb": score.val_bpb + 1e-4})
    _expect_refusal(path, rows.rows, bpb, "val_bpb")
    rejected = ScoreRecord(status="rejected", reason="x", profile="tiny")
    _expect_refusal(path, rows.rows, rejected, "no score")


def test_one_changed_row_is_caught_by_the_totals(written: tuple[Path, RowLosses, ScoreRecord]) -> None:
    path, rows, score = written
    _patch(path, HEADER_BYTES, struct.pack("<d", float(rows.nats[0]) + 0.01))
    _expect_refusal(path, rows.rows, score, "nats, score.json says")
