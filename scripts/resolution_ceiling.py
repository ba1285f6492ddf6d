"""`python scripts/resolution_ceiling.py [--data-root ../shared/data] [--sizes 128,192,256]`: the test mIoU a
perfect model at each training resolution would get, scored as runs are scored.

For every test trimap of the pets data: the mask resized to size x size with NEAREST (as the training and
test targets are), its one-hot taken as the logits of a model that is right on every pixel at that size,
those logits resized bilinearly to the original size and their argmax compared with the original trimap (as
`SegmentationTask.test` does), one confusion matrix over the split. What a model scores below this ceiling is
its own error, not the resolution's. Prints one line of scores per size.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.datasets import OxfordIIITPet

from s18exp.data.pets import CLASS_SCHEMES
from s18exp.metrics import ConfusionMatrix, segmentation_scores
from s18exp.tasks.segmentation import upsampled_classes


def resolution_ceiling(trimaps: Iterable[Image.Image], size: int, classes: str = "trimap") -> dict[str, float]:
    """Scores (`segmentation_scores` keys) of an oracle at `size` px against the original `trimaps`."""
    names, mapping = CLASS_SCHEMES[classes]
    lookup = np.zeros(256, dtype=np.int64)
    for value, index in mapping.items():
        lookup[value] = index
    matrix = ConfusionMatrix(len(names))
    for trimap in trimaps:
        truth = torch.from_numpy(lookup[np.asarray(trimap)])
        small = torch.from_numpy(lookup[np.asarray(trimap.resize((size, size), Image.NEAREST))])
        oracle_logits = F.one_hot(small, len(names)).permute(2, 0, 1).float()
        matrix.update(upsampled_classes(oracle_logits, tuple(truth.shape)), truth)
    return segmentation_scores(matrix.matrix(), names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"), help="the folder holding oxford-iiit-pet/")
    parser.add_argument("--sizes", default="128,192,256", help="training resolutions, comma-separated")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    test = OxfordIIITPet(str(args.data_root), split="test", target_types="segmentation", download=False)
    for size in sizes:
        scores = resolution_ceiling((test[i][1] for i in range(len(test))), size)
        print(f"{size} px ({len(test)} test trimaps): " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
