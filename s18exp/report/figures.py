"""The report's PNG figures: curves per epoch, a metric against training time, bars of test scores, and the
runs' own pictures side by side.

matplotlib is used through `matplotlib.figure.Figure` (no pyplot, no global state, no display needed).
Every function returns the path it wrote, or None when the section has nothing to draw.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator
from PIL import Image, ImageDraw

from s18exp.atomic_files import atomic_write_bytes
from s18exp.pictures import LEGEND_HEIGHT, TITLE_HEIGHT, draw_lines, font, legend, line_height, text_width, with_legend
from s18exp.report.collect import Run
from s18exp.report.stats import NO_DIFFERENCE
from s18exp.report.table import Cell, Row, Section

DPI = 100
PICTURE_HEIGHT = 1800  # taller side-by-side pictures are scaled to this height (pixels), keeping their aspect: a run's
# predictions.png (192-px tiles) stays at its own size, so that its names stay readable
PICTURE_TITLE_SIZE = 14  # font size of the headings over the side-by-side pictures
SAME_PICTURE_MEAN_DIFF = 10.0  # mean absolute difference (0-255 levels) below which two strips are the same


def _colours(n: int) -> list:
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _save(fig: Figure, path: Path) -> Path:
    """The figure as a 256-colour PNG (a third of the size of matplotlib's RGBA, no visible difference)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    buffer.seek(0)
    with Image.open(buffer) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    atomic_write_bytes(out.getvalue(), path)
    return path


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(row: Row, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, and the mean, min and max over the row's seeds of metric `key` at each epoch."""
    per_epoch: dict[int, list[float]] = {}
    for run in row.runs:
        for record in run.metrics:
            value = record.get(key)
            if _finite(value):
                per_epoch.setdefault(record["epoch"], []).append(float(value))
    epochs = np.array(sorted(per_epoch))
    values = [per_epoch[e] for e in epochs]
    return (
        epochs,
        np.array([np.mean(v) for v in values]),
        np.array([np.min(v) for v in values]),
        np.array([np.max(v) for v in values]),
    )


def where_from(section: Section) -> str:
    """The name of the folder that holds the section's runs (the sweep dir), for figure titles; "" when the
    runs lie in several."""
    parents = {run.path.parent.name for run in section.complete_runs}
    return parents.pop() if len(parents) == 1 else ""


def headline_text(section: Section) -> str:
    """The best row by the task's headline score, as `best test mIoU 0.703: mp_tr_bce (mean of 3 seeds)`;
    "" when no row has the score."""
    headline = section.spec.headline()
    if headline is None:
        return ""
    key, label = headline
    better = next((column.better for column in section.spec.columns if column.key == key), "max")
    scored = [(Cell.of([run.value(key) for run in row.runs]), row) for row in section.rows]
    scored = [(cell, row) for cell, row in scored if cell.n and _finite(cell.mean)]
    if not scored:
        return ""
    cell, row = (min if better == "min" else max)(scored, key=lambda item: item[0].mean)
    seeds = f"mean of {cell.n} seeds" if cell.n > 1 else "one seed"
    return f"{'best ' if len(scored) > 1 else ''}{label} {cell.mean:.3f}: {row.label} ({seeds})"


def figure_title(section: Section, what: str) -> str:
    """`<sweep dir>: <what>; <headline>`, the parts that exist."""
    where, headline = where_from(section), headline_text(section)
    return (f"{where}: " if where else "") + what + (f"\n{headline}" if headline else "")


def _plain_numbers(value: float, _: int) -> str:
    return f"{value:.3g}"


def curves(section: Section, path: Path) -> Path | None:
    """One panel per curve group of the task; one line per row (mean over seeds) and its min-max band over
    the seeds, outlined in the row's colour so that overlapping bands stay apart. One legend for every
    panel, under them, where it covers no curve; log axes read as plain numbers (0.2, not 2x10^-1)."""
    fig = curves_figure(section)
    return _save(fig, path) if fig is not None else None


def curves_figure(section: Section) -> Figure | None:
    """The figure `curves` saves; None when no run has a curve."""
    panels = section.spec.curve_panels
    if not section.rows or not any(run.metrics for run in section.complete_runs):
        return None
    fig = Figure(figsize=(5.4 * len(panels), 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = _colours(len(section.rows))
    entries: dict[str, Line2D] = {}
    for ax, panel in zip(axes, panels):
        drawn = False
        for row, colour in zip(section.rows, colours):
            for curve in panel.curves:
                epochs, mean, low, high = _series(row, curve.key)
                if len(epochs) == 0:
                    continue
                drawn = True
                marker = "o" if len(epochs) <= 30 else None  # a run of one epoch is still visible
                line = ax.plot(epochs, mean, curve.style, color=colour, linewidth=1.6, marker=marker, markersize=3)[0]
                entries.setdefault(f"{row.label}, n={len(row.runs)}", Line2D([], [], color=colour, linewidth=1.6))
                if len(row.runs) > 1:
                    ax.fill_between(epochs, low, high, color=colour, alpha=0.10, linewidth=0)
                    for edge in (low, high):
                        ax.plot(epochs, edge, color=colour, linewidth=0.6, alpha=0.7, linestyle=line.get_linestyle())
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel.curves[0].label if len(panel.curves) == 1 else panel.title.split(" (")[0])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if panel.log_y and drawn:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(_plain_numbers))
            ax.yaxis.set_minor_formatter(FuncFormatter(_plain_numbers))
        if len(panel.curves) > 1:  # which line style is which curve
            for c in panel.curves:
                entries.setdefault(c.label, Line2D([], [], color="black", linestyle=c.style))
    fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=len(entries) if len(entries) <= 6 else 4, fontsize=8, frameon=False)
    fig.suptitle(figure_title(section, f"{section.spec.title}: mean over seeds, band = min..max of the seeds"), fontsize=10)
    return fig


def _timed_series(run: Run, key: str) -> tuple[list[float], list[float]]:
    """Cumulative training seconds at the end of each epoch (the sum of `epoch_seconds`, which leaves out
    validation) and metric `key` there. It stops at the first epoch without a time, after which the clock is
    unknown, and skips epochs without the metric."""
    seconds, values, clock = [], [], 0.0
    for record in run.metrics:
        if not _finite(record.get("epoch_seconds")):
            break
        clock += float(record["epoch_seconds"])
        if _finite(record.get(key)):
            seconds.append(clock)
            values.append(float(record[key]))
    return seconds, values


def time_to_quality(section: Section, path: Path) -> Path | None:
    """The task's `time_curve` metric against cumulative training seconds: one thin line per run, coloured by
    row. Runs are not averaged over seeds: their epochs end at different times, and a mean would need an
    interpolation the reader cannot see."""
    curve = section.spec.time_curve
    if curve is None or not section.rows:
        return None
    fig = Figure(figsize=(7.6, 4.2), layout="constrained")
    ax = fig.subplots()
    drawn = False
    for row, colour in zip(section.rows, _colours(len(section.rows))):
        label = f"{row.label}, n={len(row.runs)}"
        for run in row.runs:
            seconds, values = _timed_series(run, curve.key)
            if not seconds:
                continue
            drawn = True
            marker = "o" if len(seconds) <= 30 else None  # a run of one epoch is still visible
            ax.plot(seconds, values, color=colour, label=label, linewidth=1.0, alpha=0.8, marker=marker, markersize=2.5)
            label = None  # one legend entry per row
    if not drawn:
        return None
    ax.set_xlabel("training seconds (cumulative epoch_seconds, validation left out)")
    ax.set_ylabel(curve.label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the axes: it covers no line
    ax.set_title(figure_title(section, f"{curve.label} against training time: one line per run, colour = row"), fontsize=10)
    return _save(fig, path)


def forest(section: Section, path: Path) -> Path | None:
    """Each row's difference to the baseline in every headline metric, with its 95% interval: one panel per
    metric, one line per row; filled dots where the difference is detected, hollow where not, crosses where it
    is not measurable (a single seed)."""
    panels = [(label, section.stats.forest.get(key, [])) for key, label, _ in section.stats.compared]
    panels = [(label, found) for label, found in panels if found]
    if not panels:
        return None
    tall = max(len(found) for _, found in panels)
    fig = Figure(figsize=(max(6.4, 5.2 * len(panels)), 1.6 + 0.45 * tall), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, found) in zip(axes, panels):
        for y, comparison in enumerate(reversed(found)):
            difference = comparison.difference
            if difference.ci is not None:
                ax.plot(difference.ci, [y, y], color="tab:blue", linewidth=1.6)
            detected = difference.verdict != NO_DIFFERENCE
            marker = "x" if difference.ci is None else "o"
            ax.plot([difference.diff], [y], marker, color="tab:blue", markersize=6,
                    markerfacecolor="tab:blue" if detected or marker == "x" else "white")
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(found)), [c.a for c in reversed(found)], fontsize=7)
        ax.set_ylim(-0.7, len(found) - 0.3)
        ax.set_xlabel(f"{label}: row minus {section.stats.baseline}")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(figure_title(section, f"{section.spec.title}: difference to {section.stats.baseline}, 95% interval"), fontsize=10)
    return _save(fig, path)


