"""The ledger: autoresearch's results.tsv format exactly, append-only with fsync, atomic run.json."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from controller import safefiles
from controller.ledger import HEADER, Ledger, LedgerError, LedgerRow, clean_description, find_run
from controller.records import RunRecord


def record(n: int, commit: str, **kw) -> RunRecord:
    now = dt.datetime(2025, 11, 23, tzinfo=dt.UTC)
    base = dict(
        n=n,
        commit=commit,
        parent="0" * 40,
        tag="t1",
        program="default",
        profile="test",
        seed=0,
        agent="fake",
        status="keep",
        val_bpb=1.5,
        description="d",
        started=now,
        finished=now,
    )
    return RunRecord(**{**base, **kw})


def test_results_tsv_has_autoresearchs_columns_and_number_formats(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "t1")
    ledger.create()
    ledger.append(LedgerRow("a1b2c3d4e5", 0.99778899, 44.04, "keep", "baseline", n=0, runs=3, train_s=47.123, slot=0))
    ledger.append(LedgerRow("b2c3d4e", 0.0, 0.0, "crash", "double the width\t(OOM)\nsecond line", n=2, slot=1))
    ledger.append(
        LedgerRow(
            "c3d4e5f", 1.2, 12.345, "discard", "x" * 300, n=1, runs=2, delta="+0.001000+/-0.000500 2v3", train_s=30.0
        )
    )
    text = (tmp_path / "t1" / "results.tsv").read_text()
    lines = text.split("\n")
    # autoresearch's five columns first, in its format, then overnight's evidence
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription\tn\truns\tdelta\ttrain_s\tslot" == HEADER
    assert lines[1] == "a1b2c3d\t0.997789\t44.0\tkeep\tbaseline\t0\t3\t-\t47.1\t0"
    assert lines[2] == "b2c3d4e\t0.000000\t0.0\tcrash\tdouble the width (OOM) second line\t2\t1\t-\t0.0\t1"
    cols = lines[3].split("\t")
    assert cols[:4] == ["c3d4e5f", "1.200000", "12.3", "discard"] and len(cols[4]) == 200
    assert cols[5:] == ["1", "2", "+0.001000+/-0.000500 2v3", "30.0", "-"]
    assert text.endswith("\n") and lines[4] == ""
    assert [(r.n, r.runs, r.slot) for r in ledger.rows()] == [(0, 3, 0), (2, 1, 1), (1, 2, None)]  # decision order
    assert ledger.by_number()[1].commit == "c3d4e5f"
    assert [r.status for r in ledger.rows()] == ["keep", "crash", "discard"]


def test_a_torn_last_line_is_dropped_on_repair(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "t1")
    ledger.create()
    ledger.append(LedgerRow("a1b2c3d", 1.0, 1.0, "keep", "baseline"))
    with open(ledger.path, "a") as f:
        f.write("b2c3d4e\t0.99")  # a kill in the middle of a write
    assert len(ledger.rows()) == 1  # a reader never sees it
    ledger.repair()
    assert ledger.path.read_text().endswith("baseline\t0\t1\t-\t0.0\t-\n")
    ledger.append(LedgerRow("b2c3d4e", 0.9, 1.0, "keep", "next", n=1))
    assert [r.commit for r in ledger.rows()] == ["a1b2c3d", "b2c3d4e"]


def test_rows_must_parse(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "t1")
    ledger.create()
    with open(ledger.path, "a") as f:
        f.write("a1b2c3d\t1.0\t1.0\tbest\tx\n")
    with pytest.raises(LedgerError, match="malformed results.tsv row"):
        ledger.rows()


def test_append_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(tmp_path / "t1")
    ledger.create()
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    ledger.append(LedgerRow("a1b2c3d", 1.0, 1.0, "keep", "baseline"))
    assert synced


def test_run_json_round_trips_and_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(tmp_path / "t1")
    first = record(3, "a" * 40, val_bpb=1.25)
    path = ledger.write_record(first)
    assert path == tmp_path / "t1" / f"0003-{'a' * 7}" / "run.json"
    assert ledger.read_record(3, "a" * 40) == first

    def crash_on_rename(src, dst):
        raise OSError("disk gone")  # a kill or a failure between write and rename

    monkeypatch.setattr(safefiles.os, "replace", crash_on_rename)
    with pytest.raises(OSError):
        ledger.write_record(record(3, "a" * 40, val_bpb=9.0))
    assert ledger.read_record(3, "a" * 40) == first  # the old record, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json"]  # no temp file left behind


def test_run_json_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "t1")
    target = tmp_path / "secret.json"
    target.write_text(record(3, "a" * 40).model_dump_json())
    run_dir = ledger.run_dir(3, "a" * 40)
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").symlink_to(target)
    with pytest.raises(LedgerError, match="symlink"):
        ledger.read_record(3, "a" * 40)


def test_read_tail_is_capped_clean_and_refuses_symlinks(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_bytes(b"first line\n" + b"x" * 5000 + b"\n\x1b[31mred\x1b[0m last\n")
    tail = safefiles.read_tail(log, 100)
    assert tail.endswith("red last\n") and "\x1b" not in tail and "[31m" not in tail and "first" not in tail
    (tmp_path / "link.log").symlink_to(log)
    assert safefiles.read_tail(tmp_path / "link.log") == "[link.log is a symlink; refused]"  # never followed
    assert safefiles.read_tail(tmp_path / "missing.log") == ""


def test_find_run_by_number_or_commit_prefix_across_tags(tmp_path: Path) -> None:
    for tag, commits in (("t1", ["aaaa111", "bbbb222"]), ("t2", ["cccc333", "bbbb999"])):
        ledger = Ledger(tmp_path / tag)
        ledger.create()
        for n, c in enumerate(commits):
            ledger.append(LedgerRow(c, 1.0, 1.0, "keep", c, n=n))
    os.utime(tmp_path / "t2" / "results.tsv", (1, 1))  # t1 is the latest tag
    assert find_run(tmp_path, "1").row.commit == "bbbb222"
    assert find_run(tmp_path, "1", tag="t2").row.commit == "bbbb999"
    loc = find_run(tmp_path, "cccc")
    assert (loc.tag, loc.n, loc.run_dir.name) == ("t2", 0, "0000-cccc333")
    with pytest.raises(LedgerError, match="ambiguous"):
        find_run(tmp_path, "bbbb")
    with pytest.raises(LedgerError, match="no run of commit dddd"):
        find_run(tmp_path, "dddd")
    with pytest.raises(LedgerError, match="there is no 7"):
        find_run(tmp_path, "7")
    with pytest.raises(LedgerError, match="neither an experiment number nor a commit"):
        find_run(tmp_path, "zz")


def test_clean_description() -> None:
    assert clean_description("  a\tb\n c  ") == "a b c"
    assert clean_description("") == "(no description)"
