"""The 1-D regression study's Wasserstein-2 table (`experiments/deep_ensembles/compare.py`).

How close are a deep ensemble's and a mean-field VI's predictive distributions to HMC's, input
by input, as a function of the number of draws k; the distance itself is the general
`swag.metrics.wasserstein2`.
"""

from __future__ import annotations

from torch import Tensor

from swag.errors import UserError
from swag.metrics import wasserstein2


def w2_curves(
    hmc_predictions: Tensor, methods: dict[str, Tensor], counts: list[int]
) -> dict[str, list[float]]:
    """Mean over grid inputs of W2(method's first k predictive draws, HMC) for each k.

    The HMC chains are split in two halves: the first half is the reference; the row
    "HMC (held-out chains)" uses the last draw of k chains of the second half, the distance an
    exact sampler of k independent draws would have (the Monte Carlo floor).

    Args:
        hmc_predictions: `[C, S, M]` HMC outputs at M grid inputs (C >= 2).
        methods: name -> `[K, M]` draws (ensemble members, VI samples), used in order.
        counts: the numbers of draws k to evaluate (larger than available: skipped, `nan`).

    Returns:
        name -> mean W2 per count (`nan` where a method has fewer than k draws).
    """
    half = hmc_predictions.shape[0] // 2
    if half < 1:
        raise UserError("pass HMC predictions of at least 2 chains")
    reference = hmc_predictions[:half].reshape(-1, hmc_predictions.shape[-1])
    rows = {"HMC (held-out chains)": hmc_predictions[half:, -1], **methods}
    return {
        name: [
            wasserstein2(draws[:k], reference).mean().item() if k <= len(draws) else float("nan")
            for k in counts
        ]
        for name, draws in rows.items()
    }
