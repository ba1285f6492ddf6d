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

from s18exp.report.table import Section, cells, header

LEGEND = "Mean ± sample std over seeds (n = runs of the combo); the best value of each ranked column is in bold."


@dataclass
class Figures:
    """The PNG files drawn for one section (None where there was nothing to draw)."""

    curves: Path | None = None
    bars: Path | None = None
    pictures: Path | None = None

    def items(self, section: Section) -> list[tuple[str, Path]]:
        captions = [
            (self.curves, "Curves per epoch: one line per combo (mean over seeds), the band spans the seeds (min..max)."),
            (self.bars, f"{section.spec.bars_title}: mean over seeds, error bar = std."),
            (self.pictures, f"{section.spec.picture} of one seed per combo, side by side (the same test images in each)."),
        ]
        return [(caption, path) for path, caption in captions if path is not None]


@dataclass
class Document:
    title: str
    root: Path
    generated: str
    sections: list[Section]
    figures: dict[str, Figures]
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
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < len(head) - len(section.columns) else "---:" for i in range(len(head))) + "|"]
    for row in section.rows:
        texts = [f"**{_md_escape(t)}**" if best else _md_escape(t) for t, best in cells(section, row)]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines)


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


def to_markdown(doc: Document, out_dir: Path) -> str:
    complete, incomplete = doc.counts
    parts = [
        f"# {doc.title}",
        f"Folder `{doc.root}`: {complete} complete run(s), {incomplete} incomplete · generated {doc.generated}",
    ]
    for section in doc.sections:
        parts.append(f"## {section.spec.title}")
        if section.settings:
            parts.append(f"Settings: {settings_line(section)}")
        parts.append(markdown_table(section))
        parts.append(" ".join([LEGEND, *section.spec.notes]))
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


def html_table(section: Section) -> str:
    if not section.rows:
        return "<p>No complete run of this task.</p>"
    head = header(section)
    numeric_from = len(head) - len(section.columns) - 1  # n and the metric columns are numbers
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in section.rows:
        tds = []
        for i, (text, best) in enumerate(cells(section, row)):
            classes = " ".join(c for c in ("num" if i >= numeric_from else "", "best" if best else "") if c)
            attr = f' class="{classes}"' if classes else ""
            tds.append(f"<td{attr}>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def to_html(doc: Document, extra_html: list[str] | None = None) -> str:
    """One page that opens from disk: CSS inline, every image a base64 data URI, no link to another file."""
    complete, incomplete = doc.counts
    body = [
        f"<h1>{html.escape(doc.title)}</h1>",
        f"<p class=note>Folder <code>{html.escape(str(doc.root))}</code>: {complete} complete run(s), "
        f"{incomplete} incomplete · generated {html.escape(doc.generated)}</p>",
    ]
    for section in doc.sections:
        body.append(f"<h2>{html.escape(section.spec.title)}</h2>")
        if section.settings:
            body.append(f"<p class=note>Settings: {html.escape(settings_line(section))}</p>")
        body.append(html_table(section))
        body.append(f"<p class=note>{html.escape(' '.join([LEGEND, *section.spec.notes]))}</p>")
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
    """The same tables on the terminal, the best value of each ranked column in bold green."""
    for section in doc.sections:
        if section.rows:
            title = section.spec.title + (f"\n{settings_line(section)}" if section.settings else "")
            table = Table(title=title, caption=LEGEND, title_justify="left")
            head = header(section)
            numeric_from = len(head) - len(section.columns) - 1
            for i, name in enumerate(head):
                table.add_column(name, justify="right" if i >= numeric_from else "left", overflow="fold")
            for row in section.rows:
                table.add_row(*(f"[bold green]{escape(t)}[/]" if best else escape(t) for t, best in cells(section, row)))
            console.print(table)
        else:
            console.print(f"[bold]{escape(section.spec.title)}[/]: no complete run")
        for line in incomplete_lines(section, doc.root):
            console.print(f"[yellow]incomplete:[/] {escape(line)}", highlight=False)
