"""Downloads through torchvision that leave nothing behind when they fail, and touch nothing they did not create.

torchvision creates the data set's folders before it fetches anything, so a download that fails (no network,
a mistyped `data.root`) would leave empty or half-written folders. `download_cleanly` has torchvision download
into a private staging folder inside the root, moves what arrived into place only once the download has
succeeded (never over a file that is already there), and on failure removes the staging folder and the root
folders it created itself, nothing else: files that other processes write into the same root meanwhile are
never touched. `with_download` is how every data set opens its files: the local copy, else a clean download
where allowed, else one line that says what is missing and why.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

from s18exp.errors import UserError

DOWNLOAD_TIMEOUT_S = 20
REASON_CHARS = 160  # enough for "RuntimeError: Error downloading <file>: <urlopen error [Errno -3] Temporary failure ...>"
STAGING_PREFIX = ".s18exp-download-"
T = TypeVar("T")


class DownloadFailed(Exception):
    """The download did not complete; the message is its cause in one short line."""


def _make_folders(root: Path) -> list[Path]:
    """Create `root` and its missing parents; the folders created, deepest first."""
    created: list[Path] = []
    path = root.absolute()
    while not path.exists():
        created.append(path)
        path = path.parent
    root.mkdir(parents=True, exist_ok=True)
    return created


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; a folder someone else has put a file into stays
        try:
            folder.rmdir()
        except OSError:
            break


def _merge(staged: Path, target: Path, placed: list[Path]) -> None:
    """Move every file under `staged` to the same place under `target`, creating folders as needed and
    leaving any file that already exists there as it is; what it creates is appended to `placed`, in order."""
    for parent, _dirs, files in os.walk(staged):
        here = target / Path(parent).relative_to(staged)
        placed.extend(_make_folders(here)[::-1])
        for name in files:
            if not (here / name).exists():
                os.replace(Path(parent) / name, here / name)
                placed.append(here / name)


def _remove_placed(placed: list[Path]) -> None:
    """Undo `_merge`: its files, then its folders where they are empty (newest first)."""
    for path in reversed(placed):
        if path.is_dir():
            _remove_if_empty([path])
        else:
            path.unlink(missing_ok=True)


def short_reason(exc: BaseException) -> str:
    """The innermost cause of `exc` on one line, cut to REASON_CHARS: its type, the first line of its message
    and, for a message of several lines (torchvision's MNIST lists each mirror it tried), the last one."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}" if lines else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def download_cleanly(download: Callable[[Path], object], open_local: Callable[[], T | None], root: Path, touches: tuple[str, ...]) -> T:
    """`download(staging)` with a socket timeout, into a staging folder inside `root`; then the sub-folders it
    wrote (`touches`) merged into `root` and the data opened from there with `open_local()`. When anything
    fails, DownloadFailed with the cause, after removing the staging folder, the files and folders the merge
    placed, and the folders it created for `root`."""
    created = _make_folders(root)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    placed: list[Path] = []
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        download(staging)
        for name in touches:
            if (staging / name).is_dir():
                _merge(staging / name, root / name, placed)
        found = open_local()
        if found is None:
            raise DownloadFailed("the downloaded files do not have the expected layout")
        return found
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_placed(placed)
        _remove_if_empty(created)
        if not isinstance(exc, Exception) or isinstance(exc, DownloadFailed):
            raise
        raise DownloadFailed(short_reason(exc)) from exc
    finally:
        socket.setdefaulttimeout(previous)
        shutil.rmtree(staging, ignore_errors=True)


def with_download(
    open_local: Callable[[], T | None], download: Callable[[Path], object], allowed: bool, missing: str, root: Path,
    touches: tuple[str, ...], holds: str = "it",
) -> T:
    """`open_local()` when the data is there; else `download(folder)` when allowed (`download_cleanly`: it
    downloads into `folder`, and the files are moved under `root`); else, or when
    the download fails, a one-line UserError that starts with `missing` (which names the path looked in) and
    asks for data.root=DIR, the folder that `holds` the data."""
    found = open_local()
    if found is not None:
        return found
    if not allowed:
        reason = "data.download=false"
    else:
        try:
            return download_cleanly(download, open_local, root, touches)
        except DownloadFailed as exc:
            reason = f"the download failed ({exc})"
    raise UserError(f"{missing} and {reason}; set data.root=DIR or S18EXP_DATA=DIR to the folder that holds {holds}")
