"""1-D Wasserstein-2 distances between empirical predictive distributions.

Used by the 1-D regression comparison (`experiments/deep_ensembles/compare.py`): how close are a
deep ensemble's and a mean-field VI's predictive distributions to HMC's, input by input, as a
function of the number of draws k.
"""

from __future__ import annotations

import torch
from torch import Tensor

from swag.errors import UserError


def wasserstein2(samples_a: Tensor, samples_b: Tensor) -> Tensor:
    """Exact 1-D Wasserstein-2 distance between two empirical distributions, per column.

    `W2² = ∫_0^1 (F_a⁻¹(u) - F_b⁻¹(u))² du`; both quantile functions are step functions, so
    the integral is a finite sum over the merged breakpoints `{i/S_a} ∪ {j/S_b}`.

    Args:
        samples_a: `[S_a, M]` draws at M inputs; samples_b: `[S_b, M]` draws.

    Returns:
        `[M]` float64 distances (same units as the samples).
    """
    if samples_a.dim() != 2 or samples_b.dim() != 2 or samples_a.shape[1] != samples_b.shape[1]:
        raise UserError("pass two sample sets shaped [draws, inputs] with the same inputs")
    a = samples_a.double().sort(0).values
    b = samples_b.double().sort(0).values
    size_a, size_b = a.shape[0], b.shape[0]
    levels = (
        torch.cat([torch.arange(1, size_a + 1) / size_a, torch.arange(1, size_b + 1) / size_b])
        .double()
        .unique()
    )
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    middles = levels - widths / 2
    index_a = (middles * size_a).long().clamp_max(size_a - 1).to(a.device)
    index_b = (middles * size_b).long().clamp_max(size_b - 1).to(b.device)
    squared = (a[index_a] - b[index_b]).pow(2) * widths.to(a.device)[:, None]
    return squared.sum(0).sqrt()


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
