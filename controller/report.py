"""progress.png of a tag, as in autoresearch's progress plot: every experiment a dot over its
number, discarded ones grey, kept ones green and joined by the running best as a step line,
failed runs (crash, timeout, rejected) as red crosses along the bottom.

The x axis is the experiment number (row.n of results.tsv, the order experiments were committed;
with several slots rows are decided out of that order, and a number still in flight, or never
decided, is a gap). Every scored point carries an error bar of +/- one standard error of its value:
the tag's pooled run-to-run noise sigma / sqrt(runs averaged) (calibration, confirmation runs,
replays and verify runs pooled, controller.noise.pooled_noise), or, before any noise was
measured, the spread of the point's own runs when it has several; none on a deterministic
profile. The latest verify (verify.json) is drawn at the right edge: the baseline and the best as
points +/- their standard error over bands of the same width. Scores far above the rest (a
diverged run) are drawn as triangles on the top edge so they do not squash the plot.

Old ledgers (autoresearch's five columns, or those plus train_s) plot too: their rows are
numbered in order (those nights ran one experiment at a time) and carry no bars."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
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

from controller.ledger import (  # noqa: E402
    AUTORESEARCH_COLUMNS,
    HEADER,
    STATUSES,
    Ledger,
    LedgerError,
    LedgerRow,
    clean_description,
)
from controller.noise import NoiseError, pooled_noise, summarize  # noqa: E402
from controller.safefiles import atomic_write_bytes, read_regular  # noqa: E402
from controller.verify import VerifyRecord, read_verify, tag_replays  # noqa: E402
from evaluator.profiles import get_profile  # noqa: E402

PROGRESS = "progress.png"
LABEL_CHARS = 40
DESCRIBED_KEEPS = 25  # more keeps than this: labelled with their number only
OUTLIER_QUANTILE = 95  # the discarded up to this percentile set the range a "far above" score exceeds
KEEP_COLOR, DISCARD_COLOR, FAIL_COLOR = "#2ca02c", "#b0b0b0", "#d62728"
BASELINE_COLOR = "#1f77b4"
OLD_HEADERS = ("\t".join(AUTORESEARCH_COLUMNS), "\t".join((*AUTORESEARCH_COLUMNS, "train_s")))
MAX_LEDGER_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ProgressPlot:
    path: Path
    points: int  # dots and crosses drawn: one per ledger row
    kept: int
    discarded: int
    failed: int
    bars: int = 0  # scored points drawn with an error bar
    replicated: int = 0  # of those, points averaged over 2+ runs
    verified: bool = False  # the latest verify is drawn


@dataclass(frozen=True)
class PointErrors:
    """+/- one standard error per experiment number, and where the numbers come from."""

    se: dict[int, float] = field(default_factory=dict)
    source: str = "no noise measured"


def read_rows(tag_dir: Path) -> list[LedgerRow]:
    """The tag's rows, from a ledger of this version (Ledger.rows) or an older one."""
    ledger = Ledger(tag_dir)
    try:
        return ledger.rows()
    except LedgerError:
        text = read_regular(ledger.path, MAX_LEDGER_BYTES).decode("utf-8", "replace")
        lines = text.split("\n")
        if lines[0] not in OLD_HEADERS:
            raise
        return [_old_row(i, line) for i, line in enumerate(x for x in lines[1:-1] if x)]


def _old_row(i: int, line: str) -> LedgerRow:
    parts = line.split("\t")
    if len(parts) not in (5, 6) or parts[3] not in STATUSES:
        raise LedgerError(f"malformed results.tsv row {i + 1}: expected the columns of {HEADER!r} or an older header")
    try:
        return LedgerRow(
            parts[0],
            float(parts[1]),
            float(parts[2]),
            parts[3],
            parts[4],
            n=i,
            train_s=float(parts[5]) if len(parts) == 6 else 0.0,
        )
    except ValueError:
        raise LedgerError(f"malformed results.tsv row {i + 1}: a number column is not a number") from None


def point_errors(tag_dir: Path, rows: list[LedgerRow]) -> PointErrors:
    """The error bar of every scored row (keyed by row.n): the tag's pooled noise sigma over
    sqrt(runs averaged); before the noise was measured, a row's own runs' SE when it has 2+;
    nothing on a deterministic profile. Rows whose run.json cannot be read still get the pooled bar."""
    ledger = Ledger(tag_dir)
    own: dict[int, float] = {}
    groups: dict[str, list[float]] = {}
    for row in rows:
        if not row.scored:
            continue
        try:
            record = ledger.read_record(row.n, row.commit)
        except LedgerError:
            continue
        if record is None:
            continue
        if get_profile(record.profile).max_steps is not None:
            return PointErrors(source="deterministic profile: no run-to-run noise")
        values = [r.val_bpb for r in record.own_replicates if r.status == "ok" and r.val_bpb is not None]
        groups.setdefault(record.commit, []).extend(values)
        for r in record.replicates:  # runs of the best alongside this one: replicates of the best
            if r.of_commit is not None and r.status == "ok" and r.val_bpb is not None:
                groups.setdefault(r.of_commit, []).append(r.val_bpb)
        if len(values) >= 2:
            try:
                summary = summarize(values)
            except NoiseError:
                continue
            if summary.se is not None:
                own[row.n] = summary.se
    for rep in tag_replays(Path(tag_dir)):
        if rep.status == "ok" and rep.replayed_val_bpb is not None:
            groups.setdefault(rep.commit, []).append(rep.replayed_val_bpb)
    try:
        noise = pooled_noise(groups)
    except NoiseError:
        noise = None
    if noise is not None and noise.sigma is not None:
        se = {row.n: noise.sigma / math.sqrt(max(row.runs, 1)) for row in rows if row.scored}
        return PointErrors(se=se, source=f"+/-1 SE: pooled noise sigma {noise.sigma:.4f} ({noise.df} df) / sqrt(runs)")
    if own:
        return PointErrors(se=own, source="+/-1 SE of the point's own runs")
    return PointErrors()


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


