"""A download that fails leaves nothing behind and says why in one line, for every data set.

The network is never reached: torchvision's download function is replaced by one that writes part of a file,
as a connection that drops would, and then raises.
"""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torchvision.datasets.cifar
import torchvision.datasets.mnist
import torchvision.datasets.oxford_iiit_pet

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
