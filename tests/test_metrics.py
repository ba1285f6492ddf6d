"""The confusion matrix and the scores derived from it, against counts written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from s18exp.metrics import ConfusionMatrix, segmentation_scores

NAMES = ["pet", "background", "border"]

# Ten pixels as a 2 x 5 mask.
TARGET = torch.tensor([[0, 0, 0, 1, 1], [2, 2, 2, 2, 0]])
PREDICTED = torch.tensor([[0, 1, 0, 1, 2], [2, 2, 0, 2, 0]])
# (true, predicted) pairs: t0 -> p 0,1,0,0; t1 -> p 1,2; t2 -> p 2,2,0,2.
MATRIX = torch.tensor([[3, 1, 0], [0, 1, 1], [1, 0, 3]])
# Per class: TP = diagonal; FP = column sum - TP; FN = row sum - TP.
TP, FP, FN = [3, 1, 3], [1, 1, 1], [1, 1, 1]


def matrix_of(predicted: torch.Tensor, target: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    confusion = ConfusionMatrix(num_classes)
    confusion.update(predicted, target)
    return confusion.matrix()


def test_confusion_matrix_of_the_hand_example() -> None:
    matrix = matrix_of(PREDICTED, TARGET)
    assert matrix.dtype == torch.int64
    assert torch.equal(matrix, MATRIX)


def test_scores_of_the_hand_example() -> None:
    scores = segmentation_scores(MATRIX, NAMES)
    iou = [tp / (tp + fp + fn) for tp, fp, fn in zip(TP, FP, FN)]  # 3/5, 1/3, 3/5
    dice = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in zip(TP, FP, FN)]  # 3/4, 1/2, 3/4
    assert [scores[f"iou_{n}"] for n in NAMES] == pytest.approx([0.6, 1 / 3, 0.6])
    assert [scores[f"iou_{n}"] for n in NAMES] == pytest.approx(iou)
    assert scores["miou"] == pytest.approx(sum(iou) / 3)
    assert scores["dice"] == pytest.approx(sum(dice) / 3) == pytest.approx(2 / 3)
    assert scores["pixel_acc"] == pytest.approx(7 / 10)


def test_accumulating_batches_equals_one_big_batch() -> None:
    g = torch.Generator().manual_seed(0)
    targets = [torch.randint(0, 3, (2, 6, 7), generator=g) for _ in range(4)]
    predicted = [torch.randint(0, 3, (2, 6, 7), generator=g) for _ in range(4)]
    confusion = ConfusionMatrix(3)
    for p, t in zip(predicted, targets):
        confusion.update(p, t)
    assert torch.equal(confusion.matrix(), matrix_of(torch.cat(predicted), torch.cat(targets)))
    assert confusion.matrix().sum() == 4 * 2 * 6 * 7


def test_uint8_masks_are_counted_like_int64() -> None:
    assert torch.equal(matrix_of(PREDICTED.to(torch.uint8), TARGET.to(torch.uint8)), MATRIX)


@pytest.mark.parametrize("seed", range(5))
def test_pixel_accuracy_is_a_fraction(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (3, 8, 8), generator=g)
    predicted = torch.where(torch.rand(3, 8, 8, generator=g) < 0.5, target, torch.randint(0, 3, (3, 8, 8), generator=g))
    scores = segmentation_scores(matrix_of(predicted, target), NAMES)
    assert 0.0 <= scores["pixel_acc"] <= 1.0
    assert scores["pixel_acc"] == pytest.approx((predicted == target).float().mean().item())


def test_perfect_prediction_scores_one() -> None:
    scores = segmentation_scores(matrix_of(TARGET, TARGET), NAMES)
    assert scores["miou"] == scores["dice"] == scores["pixel_acc"] == 1.0


def test_class_absent_from_truth_and_prediction_is_nan_and_left_out_of_the_means() -> None:
    names = NAMES + ["unused"]
    scores = segmentation_scores(matrix_of(PREDICTED, TARGET, num_classes=4), names)
    assert math.isnan(scores["iou_unused"])
    assert scores["miou"] == pytest.approx((0.6 + 1 / 3 + 0.6) / 3)
    assert scores["dice"] == pytest.approx(2 / 3)


def test_class_predicted_but_never_true_scores_zero_not_nan() -> None:
    target = torch.tensor([0, 0, 1, 1])
    predicted = torch.tensor([0, 2, 1, 1])
    scores = segmentation_scores(matrix_of(predicted, target), NAMES)
    assert scores["iou_border"] == 0.0
    assert scores["miou"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_empty_matrix_gives_nan_scores() -> None:
    scores = segmentation_scores(torch.zeros(3, 3, dtype=torch.int64), NAMES)
    assert all(math.isnan(scores[k]) for k in ("miou", "dice", "pixel_acc"))