def draw_progress(
    tag: str, rows: list[LedgerRow], errors: PointErrors | None = None, verify: VerifyRecord | None = None
) -> Figure:
    """The figure for `rows` (the ledger of `tag`, in decision order), each at x = row.n; the
    caller closes it."""
    if not rows:
        raise ValueError(f"tag {tag} has no experiments yet: nothing to plot")
    errors = errors or PointErrors()
    kept = [r for r in rows if r.status == "keep"]
    discarded = [r for r in rows if r.status == "discard"]
    failed = [r for r in rows if not r.scored]
    barred = [r for r in rows if r.scored and r.n in errors.se]
    last = max(r.n for r in rows)
    width = min(24.0, max(12.0, 12.0 + (last - 100) / 25))
    fig, ax = plt.subplots(figsize=(width, 6), dpi=120)
    s_discard, s_keep = _sizes(len(rows))

    # What the y axis must show: every keep, the bars, verify; discarded scores up to a high percentile.
    must = [r.val_bpb for r in kept]
    must += [v for r in barred for v in (r.val_bpb - errors.se[r.n], r.val_bpb + errors.se[r.n])]
    verify_sides = _verify_sides(verify)
    must += [v for _, mean, se, _ in verify_sides for v in (mean - se, mean + se)]
    shown, above = _split_far_above(discarded, must)

    if shown:
        ax.scatter(
            [r.n for r in shown],
            [r.val_bpb for r in shown],
            s=s_discard,
            color=DISCARD_COLOR,
            label=f"discarded ({len(discarded)})",
            zorder=2,
        )
    if above:
        edge = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(
            [r.n for r in above],
            [0.985] * len(above),
            marker="^",
            s=s_discard * 1.2,
            color="#808080",
            transform=edge,
            clip_on=False,
            label=f"discarded, far above ({len(above)})",
            zorder=2,
        )
    far = {id(r) for r in above}
    drawn = [r for r in barred if id(r) not in far]
    if drawn:
        ax.errorbar(
            [r.n for r in drawn],
            [r.val_bpb for r in drawn],
            yerr=[errors.se[r.n] for r in drawn],
            fmt="none",
            ecolor="#555555",
            elinewidth=1.0,
            capsize=2.5,
            zorder=3,
            label=errors.source,
        )
    if kept:
        ys = [r.val_bpb for r in kept]
        ax.step(
            [*[r.n for r in kept], last],
            [*ys, ys[-1]],
            where="post",
            color=KEEP_COLOR,
            linewidth=1.6,
            zorder=3,
            label="running best",
        )
        ax.scatter(
            [r.n for r in kept],
            ys,
            s=s_keep,
            color=KEEP_COLOR,
            edgecolor="black",
            linewidth=0.5,
            label=f"kept ({len(kept)})",
            zorder=4,
        )
        described = len(kept) <= DESCRIBED_KEEPS
        for r in kept[1:]:
            ax.annotate(
                _label(r, described),
                (r.n, r.val_bpb),
                xytext=(4, 6),
                textcoords="offset points",
                fontsize=7 if described else 6,
                rotation=20,
                color="#1b6e1b",
            )
    if failed:
        bottom = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(
            [r.n for r in failed],
            [0.03] * len(failed),
            marker="x",
            s=s_discard * 1.4,
            color=FAIL_COLOR,
            transform=bottom,
            label=f"crash / timeout / rejected ({len(failed)})",
            zorder=4,
        )

    right = last + 0.5
    if verify_sides:
        right = _draw_verify(ax, verify_sides, last)

    values = must + [r.val_bpb for r in shown]
    if values:
        low, high = min(values), max(values)
        pad = (high - low) * 0.08 or max(abs(high) * 0.01, 1e-3)
        ax.set_ylim(low - pad, high + pad)
    first = min(r.n for r in rows)
    ax.set_xlim(first - 0.5, max(right, 1.0))
    ax.set_xticks([t for t in MaxNLocator(integer=True).tick_values(first, last) if first <= t <= last])
    ax.set_xlabel("experiment number (#n in results.tsv)")
    ax.set_ylabel("val_bpb (lower is better)")
    best = f", best {kept[-1].val_bpb:.6f} (#{kept[-1].n})" if kept else ""
    ax.set_title(f"overnight {tag}: {len(rows)} experiments, {len(kept)} kept{best}" + _verify_title(verify))
    ax.grid(True, alpha=0.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, borderaxespad=0.0)
    return fig


