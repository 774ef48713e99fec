"""progress.png: one point per ledger row, kept ones joined as the running best."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.ledger import Ledger, LedgerRow
from controller.report import render_progress, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rows() -> list[LedgerRow]:
    return [
        LedgerRow("a000000", 1.20, 2.0, "keep", "baseline"),
        LedgerRow("a000001", 1.25, 2.0, "discard", "worse"),
        LedgerRow("a000002", 1.10, 2.1, "keep", "better"),
        LedgerRow("a000003", 0.0, 0.0, "crash", "oom"),
        LedgerRow("a000004", 0.0, 2.0, "timeout", "slow"),
        LedgerRow("a000005", 0.0, 2.0, "rejected", "peeks ahead"),
        LedgerRow("a000006", 1.05, 2.2, "keep", "even better"),
        LedgerRow("a000007", 1.06, 2.2, "discard", "not quite"),
    ]


def test_progress_png_has_one_point_per_row(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "t1")
    ledger.create()
    for row in rows():
        ledger.append(row)
    plot = write_report(ledger.tag_dir, ledger.rows())
    assert plot.path == tmp_path / "t1" / "progress.png"
    data = plot.path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert plot.points == len(ledger.rows()) == 8
    assert (plot.kept, plot.discarded, plot.failed) == (3, 2, 3)
    assert not [p for p in plot.path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_all_crashes_still_plot(tmp_path: Path) -> None:
    plot = render_progress("t", [LedgerRow("a000000", 0.0, 0.0, "crash", "x")] * 3, tmp_path / "p.png")
    assert plot.points == 3 and plot.failed == 3
    assert (tmp_path / "p.png").read_bytes().startswith(PNG_MAGIC)


def test_an_empty_ledger_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no experiments yet"):
        render_progress("t", [], tmp_path / "p.png")