def bars(section: Section, path: Path) -> Path | None:
    """Grouped bars: one group per score (e.g. IoU per class), one bar per row, error bar = std over seeds."""
    keys = section.spec.bar_keys
    if not keys or not section.rows:
        return None
    fig = Figure(figsize=(max(6.4, 1.6 * len(keys) * max(1, len(section.rows)) / 2), 4.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(section.rows)
    x = np.arange(len(keys))
    for i, (row, colour) in enumerate(zip(section.rows, _colours(len(section.rows)))):
        cells = [Cell.of([r.value(k) for r in row.runs]) for k, _ in keys]
        means = [c.mean if c.n else 0.0 for c in cells]
        errors = [c.std if c.n > 1 else 0.0 for c in cells]
        ax.bar(x + (i - (len(section.rows) - 1) / 2) * width, means, width, yerr=errors if any(errors) else None, capsize=3,
               color=colour, label=f"{row.label}, n={len(row.runs)}")
    ax.set_xticks(x, [label for _, label in keys])
    ax.set_ylim(0, 1)
    ax.set_ylabel("test score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(figure_title(section, f"{section.spec.bars_title} (mean over seeds, error bar = std)"), fontsize=10)
    return _save(fig, path)


def pictures(section: Section, path: Path) -> Path | None:
    """Each row's own picture (predictions.png / wrong_labels.png) of its lowest seed, side by side, titled.

    When the picture is a grid of equal columns whose leading ones are the same in every run (the UNet's
    image | ground truth | prediction), those are shown once, followed by the other columns of each row. The
    picture's name comes from a summary.json: only a plain file name of the run dir is read.
    """
    name = section.spec.picture
    if Path(name).name != name or name in ("", ".", ".."):  # a file of the run dir itself, nothing elsewhere
        return None
    chosen: list[tuple[str, Image.Image]] = []
    for row in section.rows:
        for run in row.runs:  # sorted by seed
            file = run.path / name
            if file is not None and file.is_file():
                try:
                    image = grid_only(file, section.spec.picture_legend)
                except OSError:
                    continue
                scores = "  ".join(
                    f"{short} {run.value(key):.3f}" for key, short in section.spec.picture_scores if not math.isnan(run.value(key))
                )
                chosen.append((f"{row.label} (seed {run.identity.get('seed')})\n{scores}", image))
                break
    if not chosen:
        return None
    panels = _split_columns(chosen, section.spec.picture_columns, section.spec.picture_shared) or chosen
    canvas = _side_by_side(panels)
    if section.spec.picture_legend:
        canvas = with_legend(canvas, list(section.spec.picture_legend))
    buffer = io.BytesIO()  # 256 colours, dithered: a third of the size, the same to the eye
    canvas.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(buffer.getvalue(), path)
    return path


def grid_only(file: Path, class_names: tuple[str, ...]) -> Image.Image:
    """A run's picture without its title band and colour legend: the heights its PNG text chunks give
    (pictures.TITLE_HEIGHT, LEGEND_HEIGHT), read as untrusted numbers; a picture without them (an older
    run's) loses the legend `without_legend` recognises."""
    with Image.open(file) as opened:
        notes = dict(getattr(opened, "text", None) or {})
        image = opened.convert("RGB")
    title, legend_h = _band(notes.get(TITLE_HEIGHT), image.height), _band(notes.get(LEGEND_HEIGHT), image.height)
    if title is None or legend_h is None or title + legend_h >= image.height:
        return without_legend(image, class_names)
    return image.crop((0, title, image.width, image.height - legend_h))


def _band(value: object, height: int) -> int | None:
    text = str(value) if value is not None else ""
    return int(text) if text.isdigit() and int(text) < height else None


def without_legend(image: Image.Image, class_names: tuple[str, ...]) -> Image.Image:
    """`image` without the colour legend of `class_names` at its bottom, when it has that legend."""
    if not class_names:
        return image
    strip = legend(list(class_names), image.width)
    if strip.height >= image.height:
        return image
    bottom = image.crop((0, image.height - strip.height, image.width, image.height))
    same = np.array_equal(np.asarray(bottom), np.asarray(strip))  # drawn by the same code: the same pixels
    return image.crop((0, 0, image.width, image.height - strip.height)) if same else image


def _columns(image: Image.Image, count: int) -> list[Image.Image] | None:
    """The `count` equal columns of a grid drawn with the same padding left, between and right, or None."""
    width, height = image.size
    for pad in range(0, 17):
        if (width - pad) % count == 0 and (width - pad) // count > pad:
            step = (width - pad) // count
            return [image.crop((c * step, 0, (c + 1) * step + pad, height)) for c in range(count)]
    return None


def _split_columns(chosen: list[tuple[str, Image.Image]], count: int, shared: int) -> list[tuple[str, Image.Image]] | None:
    """Panels: a shared strip (shown again only where it changes, e.g. another dataset), then each run's own."""
    if count < 2 or not 0 < shared < count:
        return None
    split = [(title, _columns(image, count)) for title, image in chosen]
    if any(columns is None for _, columns in split):
        return None
    panels: list[tuple[str, Image.Image]] = []
    last: Image.Image | None = None
    for title, columns in split:
        strip = _hstack(columns[:shared])
        if last is None or not _same_picture(strip, last):
            panels.append(("the same test images\nfor the runs to the right", strip))
            last = strip
        panels.append((title, _hstack(columns[shared:])))
    return panels


def _same_picture(a: Image.Image, b: Image.Image) -> bool:
    """Same size and nearly the same pixels: captions drawn in another font (an older run) still count as
    the same test images; different photos differ by tens of levels on average."""
    if a.size != b.size:
        return False
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    return float(diff.mean()) < SAME_PICTURE_MEAN_DIFF


def _hstack(images: list[Image.Image]) -> Image.Image:
    canvas = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width
    return canvas


def _side_by_side(panels: list[tuple[str, Image.Image]]) -> Image.Image:
    """The panels in a row at one height, each under its title (lines split at newlines); title and panel
    are both centred in the panel's slot, so that every heading stands over its own column."""
    height = min(PICTURE_HEIGHT, max(image.height for _, image in panels))
    scaled = [(t, i.resize((max(1, round(i.width * height / i.height)), height), Image.LANCZOS)) for t, i in panels]
    pad = 8
    text_font = font(PICTURE_TITLE_SIZE)
    titles = [title.split("\n") for title, _ in scaled]
    title_h = max(len(lines) for lines in titles) * line_height(text_font) + pad
    slots = [max(image.width, *(round(text_width(line, text_font)) for line in lines)) for lines, (_, image) in zip(titles, scaled)]
    canvas = Image.new("RGB", (sum(slots) + pad * (len(slots) + 1), title_h + height + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for lines, (_, image), slot in zip(titles, scaled, slots):
        draw_lines(draw, (x, pad // 2), lines, text_font, width=slot)
        canvas.paste(image, (x + (slot - image.width) // 2, title_h + pad))
        x += slot + pad
    return canvas
