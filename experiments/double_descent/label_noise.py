"""Seeded label corruption for the double-descent sweep (Nakkiran et al., 2020, §3).

With noise fraction η, exactly round(η·N) training positions, chosen uniformly without
replacement, get a label drawn uniformly from the C − 1 *other* classes, so the corrupted
fraction is exactly η (a draw from all C classes would keep the true label with probability
1/C and corrupt only η·(C − 1)/C). The rest keep their labels.
"""

from __future__ import annotations

import numpy as np

from swag.errors import UserError


def corrupt_labels(
    labels: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Return a copy of `labels [N]` with round(fraction·N) positions moved to another class.

    Args:
        labels: int class indices in [0, num_classes).
        fraction: η in [0, 1].
        num_classes: C ≥ 2.
        rng: the only source of randomness (positions first, then the new classes).

    Returns:
        noisy labels [N] int64; noisy != labels exactly at the chosen positions.
    """
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"the label-noise fraction must lie in [0, 1], got {fraction:g}")
    if num_classes < 2:
        raise UserError("label noise needs at least two classes; pass a dataset with more")
    labels = np.asarray(labels, dtype=np.int64)
    count = int(round(fraction * labels.shape[0]))
    positions = rng.permutation(labels.shape[0])[:count]
    # An offset in 1..C-1 added modulo C is a uniform draw over the other C - 1 classes.
    offsets = rng.integers(1, num_classes, size=count)
    noisy = labels.copy()
    noisy[positions] = (labels[positions] + offsets) % num_classes
    return noisy
