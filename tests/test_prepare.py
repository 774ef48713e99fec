"""Data preparation: tokenizer, disjoint splits, BOS-prefixed documents, shards, clear errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluator.datasets import is_val_text, open_dataset, stdlib_files, stdlib_source
from evaluator.layout import shard_paths
from evaluator.manifest import read_manifest, verify_manifest
from evaluator.prepare import document_pieces, line_end_table, main, prepare
from evaluator.profiles import get_profile
from evaluator.tokenizer import bos_id, load_token_bytes, load_tokenizer, read_tokenizer

try:
    from hub_server import synthetic_texts, write_parquet
except ImportError:  # tests/ imported as a package
    from tests.hub_server import synthetic_texts, write_parquet

TEST = get_profile("test")
SMALL = dataclasses.replace(TEST, eval_batch_size=4, eval_tokens=4 * 64)  # for tiny datasets: 4 + 16 spare rows
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stdlib_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "data"
    prepare(TEST, stdlib_source(), out)
    return out


def split_tokens(data_dir: Path, split: str) -> np.ndarray:
    return np.concatenate([np.fromfile(path, dtype="<u2") for path in shard_paths(data_dir, split)])


def documents(tokens: np.ndarray, bos: int) -> list[np.ndarray]:
    starts = np.flatnonzero(tokens == bos)
    return np.split(tokens, starts[1:])


def decoded_text(data_dir: Path, split: str) -> str:
    tokens = split_tokens(data_dir, split)
    return load_tokenizer(data_dir).decode(tokens[tokens != bos_id(data_dir)].tolist())


def read_texts(paths) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in paths]


# -- stdlib ---------------------------------------------------------------------------------------


def test_stdlib_validation_is_the_test_suite_and_train_is_the_rest():
    train, val = stdlib_files(Path(stdlib_source().facts["root"]))
    assert train and val and not set(train) & set(val)
    test_dirs = {"test", "tests", "idle_test"}
    assert all(test_dirs & set(p.parts[:-1]) for p in val)
    assert not any(test_dirs & set(p.parts[:-1]) for p in train)
    assert not any("site-packages" in p.parts for p in train + val)


def test_stdlib_prepare_is_disjoint_and_counts_match_the_shards(stdlib_dir):
    manifest = json.loads((stdlib_dir / "manifest.json").read_text())
    bos = bos_id(stdlib_dir)
    for split in ("train", "val"):
        tokens = split_tokens(stdlib_dir, split)
        facts = manifest["splits"][split]
        assert facts["tokens"] == tokens.size > 0
        assert facts["docs"] == int((tokens == bos).sum())
        assert facts["shards"] == len(shard_paths(stdlib_dir, split))
    train_text = decoded_text(stdlib_dir, "train")
    train, val = stdlib_files(Path(stdlib_source().facts["root"]))
    val_seen = [t for t in read_texts(val[:80]) if len(t) > 300]
    assert val_seen and not any(text in train_text for text in val_seen)
    train_seen = [t for t in read_texts(train[:20]) if len(t) > 300]
    assert train_seen and all(text in train_text for text in train_seen)  # the check can fail


def test_every_document_starts_with_bos_and_fits_a_row(stdlib_dir):
    bos = bos_id(stdlib_dir)
    for split in ("train", "val"):
        for path in shard_paths(stdlib_dir, split):
            tokens = np.fromfile(path, dtype="<u2")
            assert tokens[0] == bos  # no document crosses a shard boundary
        docs = documents(split_tokens(stdlib_dir, split), bos)
        lengths = np.array([len(doc) for doc in docs])
        assert lengths.max() <= TEST.seq_len + 1 and lengths.min() >= 2
        assert lengths.mean() > TEST.seq_len * 0.6  # cutting at lines wastes little


def test_long_documents_are_cut_at_line_ends(stdlib_dir):
    encoding, bos = load_tokenizer(stdlib_dir), bos_id(stdlib_dir)
    pieces = documents(split_tokens(stdlib_dir, "val"), bos)
    ends = [encoding.decode(piece[1:].tolist())[-1:] for piece in pieces]
    assert sum(end == "\n" for end in ends) / len(ends) > 0.95


def test_document_pieces_keep_whole_lines_and_the_whole_tokenization(stdlib_dir):
    encoding = load_tokenizer(stdlib_dir)
    line_ends = line_end_table(read_tokenizer(stdlib_dir))
    lines = "".join(f"value_{i} = compute({i}, 'x' * {i})\n" for i in range(40))
    long_line = "y = [" + ", ".join(str(i) for i in range(200)) + "]\n"  # > seq_len tokens
    tokens = encoding.encode_ordinary(lines + long_line)
    pieces = document_pieces(tokens, TEST.seq_len, line_ends)
    assert np.concatenate(pieces).tolist() == tokens
    assert all(len(piece) <= TEST.seq_len for piece in pieces)
    end = 0
    for piece in pieces[:-1]:
        text = encoding.decode(piece.tolist())
        end += len(text)
        if end <= len(lines):
            assert text.endswith("\n")  # whole lines only
        else:
            assert len(piece) == TEST.seq_len  # inside the long line: a cut between tokens
    assert end > len(lines) and len(pieces) > 4


def test_token_bytes_count_the_utf8_bytes_of_a_document(stdlib_dir):
    encoding, bos = load_tokenizer(stdlib_dir), bos_id(stdlib_dir)
    token_bytes = load_token_bytes(stdlib_dir)
    assert token_bytes.dtype == np.int32 and token_bytes.size == TEST.vocab_size
    assert token_bytes[bos] == 0 and bos == TEST.vocab_size - 1
    for doc in documents(split_tokens(stdlib_dir, "val"), bos)[:200]:
        text = encoding.decode(doc[1:].tolist())
        assert int(token_bytes[doc].sum()) == len(text.encode("utf-8"))


def test_tokenizer_round_trips_text_and_keeps_bos_special(stdlib_dir):
    encoding, bos = load_tokenizer(stdlib_dir), bos_id(stdlib_dir)
    assert encoding.n_vocab == TEST.vocab_size
    for text in ["def f(x):\n    return x ** 2  # square\n", "naïve café — 東京 🚀\r\n\t", ""]:
        assert encoding.decode(encoding.encode_ordinary(text)) == text
    assert bos not in encoding.encode_ordinary("<|bos|> written by someone")
    assert encoding.encode("<|bos|>", allowed_special="all") == [bos]


def test_preparation_is_deterministic_but_the_eval_sample_is_drawn_anew(stdlib_dir, tmp_path):
    again = tmp_path / "again"
    prepare(TEST, stdlib_source(), again)
    first, second = read_manifest(stdlib_dir).files, read_manifest(again).files
    for name in first:
        if not name.startswith("eval/"):
            assert first[name] == second[name], name  # tokenizer, train and val: byte for byte
    # the scored rows are a secret sample drawn anew each time: the data identity differs
    assert first["eval/scored.bin"] != second["eval/scored.bin"]
    assert verify_manifest(again, ["train", "val", "eval"]) != verify_manifest(stdlib_dir, ["train", "val", "eval"])


# -- splits from a crafted stdlib tree ------------------------------------------------------------


def test_a_train_file_identical_to_a_test_file_is_dropped_from_train(tmp_path):
    real_train, real_val = stdlib_files(Path(stdlib_source().facts["root"]))
    root = tmp_path / "lib"
    for path in real_train[:60]:
        (root / path.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / path.name)
    for path in real_val[:3]:
        (root / "test" / path.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / "test" / path.name)
    shutil.copyfile(root / real_train[5].name, root / "test" / "copied.py")
    (root / "site-packages").mkdir()
    (root / "site-packages" / "other.py").write_text("never read\n")
    out = tmp_path / "data"
    profile = dataclasses.replace(SMALL, max_train_bytes=None, max_val_bytes=None)

    prepare(profile, stdlib_source(root), out)

    train, val = stdlib_files(root)
    duplicate = (root / real_train[5].name).read_text()
    expected_train = [t for t in read_texts(train) if t.strip() and t != duplicate]
    expected_val = [t for t in read_texts(val) if t.strip()]
    assert decoded_text(out, "train") == "".join(expected_train)
    assert decoded_text(out, "val") == "".join(expected_val)
    assert duplicate in expected_val
    assert json.loads((out / "manifest.json").read_text())["source"]["train_docs_dropped_as_in_val"] == 1


# -- bring your own parquet -----------------------------------------------------------------------


def test_parquet_glob_splits_by_content_hash(tmp_path):
    texts = [synthetic_texts(seed=s, count=200) for s in range(3)]
    for index, chunk in enumerate(texts):
        write_parquet(tmp_path / "raw" / f"part-{index}.parquet", chunk)
    out = tmp_path / "data"

    summary = prepare(SMALL, open_dataset(f"parquet:{tmp_path}/raw/*.parquet"), out, max_shard_tokens=20_000)

    everything = [t for chunk in texts for t in chunk]
    val = [t for t in everything if is_val_text(t)]
    assert 5 < len(val) < 60
    assert decoded_text(out, "val") == "".join(val)
    assert decoded_text(out, "train") == "".join(t for t in everything if not is_val_text(t))
    assert summary.train.shards == len(shard_paths(out, "train")) > 3
    assert all(p.stat().st_size <= 2 * 20_000 for p in shard_paths(out, "train"))
    verify_manifest(out, ["train", "val"])


# -- bad input ------------------------------------------------------------------------------------


def run_main(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ("wikipedia", "unknown dataset 'wikipedia': choose stdlib, climbmix or parquet:<glob>"),
        ("parquet:{tmp}/nothing/*.parquet", "no files match"),
        ("parquet:", "parquet: needs a glob"),
        ("parquet:{tmp}/notext.parquet", "has no 'text' column (columns: body)"),
        ("parquet:{tmp}/broken.parquet", "is not a readable parquet file"),
    ],
)
def test_bad_dataset_gives_one_clear_line(dataset, message, tmp_path, capsys):
    write_parquet(tmp_path / "notext.parquet", ["hello"], column="body")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    out = tmp_path / "data"
    code, err = run_main(["--profile", "test", "--dataset", dataset.format(tmp=tmp_path), "--out", str(out)], capsys)
    assert code == 2
    assert err.startswith("prepare: error: ") and message in err and "\n" not in err
    assert not out.exists() and not list(tmp_path.glob("data.tmp-*"))


def test_too_little_text_for_the_vocabulary_is_a_clear_error(tmp_path, capsys):
    write_parquet(tmp_path / "tiny.parquet", [f"note {i}\n" for i in range(200)])
    code, err = run_main(
        ["--profile", "test", "--dataset", f"parquet:{tmp_path}/tiny.parquet", "--out", str(tmp_path / "data")], capsys
    )
    assert code == 2 and "too small to learn 511 tokens" in err
    assert not (tmp_path / "data").exists() and not list(tmp_path.glob("data.tmp-*"))


def test_unknown_profile_is_a_clear_error(tmp_path, capsys):
    code, err = run_main(["--profile", "huge", "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "unknown profile 'huge'" in err


def test_complete_dir_is_not_overwritten_without_force(stdlib_dir, tmp_path, capsys):
    out = tmp_path / "data"
    shutil.copytree(stdlib_dir, out)
    before = (out / "manifest.json").read_bytes()
    code, err = run_main(["--profile", "test", "--out", str(out)], capsys)
    assert code == 2 and "already a prepared data dir: use --force" in err
    assert (out / "manifest.json").read_bytes() == before

    (out / "train" / "stale.bin").write_bytes(b"old")
    assert main(["--profile", "test", "--out", str(out), "--force"]) == 0
    assert not (out / "train" / "stale.bin").exists()
    verify_manifest(out, ["train", "val"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_nonempty_dir_without_manifest_is_refused(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    code, err = run_main(["--profile", "test", "--out", str(tmp_path / "data")], capsys)
    assert code == 2 and "not empty and has no manifest" in err


def test_command_line_prints_a_summary(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "evaluator.prepare", "--profile", "test", "--out", str(tmp_path / "data")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "prepared" in result.stdout and "train" in result.stdout and "tokens" in result.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluator.prepare",
            "--profile",
            "test",
            "--dataset",
            "nope",
            "--out",
            str(tmp_path / "other"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0


# -- the private eval sample and a private validation set -----------------------------------------


def test_eval_rows_are_a_secret_sample_spread_over_the_whole_val_split(stdlib_dir):
    from evaluator.dataloader import load_shards, packed_rows, read_rows, shard_documents
    from evaluator.layout import EVAL_SCORED

    val = load_shards(stdlib_dir, "val")
    bos = int(val[0][0])
    packed = list(packed_rows(val, shard_documents(val, bos), TEST.seq_len + 1))
    where = {row.tobytes(): i for i, row in reversed(list(enumerate(packed)))}
    scored = read_rows(stdlib_dir / EVAL_SCORED, TEST.eval_rows, TEST.seq_len + 1)
    positions = [where[row.astype(np.int64).tobytes()] for row in scored]  # every scored row is real val text
    assert len(set(positions)) == len(positions) == TEST.eval_rows
    assert min(positions) < 0.25 * len(packed) and max(positions) > 0.75 * len(packed)
    assert sorted(positions) != list(range(TEST.eval_rows))  # not the first rows, as before


def test_a_private_validation_set_replaces_the_datasets_own(tmp_path):
    private = synthetic_texts(seed=9, count=400)
    write_parquet(tmp_path / "private" / "mine.parquet", private)
    out = tmp_path / "data"
    code = main(
        [
            "--profile",
            "test",
            "--dataset",
            "stdlib",
            "--val",
            f"parquet:{tmp_path}/private/*.parquet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert decoded_text(out, "val") == "".join(t for t in private if t.strip())[: len(decoded_text(out, "val"))]
    manifest = read_manifest(out)
    assert manifest.source["val_rule"] == "every document of the private validation files"
    assert manifest.dataset.startswith("stdlib+val:")
    verify_manifest(out, ["train", "val", "eval"])
