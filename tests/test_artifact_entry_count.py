"""The artifact's entry count is read from the zip end records before zipfile lists the entries,
with the public format (PKWARE APPNOTE) instead of zipfile's private helpers, and finds the
same count zipfile then trusts: plain archives, archive comments, zip64 records, and not-a-zip."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

from evaluator.artifact import (
    ArtifactLimits,
    ArtifactRejected,
    declared_entry_count,
    index_archive,
)

END = struct.Struct("<4s4H2LH")
LOCATOR = struct.Struct("<4sLQL")
END64 = struct.Struct("<4sQ2H2L4Q")


def plain_zip(entries: int, comment: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(entries):
            zf.writestr(f"root/e{i}", b"x")
        zf.comment = comment
    return buf.getvalue()


def as_zip64(archive: bytes, total: int, *, disk: int = 0, disks: int = 1) -> bytes:
    """The same archive with a zip64 record and locator before its end record, the end record's
    counts set to 0xFFFF as zip writers do when the zip64 record holds them."""
    end_at = len(archive) - END.size
    _, _, _, _, _, cd_size, cd_offset, _ = END.unpack(archive[end_at:])
    record = END64.pack(b"PK\x06\x06", END64.size - 12, 45, 45, 0, 0, total, total, cd_size, cd_offset)
    locator = LOCATOR.pack(b"PK\x06\x07", disk, end_at, disks)
    end = END.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, cd_size, cd_offset, 0)
    return archive[:end_at] + record + locator + end


def count(data: bytes) -> int | None:
    return declared_entry_count(io.BytesIO(data))


@pytest.mark.parametrize("entries", [0, 1, 7, 300])
def test_count_of_a_plain_archive_is_its_number_of_entries(entries):
    data = plain_zip(entries)
    assert count(data) == entries == len(zipfile.ZipFile(io.BytesIO(data)).infolist())


def test_count_is_found_behind_an_archive_comment():
    comment = b"PK\x05 almost a signature " * 100
    assert count(plain_zip(5, comment)) == 5


def test_the_last_end_signature_in_a_comment_is_the_one_read():
    fake_end = END.pack(b"PK\x05\x06", 0, 0, 9999, 9999, 0, 0, 0)
    data = plain_zip(3, b"note " + fake_end)
    assert count(data) == 9999  # as zipfile, which assumes the signature is not inside the comment


def test_count_of_a_zip64_archive_comes_from_its_zip64_record():
    data = as_zip64(plain_zip(4), 4)
    assert len(zipfile.ZipFile(io.BytesIO(data)).infolist()) == 4
    assert count(data) == 4


def test_an_inflated_zip64_count_is_refused_before_the_entries_are_listed(tmp_path: Path):
    path = tmp_path / "model.pt2"
    path.write_bytes(as_zip64(plain_zip(4), 5_000_000))
    with path.open("rb") as f, pytest.raises(ArtifactRejected, match="5000000 entries"):
        index_archive(f, path.stat().st_size, ArtifactLimits())


@pytest.mark.parametrize("data", [b"", b"PK\x05\x06", b"not a zip at all" * 50, b"\x00" * (1 << 17)])
def test_a_file_without_an_end_record_has_no_count(data):
    assert count(data) is None


def test_an_end_record_cut_short_has_no_count():
    assert count(b"junk" * 10 + b"PK\x05\x06" + b"\x00" * 10) is None


def test_an_archive_spanning_several_disks_is_not_a_valid_zip():
    data = as_zip64(plain_zip(2), 2, disks=2)
    with pytest.raises(zipfile.BadZipFile, match="span multiple disks"):
        count(data)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(data))


def test_count_matches_what_zipfile_itself_reads_from_the_end_records(tmp_path: Path):
    stdlib_end_record = getattr(zipfile, "_EndRecData", None)  # private: only to compare against here
    if stdlib_end_record is None:
        pytest.skip("this Python's zipfile has no _EndRecData to compare against")
    cases = [
        plain_zip(0),
        plain_zip(3),
        plain_zip(3, b"c" * 65_535),
        plain_zip(3, b"c" * 60_000),
        as_zip64(plain_zip(4), 4),
        as_zip64(plain_zip(4), 123_456),
        b"",
        b"x" * 21,
        b"x" * 100_000,
        b"junk" + b"PK\x05\x06" + b"\x00" * 10,
    ]
    for i, data in enumerate(cases):
        end = stdlib_end_record(io.BytesIO(data))
        assert count(data) == (None if end is None else end[4])
        path = tmp_path / f"case{i}.pt2"  # a real file, as the artifact is read (seeks past its start fail)
        path.write_bytes(data)
        with path.open("rb") as f:
            assert declared_entry_count(f) == (None if end is None else end[4])