def _split_far_above(discarded: list[LedgerRow], must: list[float]) -> tuple[list[LedgerRow], list[LedgerRow]]:
    """(shown, far above) of the discarded rows: far above is more than the whole range of what
    must be shown (every keep, the bars, verify, the discarded up to their 95th percentile) above it."""
    if not discarded:
        return [], []
    values = [r.val_bpb for r in discarded]
    bulk = [*must, float(np.percentile(values, OUTLIER_QUANTILE)), min(values)]
    top, low = max(bulk), min(bulk)
    limit = top + (top - low)
    return [r for r in discarded if r.val_bpb <= limit], [r for r in discarded if r.val_bpb > limit]


def _verify_sides(verify: VerifyRecord | None) -> list[tuple[str, float, float, str]]:
    """(label, mean, standard error, colour) of each verified commit that scored."""
    if verify is None:
        return []
    x, sides = verify.numbers, []
    if x.baseline is not None:
        sides.append(
            (
                f"verify: baseline #{verify.baseline_n}",
                x.baseline.mean,
                x.baseline_se or 0.0,
                BASELINE_COLOR,
                x.baseline.n,
            )
        )
    if x.best is not None and verify.best_n is not None:
        sides.append((f"verify: best #{verify.best_n}", x.best.mean, x.best_se or 0.0, KEEP_COLOR, x.best.n))
    return [(f"{label}: {mean:.4f} +/- {se:.4f} (n={n})", mean, se, color) for label, mean, se, color, n in sides]


def _draw_verify(ax: Axes, sides: list[tuple[str, float, float, str]], last: int) -> float:
    """Bands of +/- one standard error across the plot and a point with its error bar at the
    right edge, per verified commit; returns the new right end of the x axis."""
    step = max(1.0, (last + 1) * 0.03)
    x = last + 0.5 + step
    for label, mean, se, color in sides:
        if se > 0:
            ax.axhspan(mean - se, mean + se, color=color, alpha=0.10, zorder=1)
        ax.axhline(mean, color=color, linewidth=0.8, linestyle="--", alpha=0.7, zorder=1)
        ax.errorbar(
            [x],
            [mean],
            yerr=[se],
            fmt="D",
            color=color,
            markeredgecolor="black",
            markersize=6,
            capsize=5,
            elinewidth=1.6,
            zorder=5,
            label=label,
        )
    ax.text(
        x,
        0.01,
        "verify",
        transform=blended_transform_factory(ax.transData, ax.transAxes),
        ha="center",
        va="bottom",
        fontsize=7,
        color="#333333",
    )
    return x + step


def _verify_title(verify: VerifyRecord | None) -> str:
    if (
        verify is None
        or verify.numbers.improvement is None
        or verify.numbers.baseline is None
        or verify.numbers.best is None
    ):
        return ""
    x = verify.numbers
    best = x.best
    se = f" +/- {x.se:.4f}" if x.se is not None else ""
    return (
        f"\nverified improvement {x.improvement:+.4f}{se} bpb, {x.verdict} "
        f"(best #{verify.best_n} {best.n if best is not None else 0} runs vs baseline "
        f"{x.baseline.n if x.baseline is not None else 0})"
    )


def render_progress(
    tag: str, rows: list[LedgerRow], path: Path, errors: PointErrors | None = None, verify: VerifyRecord | None = None
) -> ProgressPlot:
    """Write the plot for `rows` (the ledger of `tag`) to `path` (atomically)."""
    fig = draw_progress(tag, rows, errors, verify)
    try:
        ax = fig.axes[0]
        points = sum(int(np.asarray(c.get_offsets()).shape[0]) for c in ax.collections if isinstance(c, PathCollection))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    se = (errors or PointErrors()).se
    barred = [r for r in rows if r.scored and r.n in se]
    return ProgressPlot(
        path=path,
        points=points,
        kept=sum(r.status == "keep" for r in rows),
        discarded=sum(r.status == "discard" for r in rows),
        failed=sum(not r.scored for r in rows),
        bars=len(barred),
        replicated=sum(r.runs >= 2 for r in barred),
        verified=bool(_verify_sides(verify)),
    )


def write_report(tag_dir: Path, rows: list[LedgerRow] | None = None) -> ProgressPlot:
    """progress.png of the tag in tag_dir (rows: its ledger's, read here when not given)."""
    tag_dir = Path(tag_dir)
    rows = read_rows(tag_dir) if rows is None else rows
    return render_progress(tag_dir.name, rows, tag_dir / PROGRESS, point_errors(tag_dir, rows), read_verify(tag_dir))
