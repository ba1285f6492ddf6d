"""A disk cache of decoded tensors, keyed by everything that determines their content.

The key hashes the dataset name, split, image size, class scheme, a format version, and the name,
size and modification time of every source file, so a changed, added or removed file gives a new
key and a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from s18exp.atomic_files import atomic_torch_save

FORMAT_VERSION = 1


def safe_label(text: str) -> str:
    """`text` as a file-name part that stays inside its folder: letters, digits, `.`, `_` and `-` only, no
    leading dot, at most 60 characters (the hash beside it keeps names apart)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".")[:60] or "entry"


def fingerprint(files: list[Path]) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of each file, in order."""
    stats = []
    for path in files:
        st = path.stat()
        stats.append((path.name, st.st_size, st.st_mtime_ns))
    return stats


def tensor_digest(*tensors: torch.Tensor) -> str:
    """A SHA-256 of the tensors' contents (bytes in C order), for cache keys of things trained on them."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached(cache_dir: str | Path | None, description: dict[str, Any], build: Callable[[], dict]) -> dict:
    """Return `build()`, read from `cache_dir` when an entry for `description` exists, else built and saved.
    An entry that cannot be read (truncated, corrupt, not a tensor file) is removed and built again."""
    if cache_dir is None:
        return build()
    text = json.dumps({"format": FORMAT_VERSION, **description}, sort_keys=True, default=str)
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    label = "-".join(str(description[k]) for k in ("dataset", "split", "image_size") if k in description)
    path = Path(cache_dir) / f"{safe_label(label)}-{key}.pt"
    if path.exists():
        try:
            value = torch.load(path, weights_only=True)
            if isinstance(value, dict):
                return value
        except Exception:  # whatever is wrong with the file, building it again mends it
            pass
        path.unlink(missing_ok=True)
    value = build()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        atomic_torch_save(value, path)
    except OSError:
        pass  # an unwritable cache only costs speed
    return value
