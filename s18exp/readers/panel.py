"""The panel: readers trained once per dataset, image size and training split, cached, and their readings.

Each reader is cached in `paths.cache_dir/readers/` under a key that hashes the training tensors, the
reader's settings (its name, architecture, width, schedule, seed and augmentation), its network's layers and
the recipe that every reader's training shares, like the judge. The
entry also records the reader's accuracy on the test split it was first scored on and its training time.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s18exp import console
from s18exp.data import TensorSplit
from s18exp.data.cache import cached, tensor_digest
from s18exp.errors import UserError
from s18exp.models.judge import classify
from s18exp.readers.augment import AUGMENT_KEYS
from s18exp.readers.networks import ARCHITECTURES, build_reader
from s18exp.readers.training import RECIPE, train_reader
from s18exp.runtime import Runtime

READER_KEYS = ("arch", "width", "epochs", "batch_size", "lr", "seed", "augment")
RESERVED_NAMES = ("judge",)  # the judge's column in test_items.npz
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass
class Reader:
    name: str
    network: nn.Module
    test_acc: float  # on the real test split it was first scored on, when it was trained
    test_images: int  # the size of that split
    train_seconds: float


def _number(where: str, value: Any, low: float, integer: bool = False) -> float:
    """`value`, or a UserError naming `where` when it is not a finite number >= `low` (an integer if asked)."""
    numeric = not isinstance(value, bool) and isinstance(value, (int, float))
    if not numeric or not low <= value < math.inf or (integer and value != int(value)):
        kind = "an integer" if integer else "a finite number"
        raise UserError(f"{where}={value!r} must be {kind} >= {low:g}")
    return value


def checked_readers(readers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """task.panel.readers as plain settings, each checked; a UserError names the first bad value."""
    if not isinstance(readers, dict) or not readers:
        raise UserError("task.panel.readers must name at least one reader; e.g. the three of conf/task/vae.yaml")
    checked = {}
    for name, settings in readers.items():
        where = f"task.panel.readers.{name}"
        if not NAME_PATTERN.fullmatch(str(name)) or name in RESERVED_NAMES:
            raise UserError(f"{where}: a reader's name must be lowercase letters, digits and _ (at most 32), and not judge")
        if not isinstance(settings, dict) or set(settings) != set(READER_KEYS):
            raise UserError(f"{where} must set exactly {', '.join(READER_KEYS)}; it sets {', '.join(settings or [])}")
        if settings["arch"] not in ARCHITECTURES:
            raise UserError(f"{where}.arch={settings['arch']!r} is not one of {'|'.join(ARCHITECTURES)}")
        for key in ("width", "epochs", "batch_size"):
            _number(f"{where}.{key}", settings[key], 1, integer=True)
        _number(f"{where}.seed", settings["seed"], 0, integer=True)
        if not _number(f"{where}.lr", settings["lr"], 0) > 0:
            raise UserError(f"{where}.lr=0 must be > 0; e.g. 3e-3")
        augment = settings["augment"]
        if not isinstance(augment, dict) or set(augment) != set(AUGMENT_KEYS):
            raise UserError(f"{where}.augment must set exactly {', '.join(AUGMENT_KEYS)}")
        if not isinstance(augment["flip"], bool):
            raise UserError(f"{where}.augment.flip={augment['flip']!r} must be true or false")
        for key in ("shift", "blur", "blur_share", "fade", "noise"):
            _number(f"{where}.augment.{key}", augment[key], 0, integer=key == "shift")
        for key in ("blur_share", "fade"):
            if augment[key] > 1:
                raise UserError(f"{where}.augment.{key}={augment[key]} is a fraction; give a number in [0, 1]")
        checked[str(name)] = settings
    return checked


def panel_for(
    train: TensorSplit, test: TensorSplit, dataset: str, class_names: list[str], readers: dict[str, dict[str, Any]],
    runtime: Runtime, cache_dir: str | Path | None, progress: str = "auto",
) -> list[Reader]:
    """Every reader of `readers` (checked settings), read from the cache when trained before, else trained on
    `train`, scored on `test` and cached."""
    digest = tensor_digest(train.images, train.targets.long())
    panel = []
    for name, settings in readers.items():
        with torch.random.fork_rng(devices=[]):  # its initial weights are replaced below; the run's RNG stays as it was
            network = build_reader(settings["arch"], train.images.shape[1], len(class_names), settings["width"], train.images.shape[-1])
        description = {
            "dataset": dataset,
            "split": f"reader-{name}",
            "image_size": int(train.images.shape[-1]),
            "channels": int(train.images.shape[1]),
            "classes": list(class_names),
            "train": digest,
            "settings": settings,
            # the network's layers as torch prints them and the shared recipe: a change of either trains anew
            "network": str(network),
            "recipe": RECIPE,
        }

        def build(name: str = name, settings: dict[str, Any] = settings) -> dict:
            console.info(f"training reader {name} ({settings['arch']}) on {len(train)} {dataset} training images (cached afterwards)")
            start = time.perf_counter()
            trained = train_reader(name, train, len(class_names), settings, runtime, progress)
            seconds = time.perf_counter() - start
            accuracy = float((classify(trained, test.images, runtime) == test.targets).double().mean())
            console.info(f"reader {name}: {accuracy:.4f} on {len(test)} real test images, trained in {seconds:.0f} s")
            state = {k: v.detach().cpu() for k, v in trained.state_dict().items()}
            return {"state_dict": state, "test_acc": accuracy, "test_images": len(test), "train_seconds": seconds}

        entry = cached(Path(cache_dir) / "readers" if cache_dir else None, description, build)
        network.load_state_dict(entry["state_dict"])
        recorded = (float(entry["test_acc"]), int(entry["test_images"]), float(entry["train_seconds"]))
        panel.append(Reader(name, runtime.prepare_model(network).eval(), *recorded))
    return panel
