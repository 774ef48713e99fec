"""evaluator.hostile, the one module for hostile files and strings: regular files only, no symlink
followed, no blocking on a FIFO, sizes capped on the apparent size; strings made safe for a
terminal, git, TSV and JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evaluator.hostile import (
    UnsafeFileError,
    clean_line,
    clean_text,
    copy_regular,
    open_dir_under,
    read_regular,
    read_tail,
    write_capped,
)

# --- files -------------------------------------------------------------------------------------


def test_a_symlink_is_refused_even_to_a_readable_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (tmp_path / "score.json").symlink_to(secret)
    with pytest.raises(UnsafeFileError, match="symlink"):
        read_regular(tmp_path / "score.json", 1000)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.pt2")
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        read_regular(tmp_path / "model.pt2", 1000)


def test_the_cap_is_on_the_apparent_size_before_reading(tmp_path: Path) -> None:
    with open(tmp_path / "big", "wb") as fh:
        fh.truncate(10 * 2**30)  # sparse: costs no disk, 10 GiB apparent
    with pytest.raises(UnsafeFileError, match="over the 1000-byte cap"):
        copy_regular(tmp_path / "big", tmp_path / "copy", 1000)
    assert not (tmp_path / "copy").exists()


def test_a_plain_file_is_copied_and_never_over_an_existing_one(tmp_path: Path) -> None:
    (tmp_path / "model.pt2").write_bytes(b"PK" + b"\0" * 100)
    assert copy_regular(tmp_path / "model.pt2", tmp_path / "copy.pt2", 1000) == 102
    assert (tmp_path / "copy.pt2").read_bytes() == b"PK" + b"\0" * 100
    with pytest.raises(FileExistsError):
        copy_regular(tmp_path / "model.pt2", tmp_path / "copy.pt2", 1000)


def test_a_stream_over_its_cap_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(UnsafeFileError, match="over the 10-byte cap"):
        write_capped([b"12345", b"67890", b"x"], tmp_path / "out", 10, "out")
    assert not (tmp_path / "out").exists()


def test_relative_to_a_trusted_folder_a_symlinked_component_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "train.log").write_text("ok")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "0001").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafeFileError, match="symlink or not a folder"):
        open_dir_under(tmp_path / "runs", tmp_path / "runs" / "0001")
    with pytest.raises(UnsafeFileError, match="outside"):
        open_dir_under(tmp_path / "runs", tmp_path / "real")
    fd = open_dir_under(tmp_path, tmp_path / "real")
    try:
        assert read_regular("train.log", 10, dir_fd=fd) == b"ok"
    finally:
        os.close(fd)


def test_a_tail_is_the_end_of_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "train.log").write_bytes(b"a" * 100 + b"END")
    data, size = read_tail(tmp_path / "train.log", 5)
    assert (data, size) == (b"aaEND", 103)


# --- strings ----------------------------------------------------------------------------------

HOSTILE = (
    "keep\x1b[2J\x1b]0;owned\x07\x1b[31m forged\tcolumn\nnew row\x00nul \ud800 lone "
    "\u202eevil\u202c [bold red]markup[/] \x9b2J c1 \u200bzero"
)


def test_a_hostile_line_is_one_printable_line_safe_for_tsv_git_and_json() -> None:
    line = clean_line(HOSTILE, 500)
    assert line.isprintable() and "\t" not in line and "\n" not in line
    assert "\x1b" not in line and "\x00" not in line and "\u202e" not in line and "\x9b" not in line
    line.encode("utf-8")  # no lone surrogate left: encodes strictly
    assert json.loads(json.dumps(line, ensure_ascii=False)) == line
    assert "keep" in line and "forged column new row" in line and "[bold red]markup[/]" in line


def test_clean_text_keeps_lines_but_drops_escapes() -> None:
    text = clean_text("line one\r\nline two\x1b[31m red\x1b[0m\rline three")
    assert text.splitlines() == ["line one", "line two red", "line three"]


def test_a_line_is_capped_and_an_empty_one_gets_a_placeholder() -> None:
    assert clean_line("x" * 300, 10) == "x" * 9 + "…"
    assert clean_line("\x1b[2J\x00\u202e", 10, empty="(none)") == "(none)"
