"""The W&B Report of a sweep, built with wandb-workspaces (`wandb_workspaces.reports.v2`).

Two steps, so that the second can wait until the runs are uploaded:

1. `report_spec(...)` -> a plain JSON-able specification (written to `wandb_report.json`): the entity,
   project and W&B groups of the runs, and the blocks (title, the comparison table as markdown, and per
   task a panel grid: line plots against epoch grouped by combo, bar plots of the test metrics, a run
   comparer and media panels, its runset filtered to the sweep's group and the task's job type).
2. `build_report(spec, entity)` -> a `wr.Report`, with no network access (the entity is passed explicitly;
   wandb-workspaces asks the server only in `Report.save()` and when no entity is given).
   `publish(spec)` saves it within a bounded time and returns the URL.

Create the report later from its specification with one command:
`python -m s18exp.report --from-spec SWEEP_DIR/wandb_report.json`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from s18exp.report.collect import Run
from s18exp.report.comparison_text import LEGEND
from s18exp.report.render import Document, comparisons_markdown, incomplete_lines, markdown_table
from s18exp.tracking import logged_in

SPEC_FILE = "wandb_report.json"
SPEC_FORMAT = "s18exp-wandb-report/1"
DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 5.0
GROUP_BY = "combo"  # config key that names a combo (mp_tr_bce, ...): lines and bars are grouped by it


def create_command(spec_path: Path) -> str:
    return f"python -m s18exp.report --from-spec {spec_path}"


def sync_command(dirs: list[Path]) -> str | None:
    return "wandb sync " + " ".join(str(d) for d in dirs) if dirs else None


def _filter(groups: list[str], task: str) -> str:
    group = f"Group = {groups[0]!r}" if len(groups) == 1 else f"Group in {sorted(groups)!r}"
    return f"{group} and JobType = {task!r}"


def report_spec(doc: Document, runs: list[Run], entity: str | None = None) -> dict[str, Any]:
    """The report's specification; `entity` None means: the logged-in user's default entity at creation."""
    projects = Counter(r.wandb_project for r in runs if r.wandb_project)
    project = projects.most_common(1)[0][0] if projects else "s18exp"
    entities = Counter(r.wandb_entity for r in runs if r.wandb_entity)
    entity = entity or (entities.most_common(1)[0][0] if entities else None) or os.environ.get("WANDB_ENTITY") or None
    groups = sorted({r.wandb_group for r in runs if r.wandb_group})
    unsynced = [d for r in runs for d in r.unsynced_wandb_runs()]
    complete, incomplete = doc.counts
    blocks: list[dict[str, Any]] = [
        {"type": "H1", "text": doc.title},
        {
            "type": "MarkdownBlock",
            "text": f"Runs of W&B group(s) {', '.join(f'`{g}`' for g in groups) or '(none)'} in `{doc.root}`: "
            f"{complete} complete, {incomplete} incomplete. Generated {doc.generated} by `python -m s18exp.report`.",
        },
    ]
    for section in doc.sections:
        spec = section.spec
        text = [markdown_table(section), " ".join([LEGEND, *spec.notes]), *comparisons_markdown(section)]
        if section.incomplete:
            text.append("Incomplete runs:\n" + "\n".join(f"- {line}" for line in incomplete_lines(section, doc.root)))
        panels: list[dict[str, Any]] = [
            {"type": "LinePlot", "title": title, "x": "epoch", "y": list(keys), "groupby": GROUP_BY,
             "groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}
            for title, keys in spec.wandb_lines
        ]
        panels += [
            {"type": "BarPlot", "title": title, "metrics": list(keys), "groupby": GROUP_BY,
             "groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}
            for title, keys in spec.wandb_bars
        ]
        panels.append({"type": "RunComparer", "diff_only": "split"})
        if spec.wandb_media:
            panels.append({"type": "MediaBrowser", "title": "pictures", "media_keys": list(spec.wandb_media), "num_columns": 4})
        blocks += [
            {"type": "H2", "text": spec.title},
            {"type": "MarkdownBlock", "text": "\n\n".join(text)},
            {
                "type": "PanelGrid",
                "runset": {"name": f"{spec.name}: {', '.join(groups)}", "filters": _filter(groups or ["?"], spec.name),
                           "groupby": [f"config.{GROUP_BY}"]},
                "panels": panels,
            },
        ]
    return {
        "format": SPEC_FORMAT,
        "entity": entity,
        "project": project,
        "groups": groups,
        "title": doc.title[:128],
        "description": f"Comparison of the runs in {doc.root} (s18exp).",
        "blocks": blocks,
        "unsynced_runs": [str(d) for d in unsynced],
        "sync_command": sync_command(unsynced),
    }


def build_report(spec: dict[str, Any], entity: str | None = None) -> Any:
    """A `wandb_workspaces.reports.v2.Report` from the specification; never touches the network."""
    import wandb_workspaces.reports.v2 as wr

    entity = entity or spec.get("entity") or ""  # "" only to build and inspect; saving needs a real entity
    project = spec["project"]

    def panel(p: dict[str, Any]) -> Any:
        kind = p["type"]
        if kind == "LinePlot":
            return wr.LinePlot(title=p["title"], x=p["x"], y=p["y"], groupby=wr.Config(p["groupby"]),
                               groupby_aggfunc=p["groupby_aggfunc"], groupby_rangefunc=p["groupby_rangefunc"])
        if kind == "BarPlot":
            return wr.BarPlot(title=p["title"], metrics=p["metrics"], orientation="v", groupby=wr.Config(p["groupby"]),
                              groupby_aggfunc=p["groupby_aggfunc"], groupby_rangefunc=p["groupby_rangefunc"])
        if kind == "RunComparer":
            return wr.RunComparer(diff_only=p["diff_only"])
        if kind == "MediaBrowser":
            return wr.MediaBrowser(title=p["title"], media_keys=p["media_keys"], num_columns=p["num_columns"])
        raise ValueError(f"unknown panel type {kind!r} in the report specification")

    def block(b: dict[str, Any]) -> Any:
        kind = b["type"]
        if kind in ("H1", "H2", "H3"):
            return getattr(wr, kind)(b["text"])
        if kind == "MarkdownBlock":
            return wr.MarkdownBlock(b["text"])
        if kind == "PanelGrid":
            rs = b["runset"]
            runset = wr.Runset(entity=entity, project=project, name=rs["name"], filters=rs["filters"], groupby=rs["groupby"])
            return wr.PanelGrid(runsets=[runset], panels=[panel(p) for p in b["panels"]])
        raise ValueError(f"unknown block type {kind!r} in the report specification")

    return wr.Report(entity=entity, project=project, title=spec["title"], description=spec.get("description", ""),
                     blocks=[block(b) for b in spec["blocks"]], width="fluid")


def load_spec(path: Path) -> dict[str, Any]:
    spec = json.loads(Path(path).read_text())
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"{path} is not an s18exp W&B report specification (format {SPEC_FORMAT})")
    return spec


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def wants_online() -> tuple[bool, str]:
    """Whether to try saving online, and if not, why."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False, f"WANDB_MODE={os.environ['WANDB_MODE']}"
    if not logged_in():
        return False, "not logged in to W&B (no WANDB_API_KEY, no ~/.netrc entry)"
    return True, ""


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the server opens within `timeout` seconds, else why not."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass
class Published:
    url: str | None
    error: str | None


def publish(spec: dict[str, Any], timeout: float = 60.0) -> Published:
    """Save the report online; gives up with a clear error after `timeout` seconds (never hangs)."""
    url = base_url()
    unreachable = probe(url, min(PROBE_TIMEOUT_S, timeout))
    if unreachable:
        return Published(None, f"the W&B server {url} is unreachable ({unreachable})")
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            import wandb

            entity = spec.get("entity")
            if not entity:
                entity = wandb.Api(timeout=max(1, int(timeout))).default_entity
            if not entity:
                raise RuntimeError("no W&B entity: pass --entity or set wandb.entity / WANDB_ENTITY")
            report = build_report(spec, entity)
            report.save()
            result["url"] = report.url
        except BaseException as exc:  # reported to the user, never raised: the local report stands
            result["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=work, name="wandb-report", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return Published(None, f"the W&B server {url} did not answer within {timeout:.0f} s")
    if "url" in result:
        return Published(result["url"], None)
    return Published(None, f"saving the report on {url} failed ({result.get('error', 'unknown error')})")
