"""The report as markdown, as one self-contained HTML page (images embedded), and as rich tables."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from s18exp.report import comparison_text
from s18exp.report.comparison_text import LEGEND
from s18exp.report.search import Search, format_value
from s18exp.report.table import Section, cells, header, metric_columns


@dataclass
class Figures:
    """The PNG files drawn for one section (None where there was nothing to draw)."""

    curves: Path | None = None
    time_to_quality: Path | None = None
    bars: Path | None = None
    pictures: Path | None = None
    forest: Path | None = None

    def items(self, section: Section) -> list[tuple[str, Path]]:
        captions = []
        if self.forest is not None:
            captions.append((
                self.forest,
                f"Each row's difference to {section.stats.baseline} with its 95% interval (the line at 0: no "
                "difference); filled: detected, hollow: not detected, a cross: not measurable (a single seed).",
            ))
        captions.append((self.curves, "Curves per epoch: one line per row (mean over seeds), the band spans the seeds (min..max)."))
        if self.time_to_quality is not None and section.spec.time_curve is not None:
            captions.append((
                self.time_to_quality,
                f"Time to quality: {section.spec.time_curve.label} against cumulative training seconds (the sum of "
                "each epoch's training time, validation left out); one thin line per run, coloured by row.",
            ))
        captions += [
            (self.bars, f"{section.spec.bars_title}: mean over seeds, error bar = std."),
            (self.pictures, f"{section.spec.picture} of one seed per row, side by side (the same test images in each)."),
        ]
        return [(caption, path) for path, caption in captions if path is not None]


@dataclass
class Document:
    title: str
    root: Path
    generated: str
    sections: list[Section]
    figures: dict[str, Figures]
    searches: list[Search] = field(default_factory=list)  # the Optuna studies of the folder (a search's sweep dir)
    extra_md: list[str] = field(default_factory=list)  # e.g. the W&B section, as markdown paragraphs

    @property
    def counts(self) -> tuple[int, int]:
        complete = sum(len(s.complete_runs) for s in self.sections)
        incomplete = sum(len(s.incomplete) for s in self.sections)
        return complete, incomplete


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(section: Section) -> str:
    if not section.rows:
        return "_No complete run of this task._"
    head = header(section)
    lines = ["| " + " | ".join(map(_md_escape, head)) + " |", "|" + "|".join("---" if i < len(head) - metric_columns(section) else "---:" for i in range(len(head))) + "|"]
    for row in section.rows:
        texts = [f"**{_md_escape(t)}**" if best else _md_escape(t) for t, best in cells(section, row)]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines)


def comparisons_markdown(section: Section) -> list[str]:
    """The comparisons of the section's rows as a table, and how they were made; nothing with fewer than two rows."""
    lines = comparison_text.rows(section)
    if not lines:
        return []
    head = comparison_text.HEAD
    table = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i in comparison_text.NUMERIC else "---" for i in range(len(head))) + "|"]
    table += ["| " + " | ".join(map(_md_escape, line)) + " |" for line in lines]
    return ["\n".join(table), " ".join(comparison_text.notes(section))]


def incomplete_lines(section: Section, root: Path) -> list[str]:
    return [f"`{_relative(run.path, root)}` ({run.name}): {run.problem}" for run in section.incomplete]


def _relative(path: Path, root: Path) -> str:
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def settings_line(section: Section) -> str:
    return " · ".join(f"{k} {v}" for k, v in section.settings.items())


SEARCH_NOTE = (
    "The per-run tables below have one row per distinct setting of the keys the trials differ in: a row's n "
    "runs are seeds of one configuration, and a trial alone in its row has no interval."
)
IMPORTANCE_NOTE = (
    "Parameter importances (optuna.importance.get_param_importances, PED-ANOVA): how much each parameter "
    "separates the best trials from the rest, summing to 1; rough with few trials."
)


def search_intro(search: Search) -> str:
    counts = ", ".join(f"{search.count(state)} {state}" for state in ("complete", "failed", "unfinished") if search.count(state))
    line = (
        f"Study {search.study_name} ({search.direction} {search.objective}): {len(search.trials)} trial(s)"
        + (f", {counts}" if counts else "")
        + "."
    )
    if search.count("unfinished"):
        line += " Rerunning the search command with the same sweep dir finishes the unfinished ones."
    return line


def best_line(search: Search) -> str:
    best = search.best
    if best is None:
        return "No trial is complete yet."
    where = f", run dir {best.run_dir}" if best.run_dir else ""
    return f"Best trial: {best.number}, {search.objective} = {best.value:.6g}{where}. Its config as a single run:"


