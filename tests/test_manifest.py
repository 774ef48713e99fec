"""The manifest: a data dir that differs from it by one byte, one file or one link is refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from evaluator.datasets import stdlib_source
from evaluator.manifest import ManifestError, manifest_sha256, verify_manifest
from evaluator.prepare import prepare
from evaluator.profiles import get_profile

BOTH = ["train", "val"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("manifest") / "data"
    prepare(get_profile("test"), stdlib_source(), out, max_shard_tokens=300_000)
    return out


@pytest.fixture()
def data(prepared, tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(prepared, copy)
    return copy


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_intact_dir_verifies_and_its_hash_is_stable(data, prepared):
    first = verify_manifest(data, BOTH)
    assert len(first) == 64
    assert verify_manifest(data, BOTH) == first == manifest_sha256(data)
    assert verify_manifest(data, ["train"]) == first == verify_manifest(data, ["val"])
    assert first == verify_manifest(prepared, BOTH)  # the copy is the same data


def test_hash_ignores_the_creation_time_but_not_the_content(data):
    before = manifest_sha256(data)
    record = json.loads((data / "manifest.json").read_text())
    record["created"] = "1999-01-01T00:00:00+00:00"
    (data / "manifest.json").write_text(json.dumps(record))
    assert manifest_sha256(data) == before
    record["seq_len"] += 1
    (data / "manifest.json").write_text(json.dumps(record))
    assert manifest_sha256(data) != before


def test_one_flipped_byte_in_a_shard_is_named(data):
    flip_byte(data / "val" / "shard_00000.bin", 12345)
    with pytest.raises(ManifestError) as caught:
        verify_manifest(data, BOTH)
    message = str(caught.value)
    assert message == f"{data}/val/shard_00000.bin does not match its manifest hash: re-run make prepare"
    verify_manifest(data, ["train"])  # the train container never sees val


def test_a_flipped_byte_in_the_tokenizer_fails_every_split(data):
    flip_byte(data / "tokenizer" / "token_bytes.bin", 40)
    for splits in (["train"], ["val"]):
        with pytest.raises(ManifestError, match="tokenizer/token_bytes.bin does not match"):
            verify_manifest(data, splits)


def test_an_extra_shard_is_refused(data):
    train_shards = sorted((data / "train").iterdir())
    assert len(train_shards) >= 3
    shutil.copyfile(train_shards[0], data / "train" / f"shard_{len(train_shards):05d}.bin")
    with pytest.raises(ManifestError, match=r"train/shard_0000\d\.bin is not in the manifest"):
        verify_manifest(data, ["train"])
    verify_manifest(data, ["val"])


def test_a_missing_shard_is_refused(data):
    (data / "train" / "shard_00001.bin").unlink()
    with pytest.raises(ManifestError, match="train/shard_00001.bin is missing"):
        verify_manifest(data, ["train"])


def test_a_missing_split_is_fine_only_when_not_requested(data):
    shutil.rmtree(data / "val")
    verify_manifest(data, ["train"])
    with pytest.raises(ManifestError, match=r"/val is missing"):
        verify_manifest(data, ["val"])


def test_a_symlinked_shard_is_refused_even_with_the_right_content(data, tmp_path):
    shard = data / "train" / "shard_00000.bin"
    elsewhere = tmp_path / "elsewhere.bin"
    shutil.copyfile(shard, elsewhere)
    shard.unlink()
    os.symlink(elsewhere, shard)
    with pytest.raises(ManifestError, match="cannot be read as a regular file"):
        verify_manifest(data, ["train"])


def test_a_missing_or_broken_manifest_is_a_clear_error(data):
    (data / "manifest.json").write_text('{"profile": "test"}')
    with pytest.raises(ManifestError, match=r"is not a valid manifest \(dataset: Field required\)"):
        verify_manifest(data, BOTH)
    (data / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="manifest.json is missing: run make prepare"):
        verify_manifest(data, BOTH)


def test_a_manifest_listing_paths_outside_the_data_dir_is_refused(data):
    record = json.loads((data / "manifest.json").read_text())
    record["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    (data / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(ManifestError, match="is not a valid manifest"):
        verify_manifest(data, BOTH)


def test_unknown_split_is_refused(data):
    with pytest.raises(ManifestError, match="unknown part 'test'"):
        verify_manifest(data, ["test"])
