"""Label noise for the "rethinking generalisation" experiments (Zhang et al. 2017; Wilson &
Izmailov 2020, §6) and for label-noise studies such as double descent.

Three pure functions of (labels, numpy Generator):

- `corrupt_labels(labels, count, num_classes, rng)`: `count` positions drawn uniformly without
  replacement, each given a label drawn uniformly from all `num_classes` classes (so about
  1/C of them keep their true label). Two files made independently with counts N_a and N_b of
  n labels differ at a fraction

      (1 − 1/C) · (1 − (1 − f_a)(1 − f_b)),   f = N / n,

  in expectation (`expected_disagreement`), and a file differs from the truth at (1 − 1/C)·f.
  This is the construction the original CIFAR-10 label-corruption arrays (5k ... 50k of 50k)
  match: their class counts are not exact and their pairwise disagreements follow this formula.
- `flip_binary_labels(labels, fraction, rng)`: exactly int(n·fraction) positions get y ← 1 − y
  (the binary GP experiment). Above 0.5 the labels become anti-correlated with the truth.
- `permute_labels(labels, rng)`: a random permutation (class counts kept exactly), the "random
  labels" of the one-vs-all GP experiment.
"""

from __future__ import annotations

import numpy as np

from swag.errors import UserError


def corrupt_labels(
    labels: np.ndarray, count: int, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Relabel `count` uniformly chosen positions with uniform random classes.

    Args:
        labels: [n] integer class labels in 0..num_classes-1 (not modified).
        count: number of positions to relabel, 0 <= count <= n.
        num_classes: C; new labels are uniform on 0..C-1 (may equal the old label).
        rng: the only source of randomness.

    Returns:
        [n] int64 labels.
    """
    labels = np.asarray(labels)
    if not 0 <= count <= labels.shape[0]:
        raise UserError(
            f"cannot corrupt {count} labels of a training set of {labels.shape[0]}; pass counts "
            f"between 0 and {labels.shape[0]}"
        )
    corrupted = labels.astype(np.int64, copy=True)
    positions = rng.choice(labels.shape[0], size=count, replace=False)
    corrupted[positions] = rng.integers(0, num_classes, size=count)
    return corrupted


def expected_disagreement(fraction_a: float, fraction_b: float, num_classes: int) -> float:
    """Expected fraction of positions where two independent `corrupt_labels` outputs differ.

    A position differs only if at least one file relabelled it (probability
    1 − (1 − f_a)(1 − f_b)) and the new label(s) then differ (probability 1 − 1/C).
    """
    return (1.0 - 1.0 / num_classes) * (1.0 - (1.0 - fraction_a) * (1.0 - fraction_b))


def flip_binary_labels(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Flip y ← 1 − y at exactly int(n · fraction) uniformly chosen positions.

    Args:
        labels: [n] labels in {0, 1}.
        fraction: in [0, 1]; 0.5 makes labels independent of the inputs, above 0.5
            anti-correlated (1.0 is the perfectly learnable swapped task).

    Returns:
        [n] int64 labels.
    """
    labels = np.asarray(labels).astype(np.int64)
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"label-flip fraction {fraction} is outside [0, 1]; pass 0 to 0.5")
    count = int(labels.shape[0] * fraction)
    flipped = labels.copy()
    positions = rng.permutation(labels.shape[0])[:count]
    flipped[positions] = 1 - flipped[positions]
    return flipped


def permute_labels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of `labels` [n] (class counts unchanged), int64."""
    return rng.permutation(np.asarray(labels).astype(np.int64))
