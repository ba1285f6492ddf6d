"""Reads an offline W&B run back from its `.wandb` file, so tests can check what a run logged.

The file is W&B's record log (a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records,
each with a 7-byte header of checksum, length and type, a record possibly split across blocks) of
protobuf `Record` messages. wandb 0.31 ships no reader for it in Python, so the tests carry this one.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER_LEN, BLOCK_LEN, RECORD_HEADER_LEN = 7, 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B record log"
    out, pending, pos = [], b"", HEADER_LEN
    while pos + RECORD_HEADER_LEN <= len(data):
        room = BLOCK_LEN - pos % BLOCK_LEN
        if room < RECORD_HEADER_LEN:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + RECORD_HEADER_LEN])
        pos += RECORD_HEADER_LEN
        if kind == 0 and length == 0:
            pos += BLOCK_LEN - pos % BLOCK_LEN if pos % BLOCK_LEN else 0
            continue
        chunk, pos = data[pos : pos + length], pos + length
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


@dataclass
class OfflineRun:
    """What an offline run recorded: its identity, config, history rows, summary and exit code."""

    run_id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None


def _items(items) -> dict:
    return {"/".join(item.nested_key) if item.nested_key else item.key: json.loads(item.value_json) for item in items}


def read_run(run_folder: Path) -> OfflineRun:
    """Parse `<run_folder>/run-<id>.wandb`."""
    (log,) = Path(run_folder).glob("*.wandb")
    run = OfflineRun()
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.name, run.group, run.job_type = r.run_id, r.project, r.display_name, r.run_group, r.job_type
            run.tags = list(r.tags)
            run.config.update(_items(r.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline run folders under `<run_dir>/wandb/`."""
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
