"""progress.png of a tag, as in autoresearch's progress plot: every experiment a dot, discarded ones
grey, kept ones green and joined by the running best as a step line, failed runs (crash,
timeout, rejected) as red crosses along the bottom.

The x axis is the decision order (the row in results.tsv), which is monotone in time even when
experiments finish out of their numbers' order (several slots); kept points are labelled with
their experiment number #n. A replicated experiment (calibration or confirmation runs, from its
run.json) is drawn at its mean with an error bar of +/- one standard deviation of its runs. The
latest `make verify` (verify.json) is drawn at the right edge: the baseline and the best as
points with error bars over bands of +/- one standard deviation. Scores far above the rest (a
diverged run) are drawn as triangles on the top edge so they do not squash the plot."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from controller.ledger import Ledger, LedgerError, LedgerRow, clean_description  # noqa: E402
from controller.noise import NoiseError, Replicates, summarize  # noqa: E402
from controller.safefiles import atomic_write_bytes  # noqa: E402
from controller.verify import VerifyRecord, read_verify  # noqa: E402

PROGRESS = "progress.png"
LABEL_CHARS = 40
DESCRIBED_KEEPS = 25  # more keeps than this: labelled with their number only
OUTLIER_QUANTILE = 95  # the discarded up to this percentile set the range a "far above" score exceeds
KEEP_COLOR, DISCARD_COLOR, FAIL_COLOR = "#2ca02c", "#b0b0b0", "#d62728"
BASELINE_COLOR = "#1f77b4"
SPREAD_LABEL = "+/-1 std of replicated runs"


@dataclass(frozen=True)
class ProgressPlot:
    path: Path
    points: int  # dots and crosses drawn: one per ledger row
    kept: int
    discarded: int
    failed: int
    replicated: int = 0  # points drawn with an error bar of their runs' spread
    verified: bool = False  # the latest verify is drawn


def replicate_spreads(tag_dir: Path, rows: list[LedgerRow]) -> dict[int, Replicates]:
    """Row index -> its runs summarized, for every scored row averaged over 2+ runs (from its
    run.json; rows whose record cannot be read are drawn without a bar)."""
    ledger = Ledger(tag_dir)
    spreads: dict[int, Replicates] = {}
    for i, row in enumerate(rows):
        if not row.scored or row.runs < 2:
            continue
        try:
            record = ledger.read_record(row.n, row.commit)
        except LedgerError:
            continue
        values = [r.val_bpb for r in (record.replicates if record else []) if r.status == "ok" and r.val_bpb is not None]
        try:
            summary = summarize(values) if len(values) >= 2 else None
        except NoiseError:
            continue
        if summary is not None and summary.std is not None:
            spreads[i] = summary
    return spreads


def _sizes(count: int) -> tuple[float, float]:
    """Marker areas (discarded, kept): smaller on long nights so 300+ points stay apart."""
    scale = min(1.0, max(0.3, 100 / max(count, 1)))
    return 22 * scale, 40 * max(scale, 0.5)


def _label(row: LedgerRow, described: bool) -> str:
    if not described:
        return f"#{row.n}"
    text = clean_description(row.description)
    text = text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"
    return f"#{row.n} {text}"


def draw_progress(tag: str, rows: list[LedgerRow], spreads: dict[int, Replicates] | None = None,
                  verify: VerifyRecord | None = None) -> Figure:
    """The figure for `rows` (the ledger of `tag`, in decision order); the caller closes it."""
    if not rows:
        raise ValueError(f"tag {tag} has no experiments yet: nothing to plot")
    spreads = {i: s for i, s in (spreads or {}).items() if 0 <= i < len(rows) and rows[i].scored}
    kept = [i for i, r in enumerate(rows) if r.status == "keep"]
    discarded = [i for i, r in enumerate(rows) if r.status == "discard"]
    failed = [i for i, r in enumerate(rows) if not r.scored]
    width = min(24.0, max(12.0, 12.0 + (len(rows) - 100) / 25))
    fig, ax = plt.subplots(figsize=(width, 6), dpi=120)
    s_discard, s_keep = _sizes(len(rows))

    # What the y axis must show: every keep, the bars, verify; discarded scores up to a high percentile.
    must = [rows[i].val_bpb for i in kept]
    must += [v for s in spreads.values() for v in (s.mean - (s.std or 0.0), s.mean + (s.std or 0.0))]
    verify_sides = _verify_sides(verify)
    must += [v for _, s, _ in verify_sides for v in (s.mean - (s.std or 0.0), s.mean + (s.std or 0.0))]
    shown, above = _split_far_above([rows[i].val_bpb for i in discarded], discarded, must)

    if shown:
        ax.scatter(shown, [rows[i].val_bpb for i in shown], s=s_discard, color=DISCARD_COLOR,
                   label=f"discarded ({len(discarded)})", zorder=2)
    if above:
        edge = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(above, [0.985] * len(above), marker="^", s=s_discard * 1.2, color="#808080", transform=edge,
                   clip_on=False, label=f"discarded, far above ({len(above)})", zorder=2)
    if spreads:
        xs = sorted(spreads)
        ax.errorbar(xs, [rows[i].val_bpb for i in xs], yerr=[spreads[i].std or 0.0 for i in xs], fmt="none",
                    ecolor="#555555", elinewidth=1.0, capsize=2.5, zorder=3, label=SPREAD_LABEL)
    if kept:
        ys = [rows[i].val_bpb for i in kept]
        ax.step([*kept, len(rows) - 1], [*ys, ys[-1]], where="post", color=KEEP_COLOR, linewidth=1.6, zorder=3,
                label="running best")
        ax.scatter(kept, ys, s=s_keep, color=KEEP_COLOR, edgecolor="black", linewidth=0.5,
                   label=f"kept ({len(kept)})", zorder=4)
        described = len(kept) <= DESCRIBED_KEEPS
        for i in kept[1:]:
            ax.annotate(_label(rows[i], described), (i, rows[i].val_bpb), xytext=(4, 6), textcoords="offset points",
                        fontsize=7 if described else 6, rotation=20, color="#1b6e1b")
    if failed:
        bottom = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(failed, [0.03] * len(failed), marker="x", s=s_discard * 1.4, color=FAIL_COLOR, transform=bottom,
                   label=f"crash / timeout / rejected ({len(failed)})", zorder=4)

    right = max(len(rows) - 0.5, 1)
    if verify_sides:
        right = _draw_verify(ax, verify, verify_sides, len(rows))

    values = must + [rows[i].val_bpb for i in shown]
    if values:
        low, high = min(values), max(values)
        pad = (high - low) * 0.08 or max(abs(high) * 0.01, 1e-3)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlim(-0.5, right)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiments in decision order (row of results.tsv); kept ones labelled #experiment number")
    ax.set_ylabel("val_bpb (lower is better)")
    best = f", best {rows[kept[-1]].val_bpb:.6f} (#{rows[kept[-1]].n})" if kept else ""
    ax.set_title(f"overnight {tag}: {len(rows)} experiments, {len(kept)} kept{best}" + _verify_title(verify))
    ax.grid(True, alpha=0.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, borderaxespad=0.0)
    return fig


def _split_far_above(values: list[float], indices: list[int], must: list[float]) -> tuple[list[int], list[int]]:
    """(shown, far above) of the discarded points: far above is more than the whole range of what
    must be shown (every keep, the bars, verify, the discarded up to their 95th percentile) above it."""
    if not values:
        return indices, []
    bulk = [*must, float(np.percentile(values, OUTLIER_QUANTILE)), min(values)]
    top, low = max(bulk), min(bulk)
    limit = top + (top - low)
    return [i for i, v in zip(indices, values) if v <= limit], [i for i, v in zip(indices, values) if v > limit]


def _verify_sides(verify: VerifyRecord | None) -> list[tuple[str, Replicates, str]]:
    """(label, runs summarized, colour) of each verified commit that scored."""
    if verify is None:
        return []
    sides = []
    if verify.baseline is not None:
        sides.append((f"verify: baseline #{verify.baseline_n}", verify.baseline, BASELINE_COLOR))
    if verify.best is not None and verify.best_n is not None:
        sides.append((f"verify: best #{verify.best_n}", verify.best, KEEP_COLOR))
    return sides


def _draw_verify(ax: Axes, verify: VerifyRecord | None, sides: list[tuple[str, Replicates, str]],
                 count: int) -> float:
    """Bands of +/- one std across the plot and a point with its error bar at the right edge,
    per verified commit; returns the new right end of the x axis."""
    x = count - 0.5 + max(1.0, count * 0.03)
    for label, summary, color in sides:
        std = summary.std or 0.0
        if std > 0:
            ax.axhspan(summary.mean - std, summary.mean + std, color=color, alpha=0.10, zorder=1)
        ax.axhline(summary.mean, color=color, linewidth=0.8, linestyle="--", alpha=0.7, zorder=1)
        text = f"{label}: {summary.mean:.4f} +/- {std:.4f} (n={summary.n})" if summary.std is not None else \
            f"{label}: {summary.mean:.4f} (n=1)"
        ax.errorbar([x], [summary.mean], yerr=[std], fmt="D", color=color, markeredgecolor="black",
                    markersize=6, capsize=5, elinewidth=1.6, zorder=5, label=text)
    ax.text(x, 0.01, "verify", transform=blended_transform_factory(ax.transData, ax.transAxes), ha="center",
            va="bottom", fontsize=7, color="#333333")
    return x + max(1.0, count * 0.03)


def _verify_title(verify: VerifyRecord | None) -> str:
    if verify is None or verify.improvement_bpb is None or verify.baseline is None or verify.best is None:
        return ""
    se = f" +/- {verify.improvement_se:.4f}" if verify.improvement_se is not None else ""
    return (f"\nverified improvement {verify.improvement_bpb:+.4f}{se} bpb "
            f"(best #{verify.best_n} {verify.best.n} runs vs baseline {verify.baseline.n})")


def render_progress(tag: str, rows: list[LedgerRow], path: Path, spreads: dict[int, Replicates] | None = None,
                    verify: VerifyRecord | None = None) -> ProgressPlot:
    """Write the plot for `rows` (the ledger of `tag`) to `path` (atomically)."""
    fig = draw_progress(tag, rows, spreads, verify)
    try:
        ax = fig.axes[0]
        points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    drawn = {i for i in (spreads or {}) if 0 <= i < len(rows) and rows[i].scored}
    return ProgressPlot(path=path, points=points, kept=sum(r.status == "keep" for r in rows),
                        discarded=sum(r.status == "discard" for r in rows), failed=sum(not r.scored for r in rows),
                        replicated=len(drawn), verified=bool(_verify_sides(verify)))


def write_report(tag_dir: Path, rows: list[LedgerRow]) -> ProgressPlot:
    tag_dir = Path(tag_dir)
    return render_progress(tag_dir.name, rows, tag_dir / PROGRESS, replicate_spreads(tag_dir, rows),
                           read_verify(tag_dir))
