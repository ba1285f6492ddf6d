"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes owner-only files; the files a run leaves get the permissions of a plain open() instead.
FILE_MODE = 0o666 & ~_umask()


def _atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_link(source: str | Path, path: str | Path) -> None:
    """`path` becomes the same file as `source` (a hard link, or a copy where links are not supported)."""

    def link(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    _atomic_write(path, link)


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete temporary files that a killed writer left behind (the real files are intact)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` through a temporary file in the same folder and a rename."""
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    """Indented JSON through a temporary file and a rename."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic_write(path, write)


def atomic_save_image(image: Any, path: str | Path) -> None:
    """Save a PIL image (format from the suffix) through a temporary file and a rename."""
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[Path(path).suffix.lower()]
    _atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Text through a temporary file and a rename."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    _atomic_write(path, write)
