"""progress.png of a tag, as in autoresearch's progress plot: every experiment a dot over its
number, discarded ones grey, kept ones green and joined by the running best as a step line,
failed runs (crash, timeout, rejected) as red crosses along the bottom."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from controller.ledger import LedgerRow, clean_description  # noqa: E402
from controller.safefiles import atomic_write_bytes  # noqa: E402

PROGRESS = "progress.png"
LABEL_CHARS = 40


@dataclass(frozen=True)
class ProgressPlot:
    path: Path
    points: int  # dots and crosses drawn: one per ledger row
    kept: int
    discarded: int
    failed: int


def render_progress(tag: str, rows: list[LedgerRow], path: Path) -> ProgressPlot:
    """Write the plot for `rows` (the ledger of `tag`) to `path` (atomically)."""
    if not rows:
        raise ValueError(f"tag {tag} has no experiments yet: nothing to plot")
    kept = [(n, r.val_bpb) for n, r in enumerate(rows) if r.status == "keep"]
    discarded = [(n, r.val_bpb) for n, r in enumerate(rows) if r.status == "discard"]
    failed = [n for n, r in enumerate(rows) if not r.scored]

    fig, ax = plt.subplots(figsize=(12, 6), dpi=120)
    if discarded:
        ax.scatter([n for n, _ in discarded], [v for _, v in discarded], s=22, color="#b0b0b0",
                   label=f"discarded ({len(discarded)})", zorder=2)
    if kept:
        xs, ys = [n for n, _ in kept], [v for _, v in kept]
        step_x, step_y = [*xs, len(rows) - 1], [*ys, ys[-1]]
        ax.step(step_x, step_y, where="post", color="#2ca02c", linewidth=1.6, zorder=3, label="running best")
        ax.scatter(xs, ys, s=40, color="#2ca02c", edgecolor="black", linewidth=0.5, label=f"kept ({len(kept)})",
                   zorder=4)
        for n, y in kept[1:]:
            text = clean_description(rows[n].description)
            text = text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"
            ax.annotate(text, (n, y), xytext=(4, 6), textcoords="offset points", fontsize=7, rotation=20,
                        color="#1b6e1b")
    if failed:
        bottom = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(failed, [0.03] * len(failed), marker="x", s=30, color="#d62728", transform=bottom,
                   label=f"crash / timeout / rejected ({len(failed)})", zorder=4)
    scored = [v for _, v in kept + discarded]
    if scored:
        low, high = min(scored), max(scored)
        pad = (high - low) * 0.08 or max(abs(high) * 0.01, 1e-3)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlim(-0.5, max(len(rows) - 0.5, 1))
    ax.set_xlabel("experiment")
    ax.set_ylabel("val_bpb (lower is better)")
    best = f", best {kept[-1][1]:.6f}" if kept else ""
    ax.set_title(f"overnight {tag}: {len(rows)} experiments, {len(kept)} kept{best}")
    ax.grid(True, alpha=0.25)
    ax.legend(loc="upper right", fontsize=8)
    points = sum(len(c.get_offsets()) for c in ax.collections)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return ProgressPlot(path=path, points=points, kept=len(kept), discarded=len(discarded), failed=len(failed))


def write_report(tag_dir: Path, rows: list[LedgerRow]) -> ProgressPlot:
    return render_progress(tag_dir.name, rows, tag_dir / PROGRESS)
