"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file that s18exp leaves (checkpoints, summaries, pictures, the report, cached tensors) is written to a
temporary file in the same folder, flushed to disk and renamed over the real name; a failed write removes
its temporary file. torch is imported only to save a checkpoint, so that writing text or JSON (the sweeper's
multirun.yaml) does not load it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes owner-only files; the files a run leaves get the permissions of a plain open() instead.
FILE_MODE = 0o666 & ~_umask()


def _replace_through_temporary(path: str | Path, fill: Callable[[str], None]) -> None:
    """`fill(tmp)` makes a temporary file beside `path`, which then replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fill(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(f)` fills a binary file object; its bytes reach the disk (fsync) before they replace `path`."""

    def fill(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    _replace_through_temporary(path, fill)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: str | Path) -> None:
    """UTF-8 text."""
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj: Any, path: str | Path, sort_keys: bool = True) -> None:
    """Indented JSON, keys sorted unless `sort_keys` is False (where their order means something)."""
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n", path)


def atomic_save_image(image: Any, path: str | Path, text: dict[str, str] | None = None, **options: Any) -> None:
    """A PIL image, its format from the suffix (.png, .jpg, .jpeg); `text`: key-value notes a PNG carries in
    its own text chunks; `options`: the format's save options (e.g. `compress_level`, `quality`)."""
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[Path(path).suffix.lower()]
    if text:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        options["pnginfo"] = info
    atomic_write(path, lambda f: image.save(f, format=fmt, **options))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` of `obj`."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_link(source: str | Path, path: str | Path) -> None:
    """`path` becomes the same file as `source` (a hard link, or a copy where links are not supported)."""

    def link(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    _replace_through_temporary(path, link)


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete temporary files that a killed writer left behind (the real files are intact)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
