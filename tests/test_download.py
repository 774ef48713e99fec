"""Downloads are bounded, resumed, retried and verified against the hash the hub publishes,
over real HTTP on loopback (the real urllib code against a stand-in hub that can lie)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from evaluator import prepare
from evaluator.datasets import (
    CLIMBMIX_REPO,
    CLIMBMIX_VAL_SHARD,
    climbmix_shard_name,
    verify_parquet,
)
from evaluator.download import (
    MAX_JSON_BYTES,
    DownloadError,
    DownloadJob,
    RetryPolicy,
    download,
)
from evaluator.hub import published_files, resolve_revision
from evaluator.layout import shard_paths
from evaluator.manifest import verify_manifest
from evaluator.tokenizer import bos_id, load_tokenizer

try:
    from hub_server import COMMIT, HubServer, Published, parquet_bytes, synthetic_texts
except ImportError:  # tests/ imported as a package
    from tests.hub_server import (
        COMMIT,
        HubServer,
        Published,
        parquet_bytes,
        synthetic_texts,
    )

FAST = RetryPolicy(attempts=4, backoff_s=0.001, max_backoff_s=0.01, timeout_s=5.0)
NAME = "shard_00000.parquet"


@pytest.fixture()
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture(scope="module")
def shard() -> bytes:
    return parquet_bytes(synthetic_texts(seed=1, count=400))


def pinned(api: HubServer, name: str = NAME, mirror: HubServer | None = None, dest: Path | None = None) -> DownloadJob:
    """The job climbmix builds: the commit and the hash from `api`, the bytes from `mirror`."""
    commit = resolve_revision(api.endpoint, CLIMBMIX_REPO, "main", FAST)
    published = published_files(api.endpoint, CLIMBMIX_REPO, commit, [name], FAST)[name]
    return DownloadJob((mirror or api).url(name, commit), dest or Path(name), published.sha256, published.size)


def fetch(hub: HubServer, dest: Path, policy: RetryPolicy = FAST) -> Path:
    return download(pinned(hub, dest=dest), policy, verify=verify_parquet)


def tampered(data: bytes) -> bytes:
    """Other bytes of the same length that still parse as parquet (a row's text changed)."""
    marker = data.index(b"Document 1-0")
    return data[:marker] + b"Document X-0" + data[marker + 12 :]


def largest_size_while(path: Path, action) -> tuple[int, DownloadError | None]:
    """Run `action` while watching `path`; the largest size it had, and what `action` raised."""
    largest, done = 0, threading.Event()

    def watch() -> None:
        nonlocal largest
        while not done.is_set():
            try:
                largest = max(largest, path.stat().st_size)
            except FileNotFoundError:
                pass
            time.sleep(0.0002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        action()
        error = None
    except DownloadError as raised:  # handed back to the test
        error = raised
    finally:
        done.set()
        watcher.join()
    return largest, error


# -- resume and retry -----------------------------------------------------------------------------


def test_clean_download_is_byte_identical_and_leaves_no_part(hub, shard, tmp_path):
    hub.add(NAME, shard)
    path = fetch(hub, tmp_path / NAME)
    assert path.read_bytes() == shard
    assert not (tmp_path / f"{NAME}.part").exists()
    assert [(r.status, r.revision) for r in hub.requests_for(NAME)] == [(200, COMMIT)]


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
    hub.add(NAME, shard[: len(shard) // 2])  # published, announced and sent in full, not parquet
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


# -- checked against the hash the hub publishes ---------------------------------------------------


def test_download_is_pinned_to_a_commit_and_checked_against_the_published_hash(hub, shard, tmp_path):
    hub.add(NAME, shard)
    job = pinned(hub, dest=tmp_path / NAME)
    assert (job.sha256, job.size) == (hashlib.sha256(shard).hexdigest(), len(shard))
    assert f"/resolve/{COMMIT}/{NAME}" in job.url
    assert download(job, FAST).read_bytes() == shard
    assert [(call.kind, call.revision, call.paths) for call in hub.api_calls] == [
        ("revision", "main", ()),
        ("paths-info", COMMIT, (NAME,)),
    ]


def test_mirror_serving_other_bytes_of_the_same_size_is_refused_at_once(shard, tmp_path):
    forged = tampered(shard)
    assert len(forged) == len(shard) and forged != shard
    (tmp_path / "forged.parquet").write_bytes(forged)
    verify_parquet(tmp_path / "forged.parquet")  # the parquet check alone would take it
    with HubServer() as api, HubServer() as mirror:
        api.add(NAME, shard)
        mirror.add(NAME, forged)  # a mirror that would vouch for its own bytes
        with pytest.raises(DownloadError) as caught:
            download(pinned(api, mirror=mirror, dest=tmp_path / NAME), FAST, verify=verify_parquet)
        message = str(caught.value)
        assert "\n" not in message and "sha256 mismatch" in message
        assert "OVERNIGHT_HF_BASE_URL" in message
        assert len(mirror.requests_for(NAME)) == 1  # a lying mirror is not asked again
        assert api.requests_for(NAME) == []
    assert not (tmp_path / NAME).exists() and not (tmp_path / f"{NAME}.part").exists()


def test_announced_size_other_than_the_published_one_is_refused_before_the_body(hub, shard, tmp_path):
    hub.add(NAME, shard, script=["pad:100000"])
    with pytest.raises(DownloadError) as caught:
        fetch(hub, tmp_path / NAME)
    assert (
        f"{NAME} is announced as {len(shard) + 100000} bytes, but its published size is "
        f"{len(shard)}: the mirror or proxy sent something else"
    ) in str(caught.value)
    assert len(hub.requests_for(NAME)) == 1
    assert not (tmp_path / f"{NAME}.part").exists() and not (tmp_path / NAME).exists()


def test_endless_body_is_cut_off_at_the_published_size(hub, tmp_path):
    blob = os.urandom(5 << 19)  # 2.5 MiB: more than one read, so the part grows before the cut
    hub.add("blob.bin", blob, script=["endless"])
    dest = tmp_path / "blob.bin"
    job = pinned(hub, "blob.bin", dest=dest)
    largest, error = largest_size_while(dest.with_name("blob.bin.part"), lambda: download(job, FAST))
    assert isinstance(error, DownloadError)
    assert f"blob.bin ran past its published size of {len(blob)} bytes" in str(error)
    assert largest <= len(blob)
    assert not dest.with_name("blob.bin.part").exists() and not dest.exists()
    assert len(hub.requests_for("blob.bin")) == 1


def test_without_a_published_size_the_absolute_cap_still_holds(hub, tmp_path):
    blob = os.urandom(1 << 20)
    hub.add("blob.bin", blob, script=["endless", "pad:1"])
    dest = tmp_path / "blob.bin"
    job = DownloadJob(hub.url("blob.bin"), dest, max_bytes=len(blob))  # no hash, no size
    largest, error = largest_size_while(dest.with_name("blob.bin.part"), lambda: download(job, FAST))
    assert isinstance(error, DownloadError)
    assert f"blob.bin ran past the {len(blob)}-byte cap for one download" in str(error)
    assert largest <= len(blob)
    with pytest.raises(DownloadError, match=f"announced as {len(blob) + 1} bytes, over the"):
        download(job, FAST)
    assert not dest.with_name("blob.bin.part").exists() and not dest.exists()


def test_leftover_part_larger_than_the_file_is_discarded(hub, shard, tmp_path):
    hub.add(NAME, shard)
    (tmp_path / f"{NAME}.part").write_bytes(shard + b"\0" * 4096)
    assert fetch(hub, tmp_path / NAME).read_bytes() == shard
    assert [(r.status, r.range) for r in hub.requests_for(NAME)] == [(200, None)]


def test_stale_part_is_resumed_then_fetched_whole_when_the_hash_disagrees(hub, shard, tmp_path):
    hub.add(NAME, shard)
    (tmp_path / f"{NAME}.part").write_bytes(tampered(shard)[: len(shard) - 100])
    assert fetch(hub, tmp_path / NAME).read_bytes() == shard
    assert [(r.status, r.range) for r in hub.requests_for(NAME)] == [(206, f"bytes={len(shard) - 100}-"), (200, None)]


def test_cached_file_is_rehashed_and_fetched_again_when_it_no_longer_matches(hub, shard, tmp_path):
    hub.add(NAME, shard)
    dest = tmp_path / NAME
    fetch(hub, dest)
    fetch(hub, dest)
    assert len(hub.requests_for(NAME)) == 1  # a good cached file is reused
    dest.write_bytes(tampered(shard))  # same size, other bytes
    assert fetch(hub, dest).read_bytes() == shard
    assert len(hub.requests_for(NAME)) == 2


def test_published_size_over_the_cap_is_refused_without_a_request(hub, tmp_path):
    job = DownloadJob(hub.url(NAME), tmp_path / NAME, "0" * 64, size=11, max_bytes=10)
    with pytest.raises(DownloadError, match="published as 11 bytes, over the 10-byte cap"):
        download(job, FAST)
    assert hub.requests == []


# -- what the hub publishes -----------------------------------------------------------------------


def test_file_without_a_published_lfs_hash_is_a_clear_error(hub, shard):
    hub.add(NAME, shard, published=Published(sha256=None, size=len(shard)))
    with pytest.raises(DownloadError) as caught:
        pinned(hub)
    assert str(caught.value) == (f"the hub published no LFS hash for {NAME}: check the dataset name/revision")


def test_file_the_hub_does_not_list_is_a_clear_error(hub, shard):
    hub.add(NAME, shard, listed=False)
    with pytest.raises(DownloadError, match=f"the hub lists no {NAME} in {CLIMBMIX_REPO} at commit {COMMIT[:12]}"):
        pinned(hub)


@pytest.mark.parametrize(
    ("lie", "message"),
    [
        ({"revision": {"sha": "\x1b[31mmain\x1b[0m"}}, "has no commit sha"),
        ({"revision": ["not", "a", "dict"]}, "has no commit sha"),
        ({"published": Published(sha256="\x1b[2J" + "a" * 60, size=10)}, "is malformed"),
        ({"published": Published(sha256="a" * 64, size=-1)}, "is malformed"),
        ({"published": Published(sha256="a" * 64, size=1 << 40)}, "over the 4294967296-byte cap"),
    ],
)
def test_malformed_metadata_is_refused_without_repeating_it(hub, shard, lie, message):
    hub.add(NAME, shard, published=lie.get("published"))
    hub.revision_answer = lie.get("revision")
    with pytest.raises(DownloadError, match=message) as caught:
        pinned(hub)
    assert "\x1b" not in str(caught.value) and "\n" not in str(caught.value)


def test_metadata_answer_over_the_cap_is_refused(hub):
    hub.revision_answer = {"sha": COMMIT, "padding": "x" * MAX_JSON_BYTES}
    with pytest.raises(DownloadError, match=f"the answer is over {MAX_JSON_BYTES} bytes"):
        resolve_revision(hub.endpoint, CLIMBMIX_REPO, "main", FAST)


def test_unknown_revision_is_a_clear_error(hub):
    with pytest.raises(DownloadError, match="HTTP 404.*check the dataset name"):
        resolve_revision(hub.endpoint, CLIMBMIX_REPO, "v9", FAST)


# -- climbmix preparation end to end --------------------------------------------------------------


def prepare_climbmix(tmp_path: Path, train_shards: int = 2) -> int:
    return prepare.main(
        [
            "--profile",
            "test",
            "--dataset",
            "climbmix",
            "--train-shards",
            str(train_shards),
            "--out",
            str(tmp_path / "data"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--download-backoff",
            "0.001",
        ]
    )


def point_at(monkeypatch, files: HubServer, api: HubServer | None = None) -> None:
    monkeypatch.setenv("OVERNIGHT_HF_BASE_URL", files.endpoint)
    monkeypatch.setenv("OVERNIGHT_HF_API_URL", (api or files).endpoint)


def test_prepare_climbmix_end_to_end_from_the_loopback_hub(hub, tmp_path, monkeypatch, capsys):
    train_texts = {index: synthetic_texts(seed=10 + index, count=150) for index in range(2)}
    val_texts = synthetic_texts(seed=99, count=60)
    for index, texts in train_texts.items():
        hub.add(climbmix_shard_name(index), parquet_bytes(texts))
    val_name = climbmix_shard_name(CLIMBMIX_VAL_SHARD)
    hub.add(val_name, parquet_bytes(val_texts), script=["drop:2000", "status:502"])
    hub.add(climbmix_shard_name(2), b"never requested")
    point_at(monkeypatch, hub)
    out = tmp_path / "data"

    code = prepare_climbmix(tmp_path)

    assert code == 0, capsys.readouterr().err
    assert hub.requests_for(climbmix_shard_name(2)) == []
    assert [r.status for r in hub.requests_for(val_name)] == [200, 502, 206]
    assert {r.revision for r in hub.requests} == {COMMIT}
    verify_manifest(out, ["train", "val"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "climbmix"
    assert manifest["source"]["val_files"] == [val_name]
    assert manifest["source"]["revision"] == COMMIT
    assert manifest["source"]["sha256"] == {
        name: hashlib.sha256(hub.files[name]).hexdigest()
        for name in (val_name, climbmix_shard_name(0), climbmix_shard_name(1))
    }
    encoding, bos = load_tokenizer(out), bos_id(out)
    decoded = {}
    for split in ("train", "val"):
        tokens = np.concatenate([np.fromfile(p, dtype="<u2") for p in shard_paths(out, split)])
        decoded[split] = encoding.decode(tokens[tokens != bos].tolist())
    assert decoded["val"] == "".join(val_texts)
    assert decoded["train"] == "".join(train_texts[0] + train_texts[1])
    assert "prepared" in capsys.readouterr().out


def test_prepare_refuses_a_mirror_whose_validation_shard_differs_from_the_hub(tmp_path, monkeypatch, capsys):
    val_name = climbmix_shard_name(CLIMBMIX_VAL_SHARD)
    real = {
        val_name: parquet_bytes(synthetic_texts(seed=99, count=60)),
        NAME: parquet_bytes(synthetic_texts(seed=1, count=150)),
    }
    with HubServer() as api, HubServer() as mirror:
        for name, data in real.items():
            api.add(name, data)
            mirror.add(name, tampered(data) if name == NAME else data)
        point_at(monkeypatch, mirror, api)
        code = prepare_climbmix(tmp_path, train_shards=1)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"prepare: error: refused {mirror.url(NAME)}: sha256 mismatch")
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "cache" / "climbmix" / NAME).exists()


def test_prepare_refuses_a_shard_without_a_published_hash_before_downloading(hub, tmp_path, monkeypatch, capsys):
    val_name = climbmix_shard_name(CLIMBMIX_VAL_SHARD)
    hub.add(val_name, b"x" * 100, published=Published(sha256=None, size=100))
    hub.add(NAME, b"y" * 100)
    point_at(monkeypatch, hub)
    assert prepare_climbmix(tmp_path, train_shards=1) == 2
    assert capsys.readouterr().err.strip() == (
        f"prepare: error: the hub published no LFS hash for {val_name}: check the dataset name/revision"
    )
    assert hub.requests == []


def test_hub_address_with_a_resolve_path_is_a_clear_error(hub, tmp_path, monkeypatch, capsys):
    legacy = f"{hub.endpoint}/datasets/{CLIMBMIX_REPO}/resolve/main"  # the old meaning
    monkeypatch.setenv("OVERNIGHT_HF_BASE_URL", legacy)
    assert prepare_climbmix(tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("prepare: error: OVERNIGHT_HF_BASE_URL must be a hub address such as https://huggingface.co")
        and "\n" not in err
    )
    assert hub.api_calls == [] and hub.requests == []
