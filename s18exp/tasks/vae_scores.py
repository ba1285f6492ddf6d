"""The VAE's wrong-label scores, from the readings of the judge and of the panel's readers.

Each test item is fed with a wrong label (read as the given label: it FOLLOWS; as its true label: it KEEPS
the input) and with its true label (its reconstruction READ right); z ~ N(0, I) with label k, as many samples
as test items, gives the SAMPLE follow ceiling. Per reader, each score is a share of the test items; the
panel's headline is its minimum over the readers (the strictest reader's reading), beside their mean; the
judge's own readings stay apart under `judge/`.

`item_outcomes` makes the arrays of test_items.npz (s18exp/test_items.py); `scores_from_items` computes the
summary's scores from exactly those arrays, so that the two agree to the last bit.
"""

from __future__ import annotations

import numpy as np
import torch

JUDGE = "judge"  # the judge's column, first in test_items.npz
MEASURES = ("label_follow", "input_keep", "recon_read", "sample_follow")
ITEM_ARRAYS = {"label_follow": "follow", "input_keep": "keep", "recon_read": "recon_right"}


def item_outcomes(
    wrong: dict[str, torch.Tensor], recon: dict[str, torch.Tensor], true: torch.Tensor, given: torch.Tensor, elbo: np.ndarray,
) -> dict[str, np.ndarray]:
    """The per-item arrays: `readers` (R,) the column names, the judge first; `follow`, `keep`, `recon_right`
    (N, R) bool; `elbo` (N,) float64, each item's negative ELBO; `true_labels`, `given_labels` (N,) int64.
    `wrong` and `recon` hold each reader's class indices for the wrong-label outputs and the reconstructions."""
    readers = list(wrong)
    if readers[0] != JUDGE or list(recon) != readers:
        raise ValueError(f"readings must come from the same readers, the judge first; got {readers} and {list(recon)}")
    true, given = true.long(), given.long()

    def columns(readings: dict[str, torch.Tensor], labels: torch.Tensor) -> np.ndarray:
        return np.stack([(readings[name].long() == labels).numpy() for name in readers], axis=1)

    return {
        "readers": np.array(readers),
        "follow": columns(wrong, given),
        "keep": columns(wrong, true),
        "recon_right": columns(recon, true),
        "elbo": np.asarray(elbo, dtype=np.float64),
        "true_labels": true.numpy().astype(np.int64),
        "given_labels": given.numpy().astype(np.int64),
    }


def scores_from_items(items: dict[str, np.ndarray], sample_hits: dict[str, np.ndarray]) -> dict[str, float]:
    """The summary's wrong-label scores. For each measure (label_follow, input_keep, recon_read,
    sample_follow): `test/<measure>_acc`, the panel's minimum over its readers; `test/<measure>_mean`, their
    mean; `test/<measure>/<reader>`, each reader's; `judge/<measure>_acc`, the judge's. Also
    `test/label_follow_spread`, the most lenient reader's label follow minus the strictest's. `sample_hits`
    holds, per reader, whether each sample was read as its label."""
    readers = [str(name) for name in items["readers"]]
    by_measure = {
        measure: {name: float(items[array][:, i].mean()) for i, name in enumerate(readers)}
        for measure, array in ITEM_ARRAYS.items()
    }
    by_measure["sample_follow"] = {name: float(np.mean(sample_hits[name])) for name in readers}
    panel = [name for name in readers if name != JUDGE]
    scores: dict[str, float] = {}
    for measure in MEASURES:
        values = [by_measure[measure][name] for name in panel]
        scores[f"test/{measure}_acc"] = min(values)
        scores[f"test/{measure}_mean"] = float(np.mean(values))
        if measure == "label_follow":
            scores["test/label_follow_spread"] = max(values) - min(values)
        scores.update({f"test/{measure}/{name}": by_measure[measure][name] for name in panel})
    scores.update({f"judge/{measure}_acc": by_measure[measure][JUDGE] for measure in MEASURES})
    return scores
