"""`python scripts/resolution_ceiling.py [--data-root ../shared/data] [--sizes 128,192,256]`: the test mIoU a
perfect model at each training resolution would get, scored as runs are scored.

For every test image of the pets data, the targets a run trains and scores with, from `PetsData` itself: the
mask at size x size (NEAREST) and the original trimap. The small mask's one-hot is taken as the logits of a
model that is right on every pixel at that size; those logits are resized bilinearly to the original size and
their argmax compared with the original trimap (as `SegmentationTask.test` does), one confusion matrix over
the split. What a model scores below this ceiling is its own error, not the resolution's. Prints one line of
scores per size.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from s18exp.data.pets import PetsData
from s18exp.metrics import ConfusionMatrix, segmentation_scores
from s18exp.tasks.segmentation import upsampled_classes


def resolution_ceiling(masks: Iterable[tuple[torch.Tensor, torch.Tensor]], class_names: list[str]) -> dict[str, float]:
    """Scores (`segmentation_scores` keys) of an oracle whose predictions are the small masks: pairs of
    (class indices at the training size, class indices at the original size)."""
    matrix = ConfusionMatrix(len(class_names))
    for small, full in masks:
        oracle_logits = F.one_hot(small.long(), len(class_names)).permute(2, 0, 1).float()
        matrix.update(upsampled_classes(oracle_logits, tuple(full.shape)), full)
    return segmentation_scores(matrix.matrix(), class_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"), help="the folder holding oxford-iiit-pet/")
    parser.add_argument("--sizes", default="128,192,256", help="training resolutions, comma-separated")
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        # one train and one val image: only the test split is scored, so the others need not be decoded
        data = PetsData(str(args.data_root), image_size=size, download=False, cache=False, limit_train=1, limit_val=1)
        test = data.test
        scores = resolution_ceiling(zip(test.targets, test.full_targets), data.class_names)
        print(f"{size} px ({len(test)} test trimaps): " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
