"""Files from elsewhere are data: a checkpoint whose config calls a resolver runs nothing, a checkpoint that names
folders of its own reads and writes none of them, a file that is not a checkpoint says so in one line, and
`predict` never writes over its own inputs or trimaps.

The resolver payloads are what an attacker would ship: `oc.create` builds a node whose `_target_` Hydra calls
when the config is instantiated, here `pathlib.Path.write_text` on a marker file (harmless, and visible)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from conftest import TinyPets, cli_env, smoke_overrides_for
from s18exp import generate, predict, score
from s18exp.data.cifar10 import CLASS_NAMES as CIFAR_CLASSES
from s18exp.paths import CONFIG_DIR
from s18exp.tasks.vae import VAETask
from test_checkpoint import compose_config, one_error_line, plain_checkpoint


def writes_marker(marker: Path) -> str:
    """A config value that, once resolved and instantiated, writes `marker`."""
    return (
        "${oc.create:{_target_: pathlib.Path.write_text, "
        f"_args_: [{{_target_: pathlib.Path, _args_: ['{marker}']}}, pwned]}}}}"
    )


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder): what 'nothing changed there' compares."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def compose_vae_cifar():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "task=vae", "data=cifar10", "data.image_size=16", "model.width=4", "model.depth=2", "model.latent_dim=4", "model.embed_dim=4",
        ])


def vae_checkpoint(**config_changes: object) -> dict:
    """A VAE checkpoint of CIFAR-10 classes (untrained weights) with `config_changes` ('a.b': value) in its config."""
    cfg = compose_vae_cifar()
    torch.manual_seed(0)
    state = {"config": OmegaConf.to_container(cfg, resolve=True), "model": VAETask(cfg).build_model().state_dict(), "class_names": list(CIFAR_CLASSES)}
    for dotted, value in config_changes.items():
        *parents, key = dotted.split(".")
        node = state["config"]
        for name in parents:
            node = node[name]
        node[key] = value
    return state


def write_cifar_like(folder: Path, per_class: int = 2) -> Path:
    """folder/{train,test}/<CIFAR class>/*.jpg: what `data=cifar10` reads under its jpg_dir."""
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        for name in CIFAR_CLASSES:
            (folder / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / split / name / f"{i}.jpg")
    return folder


@pytest.fixture
def local_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME in a temporary folder, so that the local default data and cache folders land there; no S18EXP_DATA."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("S18EXP_DATA", raising=False)
    return home


# --- a resolver in a checkpoint's config runs nothing ---------------------------------------------------


@pytest.mark.parametrize("where", ["value", "key"])
def test_predict_and_score_refuse_a_checkpoint_whose_config_calls_a_resolver(
    tiny_pets: TinyPets, tmp_path: Path, capsys, where: str, local_home: Path
) -> None:
    marker = tmp_path / "pwned"
    state = plain_checkpoint(compose_config())
    if where == "value":
        state["config"]["loss"]["criterion"] = writes_marker(marker)
    else:
        state["config"][writes_marker(marker)] = 1
    ckpt = tmp_path / "crafted.pt"
    torch.save(state, ckpt)
    image = tiny_pets.image_file(tiny_pets.test[0])

    assert predict.main([f"ckpt={ckpt}", f"input={image}", f"output={tmp_path / 'out'}"]) == 2
    assert "refusing to load it" in one_error_line(capsys.readouterr().err)
    assert score.main([f"ckpt={ckpt}", f"data_root={tiny_pets.root}", f"output={tmp_path / 'scores.json'}"]) == 2
    assert "refusing to load it" in one_error_line(capsys.readouterr().err)
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "scores.json").exists()


@pytest.mark.parametrize("where", ["value", "key"])
def test_generate_refuses_a_vae_checkpoint_whose_config_calls_a_resolver(tmp_path: Path, capsys, where: str, local_home: Path) -> None:
    cifar = write_cifar_like(tmp_path / "data" / "cifar10-jpg").parent
    # the same checkpoint without the resolver generates: the refusal below is the resolver's alone
    torch.save(vae_checkpoint(), tmp_path / "plain.pt")
    assert generate.main([f"ckpt={tmp_path / 'plain.pt'}", "n=2", f"root={cifar}", f"output={tmp_path / 'plain.npz'}"]) == 0
    with np.load(tmp_path / "plain.npz", allow_pickle=False) as arrays:
        assert arrays["outputs"].shape == (2, 16, 16, 3)

    marker = tmp_path / "pwned"
    state = vae_checkpoint(**({"model.embed_dim": writes_marker(marker)} if where == "value" else {}))
    if where == "key":
        state["config"]["model"][writes_marker(marker)] = 1
    ckpt = tmp_path / "crafted.pt"
    torch.save(state, ckpt)
    assert generate.main([f"ckpt={ckpt}", "n=2", f"root={cifar}", f"output={tmp_path / 'out.npz'}"]) == 2
    assert "refusing to load it" in one_error_line(capsys.readouterr().err)
    assert not marker.exists() and not (tmp_path / "out.npz").exists()


@pytest.fixture(scope="module")
def finished_run(tiny_pets: TinyPets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run dir of a finished 1-epoch smoke run."""
    work = tmp_path_factory.mktemp("finished")
    run_dir = work / "run"
    result = run_cli([*smoke_overrides_for(tiny_pets.root, work), f"hydra.run.dir={run_dir}"], work)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def run_cli(args: list[str], work: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s18exp", *args], cwd=work, env=cli_env(work / "wandb-home"), capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_resume_refuses_a_last_pt_whose_config_calls_a_resolver(tiny_pets: TinyPets, tmp_path: Path, finished_run: Path) -> None:
    """A real last.pt (every training state a resume needs) with the resolver in loss.criterion."""
    marker = tmp_path / "pwned"
    state = torch.load(finished_run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    state["config"]["loss"]["criterion"] = writes_marker(marker)
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    run_dir = tmp_path / "run"
    result = run_cli([*smoke_overrides_for(tiny_pets.root, tmp_path), f"trainer.resume={crafted}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "refusing to load it" in one_error_line(result.stderr)
    assert not marker.exists()
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists()


# --- a checkpoint's folders are never read or written ----------------------------------------------------


def test_score_reads_and_writes_nowhere_a_checkpoint_names(tiny_pets: TinyPets, tmp_path: Path, capsys, local_home: Path) -> None:
    """The checkpoint points data.root at a folder that holds the data (so that following it would work),
    its caches there too, and asks for a download. `score` with data_root= uses that folder and the local
    cache; without data_root it looks in the local default folder, finds nothing and stops in one line."""
    evil = tmp_path / "evil"
    shutil.copytree(tiny_pets.root, evil / "data")
    state = plain_checkpoint(compose_config())
    config = state["config"]
    config["data"].update(root=str(evil / "data"), download=True, cache=True)
    config["paths"].update(cache_dir=str(evil / "cache"), data_home=str(evil / "home"))
    ckpt = tmp_path / "foreign.pt"
    torch.save(state, ckpt)
    before = tree(evil)

    assert score.main([f"ckpt={ckpt}", f"data_root={tiny_pets.root}"]) == 0
    assert tree(evil) == before
    assert list((local_home / ".cache" / "s18exp" / "tensors").glob("*.pt")), "the cache is the local machine's"

    assert score.main([f"ckpt={ckpt}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"not found under {local_home / '.cache' / 's18exp' / 'data'}" in line
    assert tree(evil) == before


def test_generate_reads_and_writes_nowhere_a_checkpoint_names(tmp_path: Path, capsys, local_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above for a CIFAR-10 VAE whose checkpoint also moves the image folder out of its root
    (data.jpg_dir='../x', where a copy of the images lies) and asks for a download, which must never start."""
    downloads: list[str] = []

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        downloads.append(url)
        raise OSError("the test has no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    evil = tmp_path / "evil"
    (evil / "data").mkdir(parents=True)
    write_cifar_like(evil / "x")
    local = write_cifar_like(tmp_path / "local" / "cifar10-jpg").parent
    ckpt = tmp_path / "foreign.pt"
    torch.save(vae_checkpoint(**{
        "data.root": str(evil / "data"), "data.jpg_dir": "../x", "data.download": True, "data.cache": True,
        "paths.cache_dir": str(evil / "cache"), "paths.data_home": str(evil / "home"),
    }), ckpt)
    before = tree(evil)

    assert generate.main([f"ckpt={ckpt}", "n=2", f"root={local}", f"output={tmp_path / 'out.npz'}"]) == 0
    assert (tmp_path / "out.npz").is_file()
    assert tree(evil) == before and downloads == []

    assert generate.main([f"ckpt={ckpt}", "n=2", f"output={tmp_path / 'again.npz'}"]) == 2
    assert f"CIFAR-10 not found under {local_home / '.cache' / 's18exp' / 'data'}" in one_error_line(capsys.readouterr().err)
    assert tree(evil) == before and downloads == [] and not (tmp_path / "again.npz").exists()


# --- not a checkpoint at all ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["predict", "score", "generate"])
def test_random_bytes_are_not_a_pytorch_checkpoint(tiny_pets: TinyPets, tmp_path: Path, capsys, command: str) -> None:
    ckpt = tmp_path / "noise.pt"
    ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    args = {
        "predict": [f"input={tiny_pets.image_file(tiny_pets.test[0])}", f"output={tmp_path / 'out'}"],
        "score": [f"data_root={tiny_pets.root}"],
        "generate": ["n=1", f"output={tmp_path / 'out.npz'}"],
    }[command]
    main = {"predict": predict.main, "score": score.main, "generate": generate.main}[command]
    assert main([f"ckpt={ckpt}", *args]) == 2
    assert f"{ckpt} is not a PyTorch checkpoint" in one_error_line(capsys.readouterr().err)


# --- predict never writes over what it reads -----------------------------------------------------------------


@pytest.fixture
def unet_checkpoint(tmp_path: Path) -> Path:
    """An untrained but valid UNet checkpoint: every refusal below is predict's own, not the checkpoint's."""
    path = tmp_path / "unet.pt"
    torch.save(plain_checkpoint(compose_config()), path)
    return path


def test_predict_refuses_two_inputs_with_one_stem(tiny_pets: TinyPets, tmp_path: Path, capsys, unet_checkpoint: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    shutil.copyfile(tiny_pets.image_file(tiny_pets.test[0]), images / "a.jpg")
    Image.open(tiny_pets.image_file(tiny_pets.test[1])).convert("RGB").save(images / "a.png")
    before = tree(images)
    assert predict.main([f"ckpt={unet_checkpoint}", f"input={images}", f"output={tmp_path / 'out'}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "a.jpg" in line and "a.png" in line
    assert not (tmp_path / "out").exists() and tree(images) == before


def test_predict_refuses_to_write_over_an_input_image(tiny_pets: TinyPets, tmp_path: Path, capsys, unet_checkpoint: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    Image.open(tiny_pets.image_file(tiny_pets.test[0])).convert("RGB").save(images / "b.png")
    before = tree(images)
    assert predict.main([f"ckpt={unet_checkpoint}", f"input={images}", f"output={images}"]) == 2
    assert "b.png" in one_error_line(capsys.readouterr().err)
    assert tree(images) == before


def test_predict_refuses_to_write_over_a_trimap(tiny_pets: TinyPets, tmp_path: Path, capsys, unet_checkpoint: Path) -> None:
    images, truth = tmp_path / "in", tmp_path / "truth"
    images.mkdir(), truth.mkdir()
    for name in tiny_pets.test[:2]:
        shutil.copyfile(tiny_pets.image_file(name), images / f"{name}.jpg")
        shutil.copyfile(tiny_pets.trimap_file(name), truth / f"{name}.png")
    before = tree(truth)
    assert predict.main([f"ckpt={unet_checkpoint}", f"input={images}", f"truth={truth}", f"output={truth}"]) == 2
    assert "would overwrite the input file" in one_error_line(capsys.readouterr().err)
    assert tree(truth) == before
