"""Downloads retry, resume and verify, against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from evaluator import prepare
from evaluator.datasets import CLIMBMIX_VAL_SHARD, climbmix_shard_name, verify_parquet
from evaluator.download import DownloadError, DownloadJob, RetryPolicy, download
from evaluator.layout import shard_paths
from evaluator.manifest import verify_manifest
from evaluator.tokenizer import bos_id, load_tokenizer

try:
    from hub_server import HubServer, parquet_bytes, synthetic_texts
except ImportError:  # tests/ imported as a package
    from tests.hub_server import HubServer, parquet_bytes, synthetic_texts

FAST = RetryPolicy(attempts=4, backoff_s=0.001, max_backoff_s=0.01, timeout_s=5.0)
NAME = "shard_00000.parquet"


@pytest.fixture()
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture(scope="module")
def shard() -> bytes:
    return parquet_bytes(synthetic_texts(seed=1, count=400))


def fetch(hub: HubServer, dest: Path, policy: RetryPolicy = FAST, sha256: str | None = None) -> Path:
    return download(DownloadJob(hub.url(NAME), dest, sha256), policy, verify=verify_parquet)


def test_clean_download_is_byte_identical_and_leaves_no_part(hub, shard, tmp_path):
    hub.add(NAME, shard)
    path = fetch(hub, tmp_path / NAME, sha256=hashlib.sha256(shard).hexdigest())
    assert path.read_bytes() == shard
    assert not (tmp_path / f"{NAME}.part").exists()
    assert [r.status for r in hub.requests_for(NAME)] == [200]


def test_connection_dropped_mid_file_resumes_with_range(hub, shard, tmp_path):
    cut = len(shard) // 3
    hub.add(NAME, shard, script=[f"drop:{cut}"])
    path = fetch(hub, tmp_path / NAME)
    assert path.read_bytes() == shard
    requests = hub.requests_for(NAME)
    assert [(r.status, r.range) for r in requests] == [(200, None), (206, f"bytes={cut}-")]


def test_part_left_by_an_earlier_run_is_resumed(hub, shard, tmp_path):
    hub.add(NAME, shard)
    (tmp_path / f"{NAME}.part").write_bytes(shard[:1000])
    assert fetch(hub, tmp_path / NAME).read_bytes() == shard
    assert [(r.status, r.range) for r in hub.requests_for(NAME)] == [(206, "bytes=1000-")]


def test_server_ignoring_range_restarts_cleanly(hub, shard, tmp_path):
    hub.add(NAME, shard, script=["drop:5000", "norange"])
    assert fetch(hub, tmp_path / NAME).read_bytes() == shard
    assert [r.status for r in hub.requests_for(NAME)] == [200, 200]


def test_503s_then_success_is_retried(hub, shard, tmp_path):
    hub.add(NAME, shard, script=["status:503", "status:429", "status:503"])
    assert fetch(hub, tmp_path / NAME).read_bytes() == shard
    assert [r.status for r in hub.requests_for(NAME)] == [503, 429, 503, 200]


def test_always_failing_gives_one_clear_line_after_bounded_attempts(hub, shard, tmp_path):
    hub.add(NAME, shard, script=["status:503"] * 10)
    with pytest.raises(DownloadError) as caught:
        fetch(hub, tmp_path / NAME)
    message = str(caught.value)
    assert "\n" not in message
    assert hub.url(NAME) in message and "after 4 attempts" in message and "503" in message
    assert len(hub.requests_for(NAME)) == FAST.attempts
    assert not (tmp_path / NAME).exists()


def test_missing_file_fails_at_once(hub, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as caught:
        download(DownloadJob(hub.url("shard_09999.parquet"), tmp_path / "x.parquet"), FAST)
    assert hub.url("shard_09999.parquet") in str(caught.value)
    assert len(hub.requests) == 1


def test_truncated_file_fails_verification(hub, shard, tmp_path):
    hub.add(NAME, shard[: len(shard) // 2])  # announced and sent in full, but not a whole parquet
    with pytest.raises(DownloadError, match="failed verification: not a parquet file"):
        fetch(hub, tmp_path / NAME)
    assert len(hub.requests_for(NAME)) == FAST.attempts
    assert not (tmp_path / NAME).exists() and not (tmp_path / f"{NAME}.part").exists()


def test_garbled_file_fails_verification(hub, shard, tmp_path):
    garbled = bytearray(shard)
    garbled[-12:-4] = b"\xff" * 8  # the footer length and magic
    hub.add(NAME, bytes(garbled))
    with pytest.raises(DownloadError, match="failed verification"):
        fetch(hub, tmp_path / NAME)
    assert not (tmp_path / NAME).exists()


def test_sha256_mismatch_fails_verification(hub, shard, tmp_path):
    hub.add(NAME, shard)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(hub, tmp_path / NAME, sha256="0" * 64)


def test_prepare_climbmix_end_to_end_from_the_loopback_hub(hub, tmp_path, monkeypatch, capsys):
    train_texts = {index: synthetic_texts(seed=10 + index, count=150) for index in range(2)}
    val_texts = synthetic_texts(seed=99, count=60)
    for index, texts in train_texts.items():
        hub.add(climbmix_shard_name(index), parquet_bytes(texts))
    val_name = climbmix_shard_name(CLIMBMIX_VAL_SHARD)
    hub.add(val_name, parquet_bytes(val_texts), script=["drop:2000", "status:502"])
    hub.add(climbmix_shard_name(2), b"never requested")
    monkeypatch.setenv("OVERNIGHT_HF_BASE_URL", hub.base_url)
    out = tmp_path / "data"

    code = prepare.main(["--profile", "test", "--dataset", "climbmix", "--train-shards", "2",
                         "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                         "--download-backoff", "0.001"])

    assert code == 0, capsys.readouterr().err
    assert hub.requests_for(climbmix_shard_name(2)) == []
    assert [r.status for r in hub.requests_for(val_name)] == [200, 502, 206]
    verify_manifest(out, ["train", "val"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "climbmix"
    assert manifest["source"]["val_files"] == [val_name]
    encoding, bos = load_tokenizer(out), bos_id(out)
    decoded = {}
    for split in ("train", "val"):
        tokens = np.concatenate([np.fromfile(p, dtype="<u2") for p in shard_paths(out, split)])
        decoded[split] = encoding.decode(tokens[tokens != bos].tolist())
    assert decoded["val"] == "".join(val_texts)
    assert decoded["train"] == "".join(train_texts[0] + train_texts[1])
    assert "prepared" in capsys.readouterr().out
