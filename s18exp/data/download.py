"""Downloads through torchvision that leave nothing behind when they fail.

torchvision creates the data set's folders before it fetches anything, so a download that fails (no network,
a mistyped `data.root`) would leave empty or half-written folders. `download_cleanly` removes what the
attempt created, the root folder and its missing parents included, and reports the cause in a few words.
`with_download` is how every data set opens its files: the local copy, else a clean download where allowed,
else one line that says what is missing and why.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Callable, TypeVar

from s18exp.errors import UserError

DOWNLOAD_TIMEOUT_S = 20
REASON_CHARS = 160  # enough for "RuntimeError: Error downloading <file>: <urlopen error [Errno -3] Temporary failure ...>"
T = TypeVar("T")


class DownloadFailed(Exception):
    """The download did not complete; the message is its cause in one short line."""


def _tree(folder: Path) -> set[Path]:
    found: set[Path] = set()
    for parent, dirs, files in os.walk(folder):
        found.update(Path(parent) / name for name in dirs + files)
    return found


class _Snapshot:
    """What exists under `root` before a download: the missing folders down to it, its entries, and the
    whole tree of the sub-folders the download writes into (`touches`)."""

    def __init__(self, root: Path, touches: tuple[str, ...]) -> None:
        self.missing: list[Path] = []
        path = root.absolute()
        while not path.exists():
            self.missing.append(path)
            path = path.parent
        self.root = root.absolute()
        self.entries = set(self.root.iterdir()) if self.root.is_dir() else set()
        self.trees = {self.root / name: _tree(self.root / name) for name in touches if (self.root / name).is_dir()}

    def restore(self) -> None:
        """Remove whatever appeared since; never what was there before."""
        if self.root.is_dir():
            for entry in set(self.root.iterdir()) - self.entries:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for folder, before in self.trees.items():
            for path in sorted(_tree(folder) - before, key=lambda p: len(p.parts), reverse=True):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        for folder in self.missing:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def short_reason(exc: BaseException) -> str:
    """The innermost cause of `exc` on one line, cut to REASON_CHARS: its type, the first line of its message
    and, for a message of several lines (torchvision's MNIST lists each mirror it tried), the last one."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}" if lines else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def download_cleanly(download: Callable[[], T], root: Path, touches: tuple[str, ...]) -> T:
    """`download()` with a socket timeout; when it fails, DownloadFailed with the cause, after removing
    everything it created under `root` (`touches`: the sub-folders it writes into, which may exist already)."""
    snapshot = _Snapshot(root, touches)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return download()
    except BaseException as exc:
        snapshot.restore()
        if not isinstance(exc, Exception):
            raise
        raise DownloadFailed(short_reason(exc)) from exc
    finally:
        socket.setdefaulttimeout(previous)


def with_download(
    open_local: Callable[[], T | None], download: Callable[[], T], allowed: bool, missing: str, root: Path,
    touches: tuple[str, ...], holds: str = "it",
) -> T:
    """`open_local()` when the data is there; else `download()` when allowed (`download_cleanly`); else, or when
    the download fails, a one-line UserError that starts with `missing` (which names the path looked in) and
    asks for data.root=DIR, the folder that `holds` the data."""
    found = open_local()
    if found is not None:
        return found
    if not allowed:
        reason = "data.download=false"
    else:
        try:
            return download_cleanly(download, root, touches)
        except DownloadFailed as exc:
            reason = f"the download failed ({exc})"
    raise UserError(f"{missing} and {reason}; set data.root=DIR or S18EXP_DATA=DIR to the folder that holds {holds}")
