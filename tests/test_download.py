"""A download that fails leaves nothing behind and says why in one line, for every data set; a download never
removes or replaces a file it did not create (another process's, or one that was there before).

The network is never reached: torchvision's download function is replaced by one that writes part of a file,
as a connection that drops would, and then raises.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torchvision.datasets.cifar
import torchvision.datasets.mnist
import torchvision.datasets.oxford_iiit_pet
from conftest import TinyPets

from s18exp.data.cifar10 import CIFAR10Data
from s18exp.data.download import short_reason
from s18exp.data.mnist import MNISTData
from s18exp.data.pets import PetsData
from s18exp.errors import UserError

DATASETS = {
    "pets": (PetsData, torchvision.datasets.oxford_iiit_pet, "Oxford-IIIT Pet not found under"),
    "mnist": (MNISTData, torchvision.datasets.mnist, "MNIST not found under"),
    "cifar10": (CIFAR10Data, torchvision.datasets.cifar, "CIFAR-10 not found under"),
}


def unreachable(url: str, download_root: str, *args: object, **kwargs: object) -> None:
    Path(download_root).mkdir(parents=True, exist_ok=True)
    (Path(download_root) / Path(url).name).write_bytes(b"the first bytes of an archive")
    raise URLError("[Errno -3] Temporary failure in name resolution")


def all_paths(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_failed_download_into_a_new_folder_leaves_nothing(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_class, module, start = DATASETS[name]
    monkeypatch.setattr(module, "download_and_extract_archive", unreachable)
    root = tmp_path / "mistyped" / "data"
    with pytest.raises(UserError) as info:
        data_class(str(root), download=True, cache=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{start} {root}")
    assert "the download failed (" in message
    assert "<urlopen error [Errno -3] Temporary failure in name resolution>)" in message
    assert message.endswith("set data.root=DIR or S18EXP_DATA=DIR to the folder that holds it") or message.endswith("oxford-iiit-pet/")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_failed_download_keeps_what_was_there(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_class, module, _ = DATASETS[name]
    monkeypatch.setattr(module, "download_and_extract_archive", unreachable)
    (tmp_path / "notes.txt").write_text("mine")
    partial = {"pets": "oxford-iiit-pet", "mnist": "MNIST", "cifar10": "cifar-10-batches-py"}[name]
    (tmp_path / partial / "mine").mkdir(parents=True)
    (tmp_path / partial / "mine" / "keep.txt").write_text("mine too")
    before = all_paths(tmp_path)
    with pytest.raises(UserError):
        data_class(str(tmp_path), download=True, cache=False)
    assert all_paths(tmp_path) == before
    assert (tmp_path / partial / "mine" / "keep.txt").read_text() == "mine too"


def test_the_reason_is_the_innermost_cause_on_one_short_line() -> None:
    try:
        try:
            raise ConnectionResetError("reset by peer\nmore detail")
        except ConnectionResetError as inner:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://...") from inner
    except RuntimeError as exc:
        assert short_reason(exc) == "ConnectionResetError: reset by peer: more detail"
    mirrors = "Error downloading t10k.gz:\nTried https://a/, got:\nHTTP Error 503\nTried https://b/, got:\n<urlopen error timed out>\n"
    assert short_reason(RuntimeError(mirrors)) == "RuntimeError: Error downloading t10k.gz: <urlopen error timed out>"
    assert short_reason(RuntimeError("x" * 300)) == "RuntimeError: " + "x" * 143 + "..."


def test_a_failed_download_keeps_a_file_another_process_writes_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process (here: the download function itself, before it fails) puts a file into the data root
    and into the data set's folder while the download runs: both are still there afterwards."""
    root = tmp_path / "data"

    def unreachable_while_another_writes(url: str, download_root: str, *args: object, **kwargs: object) -> None:
        (root / "theirs.txt").write_text("another process")
        (root / "oxford-iiit-pet").mkdir(exist_ok=True)
        (root / "oxford-iiit-pet" / "theirs-too.txt").write_text("another process")
        unreachable(url, download_root)

    monkeypatch.setattr(torchvision.datasets.oxford_iiit_pet, "download_and_extract_archive", unreachable_while_another_writes)
    with pytest.raises(UserError, match="the download failed"):
        PetsData(str(root), download=True, cache=False)
    assert (root / "theirs.txt").read_text() == "another process"
    assert (root / "oxford-iiit-pet" / "theirs-too.txt").read_text() == "another process"
    assert sorted(p.name for p in root.iterdir()) == ["oxford-iiit-pet", "theirs.txt"]  # nothing of the download's


def test_a_download_keeps_a_file_that_was_already_there(tiny_pets: TinyPets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A download that succeeds (the tiny data set stands in for the archives) adds the data set's files and
    leaves a file of the same name that was there before as it was."""
    root = tmp_path / "data"
    (root / "oxford-iiit-pet").mkdir(parents=True)
    (root / "oxford-iiit-pet" / "README").write_text("mine")

    def delivers_the_tiny_set(url: str, download_root: str, *args: object, **kwargs: object) -> None:
        shutil.copytree(tiny_pets.base, download_root, dirs_exist_ok=True)
        (Path(download_root) / "README").write_text("the archive's")

    monkeypatch.setattr(torchvision.datasets.oxford_iiit_pet, "download_and_extract_archive", delivers_the_tiny_set)
    data = PetsData(str(root), image_size=32, download=True, cache=False)
    assert len(data.train) + len(data.val) == len(tiny_pets.trainval) and len(data.test) == len(tiny_pets.test)
    assert (root / "oxford-iiit-pet" / "README").read_text() == "mine"
    assert sorted(p.name for p in root.iterdir()) == ["oxford-iiit-pet"]  # no staging folder left
    assert (root / "oxford-iiit-pet" / "images" / f"{tiny_pets.test[0]}.jpg").read_bytes() == tiny_pets.image_file(tiny_pets.test[0]).read_bytes()


def test_a_download_that_does_not_open_leaves_nothing_it_placed(tmp_path: Path) -> None:
    """Files that arrived and were moved into place are taken back when the data then fail to open; what was
    there before stays."""
    from s18exp.data.download import DownloadFailed, download_cleanly

    (tmp_path / "data" / "mine").mkdir(parents=True)
    (tmp_path / "data" / "mine" / "keep.txt").write_text("mine")
    before = all_paths(tmp_path)

    def arrives(folder: Path) -> None:
        (folder / "data" / "new" / "deep").mkdir(parents=True)
        (folder / "data" / "new" / "deep" / "a.bin").write_bytes(b"x")
        (folder / "data" / "mine").mkdir()
        (folder / "data" / "mine" / "b.bin").write_bytes(b"y")

    with pytest.raises(DownloadFailed, match="expected layout"):
        download_cleanly(arrives, lambda: None, tmp_path, ("data",))
    assert all_paths(tmp_path) == before
