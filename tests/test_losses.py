"""BCE, soft Dice and Lovász-softmax against straightforward calculations written out in numpy and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from s18exp.losses import LovaszCELoss, LovaszSoftmaxLoss, OneHotBCEWithLogitsLoss, SoftDiceLoss, cross_entropy, one_hot


def random_case(n: int = 2, c: int = 3, h: int = 4, w: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g) * 3, torch.randint(0, c, (n, h, w), generator=g)


def bce_by_hand(logits: np.ndarray, target: np.ndarray) -> float:
    """Mean over every (n, c, h, w) of -[y log s(x) + (1 - y) log(1 - s(x))], y the one-hot of the target."""
    n, c, h, w = logits.shape
    total = 0.0
    for i in range(n):
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    p = 1 / (1 + math.exp(-float(logits[i, k, y, x])))
                    t = 1.0 if target[i, y, x] == k else 0.0
                    total -= t * math.log(p) + (1 - t) * math.log(1 - p)
    return total / (n * c * h * w)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def dice_by_hand(probs: np.ndarray, target: np.ndarray, smooth: float) -> float:
    """1 - mean over classes of (2 sum(p * t) + s) / (sum(p) + sum(t) + s), sums over batch and pixels."""
    scores = []
    for k in range(probs.shape[1]):
        truth = (target == k).astype(np.float64)
        p = probs[:, k].astype(np.float64)
        scores.append((2 * (p * truth).sum() + smooth) / (p.sum() + truth.sum() + smooth))
    return 1 - float(np.mean(scores))


def test_one_hot_layout() -> None:
    target = torch.tensor([[[0, 2], [1, 0]]])
    encoded = one_hot(target, 3)
    assert encoded.shape == (1, 3, 2, 2) and encoded.dtype == torch.float32
    for k in range(3):
        assert torch.equal(encoded[0, k], (target[0] == k).float())


@pytest.mark.parametrize("seed", [0, 1])
def test_bce_matches_the_formula(seed: int) -> None:
    logits, target = random_case(seed=seed)
    expected = bce_by_hand(logits.numpy(), target.numpy())
    assert OneHotBCEWithLogitsLoss()(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_bce_of_confident_correct_logits_is_near_zero() -> None:
    _, target = random_case()
    logits = (one_hot(target, 3) * 2 - 1) * 30  # +30 on the true class, -30 elsewhere
    assert OneHotBCEWithLogitsLoss()(logits, target).item() < 1e-10


def test_bce_accepts_half_precision_logits() -> None:
    logits, target = random_case()
    loss = OneHotBCEWithLogitsLoss()(logits.bfloat16(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(bce_by_hand(logits.bfloat16().float().numpy(), target.numpy()), rel=1e-5)


def test_dice_of_a_perfect_prediction_is_near_zero() -> None:
    _, target = random_case()
    logits = one_hot(target, 3) * 50
    assert SoftDiceLoss(smooth=1.0)(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_of_an_all_wrong_prediction_is_one_minus_the_smoothing_term() -> None:
    _, target = random_case(n=2, c=3, h=8, w=8)
    wrong = (target + 1) % 3
    logits = one_hot(wrong, 3) * 50
    loss = SoftDiceLoss(smooth=1.0)(logits, target).item()
    # No overlap: each class scores smooth / (predicted + true pixels + smooth).
    per_class = [1 / ((wrong == k).sum().item() + (target == k).sum().item() + 1) for k in range(3)]
    assert loss == pytest.approx(1 - np.mean(per_class), abs=1e-6)
    assert loss > 0.95


def test_dice_hand_computed_tiny_case() -> None:
    # One image, two classes, two pixels. Pixel 1 logits (0, ln 3): softmax (1/4, 3/4), true class 1.
    # Pixel 2 logits (0, 0): softmax (1/2, 1/2), true class 0. Smooth 1.
    # Class 0: intersection 1/2, sum p 3/4, sum t 1 -> (2 * 1/2 + 1) / (3/4 + 1 + 1) = 8/11.
    # Class 1: intersection 3/4, sum p 5/4, sum t 1 -> (2 * 3/4 + 1) / (5/4 + 1 + 1) = 10/13.
    # Loss = 1 - (8/11 + 10/13) / 2 = 36/143.
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3), 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    assert SoftDiceLoss(smooth=1.0)(logits, target).item() == pytest.approx(36 / 143, rel=1e-6)


def test_dice_applies_softmax_to_the_logits() -> None:
    logits, target = random_case(seed=3)
    loss = SoftDiceLoss(smooth=1.0)(logits, target).item()
    assert loss == pytest.approx(dice_by_hand(softmax(logits.numpy()), target.numpy(), 1.0), rel=1e-5)
    assert loss != pytest.approx(dice_by_hand(logits.numpy(), target.numpy(), 1.0), rel=1e-2)


def test_dice_smoothing_parameter_is_used() -> None:
    logits, target = random_case(seed=4)
    probs = softmax(logits.numpy())
    for smooth in (0.0, 1.0, 10.0):
        expected = dice_by_hand(probs, target.numpy(), smooth)
        assert SoftDiceLoss(smooth=smooth)(logits, target).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "criterion", [OneHotBCEWithLogitsLoss(), SoftDiceLoss(smooth=1.0), LovaszSoftmaxLoss(), LovaszCELoss()],
    ids=["bce", "dice", "lovasz", "lovasz_ce"],
)
def test_gradients_flow_and_a_step_lowers_the_loss(criterion: torch.nn.Module) -> None:
    logits, target = random_case(seed=5)
    logits.requires_grad_(True)
    loss = criterion(logits, target)
    loss.backward()
    grad = logits.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        assert criterion(logits - 0.5 * grad / grad.norm(), target) < loss


def jaccard_loss_of_errors(truth: np.ndarray, wrong: set[int]) -> float:
    """1 - IoU of one class when exactly the pixels in `wrong` are mispredicted (misses and false alarms)."""
    positives = {i for i, t in enumerate(truth) if t}
    predicted = (positives - wrong) | (wrong - positives)
    return 1 - len(positives & predicted) / len(positives | predicted)


def lovasz_by_hand(probs: np.ndarray, target: np.ndarray) -> float:
    """The Lovász extension of each present class's Jaccard loss at its pixel errors, from its definition:
    errors sorted down, each weighted by the loss's rise when its pixel joins the set of mispredicted pixels;
    mean over the classes present in the target."""
    flat_target = target.reshape(-1)
    per_class = []
    for k in range(probs.shape[1]):
        truth = flat_target == k
        if not truth.any():
            continue
        errors = np.abs(truth - np.moveaxis(probs, 1, -1)[..., k].reshape(-1))
        order = sorted(range(len(errors)), key=lambda i: -errors[i])
        total, wrong, before = 0.0, set(), 0.0
        for i in order:
            wrong.add(i)
            after = jaccard_loss_of_errors(truth, wrong)
            total += errors[i] * (after - before)
            before = after
        per_class.append(total)
    return float(np.mean(per_class))


def test_lovasz_of_hard_predictions_is_one_minus_the_mean_iou_of_present_classes() -> None:
    g = torch.Generator().manual_seed(3)
    predicted, target = torch.randint(0, 3, (2, 6, 7), generator=g), torch.randint(0, 3, (2, 6, 7), generator=g)
    logits = one_hot(predicted, 3) * 100.0
    ious = [((predicted == k) & (target == k)).sum().item() / ((predicted == k) | (target == k)).sum().item() for k in range(3)]
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(1 - np.mean(ious), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_lovasz_matches_the_extension_computed_from_its_definition(seed: int) -> None:
    logits, target = random_case(n=2, c=3, h=3, w=4, seed=seed)
    expected = lovasz_by_hand(softmax(logits.numpy()), target.numpy())
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_lovasz_skips_classes_absent_from_the_masks() -> None:
    logits, _ = random_case(seed=4)
    target = torch.zeros(2, 4, 5, dtype=torch.long)
    target[:, :2] = 2  # class 1 is absent
    probs = softmax(logits.numpy())
    expected = lovasz_by_hand(probs, target.numpy())
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(expected, rel=1e-5)
    # counted, the absent class would add its largest probability (every pixel of it a false alarm) to the mean
    counting_absent = (2 * expected + probs[:, 1].max()) / 3
    assert abs(LovaszSoftmaxLoss()(logits, target).item() - counting_absent) > 1e-3


def test_lovasz_ce_is_the_weighted_sum_of_its_terms() -> None:
    logits, target = random_case(seed=6)
    lovasz = LovaszSoftmaxLoss()(logits, target).item()
    ce = -np.mean(np.log(np.take_along_axis(softmax(logits.numpy()), target.numpy()[:, None], axis=1)))
    assert LovaszCELoss(lovasz_weight=0.5, ce_weight=2.0)(logits, target).item() == pytest.approx(0.5 * lovasz + 2.0 * ce, rel=1e-5)


def test_cross_entropy_is_torchs_mean_over_pixels_and_items() -> None:
    """The one cross-entropy every loss and classifier of the project uses: on a CPU exactly torch's fused mean;
    its per-element path (taken on a GPU under trainer.deterministic=true) is the same mean, by hand."""
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 5, 4), torch.randint(0, 3, (2, 5, 4))
    assert torch.equal(cross_entropy(logits, target), F.cross_entropy(logits, target))
    by_hand = -(F.log_softmax(logits, 1).gather(1, target[:, None])).mean()
    assert torch.allclose(cross_entropy(logits, target), by_hand, atol=1e-6)
    items, labels = torch.randn(7, 4), torch.randint(0, 4, (7,))
    assert torch.equal(cross_entropy(items.bfloat16(), labels), F.cross_entropy(items.bfloat16().float(), labels))