def search_table(search: Search) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the trials table: complete trials best first, then the others."""
    head = ["trial", "state", search.objective, *search.param_names, "run dir"]
    rows = [
        [str(t.number), t.state, format_value(t.value), *(format_value(t.params.get(p)) for p in search.param_names), t.run_dir or "–"]
        for t in search.trials
    ]
    return head, rows


def failed_lines(search: Search) -> list[str]:
    return [f"trial {t.number}: {t.reason or 'no reason recorded'}" for t in search.trials if t.state == "failed"]


def search_markdown(search: Search, out_dir: Path) -> list[str]:
    parts = [f"## Hyper-parameter search: {search.study_name}"]
    if search.problem:
        return parts + [search.problem]
    parts += [search_intro(search), f"**{best_line(search)}**"]
    if search.command:
        parts.append(f"    {search.command}")
    head, rows = search_table(search)
    parts.append("\n".join(
        ["| " + " | ".join(map(_md_escape, head)) + " |", "|" + "|".join(["---:", "---"] + ["---:"] * (len(head) - 3) + ["---"]) + "|"]
        + ["| " + " | ".join(map(_md_escape, row)) + " |" for row in rows]
    ))
    if search.figure is not None:
        caption = "The objective of each complete trial against its number; the line is the best so far, crosses are failed trials."
        parts.append(f"![{caption}]({_relative(search.figure, out_dir)})\n\n_{caption}_")
    if search.importances:
        parts.append("| parameter | importance |\n|---|---:|\n" + "\n".join(f"| {_md_escape(k)} | {v:.3f} |" for k, v in search.importances.items()))
        parts.append(IMPORTANCE_NOTE)
    else:
        parts.append(f"Parameter importances: {search.importance_note}.")
    if failed_lines(search):
        parts.append(f"### Failed trials ({search.count('failed')})")
        parts.append("\n".join(f"- {_md_escape(line)}" for line in failed_lines(search)))
    parts.append(SEARCH_NOTE)
    return parts


def search_html(search: Search) -> list[str]:
    body = [f"<h2>Hyper-parameter search: {html.escape(search.study_name)}</h2>"]
    if search.problem:
        return body + [f"<p>{html.escape(search.problem)}</p>"]
    body += [f"<p>{html.escape(search_intro(search))}</p>", f"<p><b>{html.escape(best_line(search))}</b></p>"]
    if search.command:
        body.append(f"<pre>{html.escape(search.command)}</pre>")
    head, rows = search_table(search)
    body.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        tds = [f'<td class="num">{html.escape(text)}</td>' if i == 0 or 2 <= i < len(row) - 1 else f"<td>{html.escape(text)}</td>" for i, text in enumerate(row)]
        body.append("<tr>" + "".join(tds) + "</tr>")
    body.append("</table>")
    if search.figure is not None:
        caption = "The objective of each complete trial against its number; the line is the best so far, crosses are failed trials."
        body.append(f'<figure><img src="{_data_uri(search.figure)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    if search.importances:
        body.append("<table><tr><th>parameter</th><th>importance</th></tr>")
        body.extend(f'<tr><td>{html.escape(k)}</td><td class="num">{v:.3f}</td></tr>' for k, v in search.importances.items())
        body.append(f"</table><p class=note>{html.escape(IMPORTANCE_NOTE)}</p>")
    else:
        body.append(f"<p class=note>Parameter importances: {html.escape(str(search.importance_note))}.</p>")
    if failed_lines(search):
        body.append(f"<h3>Failed trials ({search.count('failed')})</h3><ul>")
        body.extend(f"<li class=incomplete>{html.escape(line)}</li>" for line in failed_lines(search))
        body.append("</ul>")
    body.append(f"<p class=note>{html.escape(SEARCH_NOTE)}</p>")
    return body


def print_search(search: Search, console: Console) -> None:
    if search.problem:
        console.print(f"[yellow]warning:[/] {escape(search.problem)}")
        return
    head, rows = search_table(search)
    table = Table(title=f"Hyper-parameter search\n{search_intro(search)}", title_justify="left")
    for i, name in enumerate(head):
        table.add_column(name, justify="right" if i == 0 or 2 <= i < len(head) - 1 else "left", overflow="fold")
    for row in rows:
        table.add_row(*map(escape, row))
    console.print(table)
    console.print(escape(best_line(search)))
    if search.command:
        console.print(f"  {escape(search.command)}")
    if search.importances:
        console.print("parameter importances: " + ", ".join(f"{escape(k)} {v:.3f}" for k, v in search.importances.items()))
    else:
        console.print(f"parameter importances: {escape(str(search.importance_note))}")


def to_markdown(doc: Document, out_dir: Path) -> str:
    complete, incomplete = doc.counts
    parts = [
        f"# {doc.title}",
        f"Folder `{doc.root}`: {complete} complete run(s), {incomplete} incomplete · generated {doc.generated}",
    ]
    for search in doc.searches:
        parts.extend(search_markdown(search, out_dir))
    for section in doc.sections:
        parts.append(f"## {section.spec.title}")
        if section.settings:
            parts.append(f"Settings: {settings_line(section)}")
        parts.append(markdown_table(section))
        parts.append(" ".join([LEGEND, *section.spec.notes]))
        parts.extend(comparisons_markdown(section))
        for caption, path in doc.figures[section.task].items(section):
            parts.append(f"![{caption}]({_relative(path, out_dir)})\n\n_{caption}_")
        if section.incomplete:
            parts.append(f"### Incomplete runs ({len(section.incomplete)})")
            parts.append("\n".join(f"- {line}" for line in incomplete_lines(section, doc.root)))
    parts.extend(doc.extra_md)
    return "\n\n".join(parts) + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: bold; background: #e6f4ea; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; }
img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: 13px; }
code { background: #f5f5f5; padding: 1px 3px; }
pre { background: #f5f5f5; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; }
li.incomplete { color: #8a4b00; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_rows(head: list[str], lines: list[list[tuple[str, bool]]], numeric: range) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for line in lines:
        tds = []
        for i, (text, best) in enumerate(line):
            classes = " ".join(c for c in ("num" if i in numeric else "", "best" if best else "") if c)
            attr = f' class="{classes}"' if classes else ""
            tds.append(f"<td{attr}>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def html_table(section: Section) -> str:
    if not section.rows:
        return "<p>No complete run of this task.</p>"
    head = header(section)
    numeric_from = len(head) - metric_columns(section) - 1  # n and the metric columns are numbers
    return _html_rows(head, [cells(section, row) for row in section.rows], range(numeric_from, len(head)))


def comparisons_html(section: Section) -> list[str]:
    lines = comparison_text.rows(section)
    if not lines:
        return []
    table = _html_rows(comparison_text.HEAD, [[(text, False) for text in line] for line in lines], comparison_text.NUMERIC)
    return [table, f"<p class=note>{html.escape(' '.join(comparison_text.notes(section)))}</p>"]


def to_html(doc: Document, extra_html: list[str] | None = None) -> str:
    """One page that opens from disk: CSS inline, every image a base64 data URI, no link to another file."""
    complete, incomplete = doc.counts
    body = [
        f"<h1>{html.escape(doc.title)}</h1>",
        f"<p class=note>Folder <code>{html.escape(str(doc.root))}</code>: {complete} complete run(s), "
        f"{incomplete} incomplete · generated {html.escape(doc.generated)}</p>",
    ]
    for search in doc.searches:
        body.extend(search_html(search))
    for section in doc.sections:
        body.append(f"<h2>{html.escape(section.spec.title)}</h2>")
        if section.settings:
            body.append(f"<p class=note>Settings: {html.escape(settings_line(section))}</p>")
        body.append(html_table(section))
        body.append(f"<p class=note>{html.escape(' '.join([LEGEND, *section.spec.notes]))}</p>")
        body.extend(comparisons_html(section))
        for caption, path in doc.figures[section.task].items(section):
            body.append(
                f'<figure><img src="{_data_uri(path)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        if section.incomplete:
            body.append(f"<h3>Incomplete runs ({len(section.incomplete)})</h3><ul>")
            body.extend(f"<li class=incomplete>{html.escape(line)}</li>" for line in incomplete_lines(section, doc.root))
            body.append("</ul>")
    body.extend(extra_html or [])
    return (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{html.escape(doc.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def print_tables(doc: Document, console: Console) -> None:
    """The same tables on the terminal, a detected lead in bold green."""
    for search in doc.searches:
        print_search(search, console)
    for section in doc.sections:
        if section.rows:
            title = section.spec.title + (f"\n{settings_line(section)}" if section.settings else "")
            table = Table(title=title, caption=LEGEND, title_justify="left")
            head = header(section)
            numeric_from = len(head) - metric_columns(section) - 1
            for i, name in enumerate(head):
                table.add_column(name, justify="right" if i >= numeric_from else "left", overflow="fold")
            for row in section.rows:
                table.add_row(*(f"[bold green]{escape(t)}[/]" if best else escape(t) for t, best in cells(section, row)))
            console.print(table)
            print_comparisons(section, console)
        else:
            console.print(f"[bold]{escape(section.spec.title)}[/]: no complete run")
        for line in incomplete_lines(section, doc.root):
            console.print(f"[yellow]incomplete:[/] {escape(line)}", highlight=False)


def print_comparisons(section: Section, console: Console) -> None:
    lines = comparison_text.rows(section)
    if not lines:
        return
    table = Table(title="Comparisons", caption=" ".join(comparison_text.notes(section)), title_justify="left", caption_justify="left")
    for i, name in enumerate(comparison_text.HEAD):
        table.add_column(name, justify="right" if i in comparison_text.NUMERIC else "left", overflow="fold")
    for line in lines:
        table.add_row(*map(escape, line))
    console.print(table)
