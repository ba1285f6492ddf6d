"""Make the whole report of a folder: read the run dirs, draw, write report.md / report.html / report.json,
print, W&B.

The report writes only into its output folder, and only files whose names it builds itself: a name taken
from a run (its task, a study's name) is cut down to letters, digits, `_` and `-` (with a short hash of the
original when anything was cut), so that no summary.json or optuna.db can steer a write or a removal elsewhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape

from s18exp.atomic_files import atomic_write_json, atomic_write_text
from s18exp.report import figures as figs
from s18exp.report import search as srch
from s18exp.report import wandb_report as wb
from s18exp.report.collect import MARKERS, collect
from s18exp.report.render import Document, Figures, print_tables, to_html, to_markdown
from s18exp.report.report_json import document_json
from s18exp.report.stats import MIN_EFFECT
from s18exp.report.table import Section, build_sections

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
SLUG_LENGTH = 40
# Exit codes of `python -m s18exp.report`.
OK, NO_RUNS, BAD_INPUT, WANDB_FAILED = 0, 1, 2, 3


def default_console() -> Console:
    """Rich's console; wide when the output is not a terminal, so that logs and pipes get whole tables."""
    import sys

    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def slug(text: str) -> str:
    """`text` as a safe part of a file name: letters, digits, `_` and `-` only, at most SLUG_LENGTH of them,
    with a hash of `text` appended when anything had to change (so that two names never meet in one)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:SLUG_LENGTH].strip("_-") or "unnamed"
    return safe if safe == text else f"{safe}-{hashlib.sha256(text.encode('utf-8', 'replace')).hexdigest()[:8]}"


def figure_name(part: str, what: str) -> str:
    """The file name of a figure of the report, `part` (a task, a study) made safe."""
    return f"report-{slug(part)}-{what}.png"


def make_report(
    root: str | Path,
    *,
    out_dir: str | Path | None = None,
    wandb: bool = False,
    entity: str | None = None,
    timeout: float = 60.0,
    console: Console | None = None,
    baseline: str | None = None,
    min_effect: float = MIN_EFFECT,
) -> int:
    """Write the report of every run dir under `root` into `out_dir` (default `root`); returns an exit code.
    `baseline`: the label of the row every other row is compared with (default: every pair of rows);
    `min_effect`: the smallest gap the seeds-needed estimate looks for."""
    console = console or default_console()
    root = Path(root).absolute()
    if not root.is_dir():
        console.print(f"[red]error:[/] {escape(str(root))} is not a folder")
        return BAD_INPUT
    runs = collect(root)
    searches = srch.read_searches(root)
    if not runs and not searches:
        console.print(
            f"[red]error:[/] no run dirs under {escape(str(root))} (a run dir holds one of {', '.join(MARKERS)}); nothing to report"
        )
        return NO_RUNS
    out = Path(out_dir).absolute() if out_dir else root
    sections = build_sections(runs, baseline, min_effect)
    labels = [row.label for section in sections for row in section.rows]
    if baseline is not None and baseline not in labels:
        console.print(f"[red]error:[/] --baseline {escape(baseline)} names no row; the rows are: {escape(', '.join(labels) or '(none)')}")
        return BAD_INPUT
    for search in searches:
        if search.problem is None:
            search.figure = _draw(console, srch.draw_objective, search, out, figure_name(f"search-{search.study_name}", "objective"))
    drawn = {section.task: _figures(console, section, out) for section in sections}
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = Document(f"Run comparison: {root.name}", root, generated, sections, drawn, searches)
    _write(doc, out)  # the local report first: whatever happens with W&B, it is on disk
    print_tables(doc, console)
    code = OK
    complete, incomplete = doc.counts
    if complete == 0:
        console.print(f"[red]error:[/] none of the {incomplete} run dir(s) under {escape(str(root))} is complete (see above)")
        code = NO_RUNS
    if wandb:
        spec = wb.report_spec(doc, runs, entity)
        spec_path = out / wb.SPEC_FILE
        atomic_write_json(spec, spec_path, sort_keys=False)
        md, html_parts, ok = _wandb_step(spec, spec_path, timeout, console)
        doc.extra_md.extend(md)
        _write(doc, out, html_parts)
        if not ok and code == OK:
            code = WANDB_FAILED
    console.print(f"report: {escape(str(out / REPORT_MD))}, {escape(str(out / REPORT_HTML))} and {escape(str(out / REPORT_JSON))}")
    return code


def _figures(console: Console, section: Section, out: Path) -> Figures:
    """Every figure of a section, drawn into `out`."""
    kinds = (
        ("curves", figs.curves, "curves"), ("time_to_quality", figs.time_to_quality, "time-to-quality"), ("bars", figs.bars, "bars"),
        ("pictures", figs.pictures, "pictures"), ("forest", figs.forest, "forest"),
    )
    return Figures(**{field: _draw(console, draw, section, out, figure_name(section.task, what)) for field, draw, what in kinds})


def _draw(console: Console, draw: Callable[[Any, Path], Path | None], part: Section | srch.Search, out: Path, name: str) -> Path | None:
    """`out / name` drawn, or removed when there is nothing to draw (never anything outside `out`)."""
    if Path(name).name != name or not name.startswith("report-"):
        raise ValueError(f"{name!r} is not a figure name the report builds")
    path = out / name
    try:
        drawn = draw(part, path)
    except Exception as exc:  # a figure that cannot be drawn costs that figure, not the report
        console.print(f"[yellow]warning:[/] {escape(path.name)} not drawn ({escape(f'{type(exc).__name__}: {exc}')})")
        drawn = None
    if drawn is None:
        path.unlink(missing_ok=True)  # never leave an earlier report's figure beside this report
    return drawn


def _write(doc: Document, out: Path, extra_html: list[str] | None = None) -> None:
    atomic_write_text(to_markdown(doc, out), out / REPORT_MD)
    atomic_write_text(to_html(doc, extra_html), out / REPORT_HTML)
    atomic_write_json(document_json(doc, out), out / REPORT_JSON, sort_keys=False)


def _wandb_step(spec: dict, spec_path: Path, timeout: float, console: Console) -> tuple[list[str], list[str], bool]:
    """Save online when possible, else explain; returns the W&B section as markdown and HTML, and success."""
    import html

    sync = spec.get("sync_command")
    create = wb.create_command(spec_path)
    online, why_not = wb.wants_online()
    url = error = None
    if online:
        console.print(f"W&B: saving the report on {escape(wb.base_url())} (at most {timeout:.0f} s) ...")
        published = wb.publish(spec, timeout)
        url, error = published.url, published.error
    if url:
        console.print(f"W&B report: {escape(url)}")
        lines = [f"W&B report: {url}"]
        if sync:
            lines.append(f"Some runs are still offline; upload them so that the report shows them:\n\n    {sync}")
            console.print(f"upload the offline runs so that the report shows them:\n  {escape(sync)}")
    else:
        reason = error or why_not
        colour = "red" if error else "yellow"
        console.print(f"[{colour}]W&B:[/] report not created online: {escape(reason)}.")
        console.print(f"Its specification is in {escape(str(spec_path))}.")
        lines = [f"W&B report not created online: {reason}. Its specification is in `{spec_path.name}`."]
        if sync:
            console.print(f"The runs must first be synced:\n  {escape(sync)}")
            lines.append(f"The runs must first be synced:\n\n    {sync}")
        console.print(f"then (logged in, e.g. `wandb login`) create the report with:\n  {escape(create)}")
        lines.append(f"Then, logged in (`wandb login`), create the report with:\n\n    {create}")
    md = ["## W&B report", *lines]
    html_parts = ["<h2>W&amp;B report</h2>"] + [
        f"<pre>{html.escape(line.strip())}</pre>" if line.startswith("    ") else f"<p>{html.escape(line)}</p>"
        for part in lines for line in part.split("\n\n")
    ]
    return md, html_parts, error is None
