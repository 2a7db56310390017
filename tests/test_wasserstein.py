"""swag.metrics.wasserstein2 and the 1-D study's W2 table against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.deep_ensembles.wasserstein import w2_curves
from swag.errors import UserError
from swag.metrics import wasserstein2


def test_wasserstein2_closed_forms():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 3, generator=generator), torch.randn(50, 3, generator=generator)
    # Equal sizes: W2² is the mean squared difference of the sorted samples.
    expected = (a.sort(0).values - b.sort(0).values).double().pow(2).mean(0).sqrt()
    torch.testing.assert_close(wasserstein2(a, b), expected)
    # Unequal sizes by hand: {0, 1} vs {0, 0.5, 1}: quantile gaps 0.5 on [1/3, 1/2) and
    # [1/2, 2/3), so W2² = 2 · (1/6) · 0.25.
    w2 = wasserstein2(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5], [1.0]]))
    assert w2.item() == pytest.approx((2 / 6 * 0.25) ** 0.5)
    # Large samples of N(0, 1) and N(1, 2²): W2² = 1² + (2 - 1)² = 2.
    x = torch.randn(20000, 1, generator=generator)
    y = 1 + 2 * torch.randn(30000, 1, generator=generator)
    assert wasserstein2(x, y).item() == pytest.approx(2**0.5, rel=0.03)


def test_w2_curves_rows_counts_and_the_held_out_floor():
    """Point masses: W2 between constants a and b is |a - b| whatever the number of draws."""
    hmc = torch.zeros(4, 3, 2)  # chains 0-1 are the reference, 2-3 the held-out row
    hmc[2:, -1] = torch.tensor([[1.0, 3.0], [1.0, 3.0]])  # last draws of the held-out chains
    methods = {"ensemble": torch.full((5, 2), 2.0), "vi": torch.full((2, 2), -1.0)}
    curves = w2_curves(hmc, methods, counts=[1, 2, 5])
    assert curves["ensemble"] == pytest.approx([2.0, 2.0, 2.0])
    assert curves["vi"][:2] == pytest.approx([1.0, 1.0]) and math.isnan(curves["vi"][2])
    assert curves["HMC (held-out chains)"][:2] == pytest.approx([2.0, 2.0])  # mean of 1 and 3
    with pytest.raises(UserError, match="at least 2 chains"):
        w2_curves(hmc[:1], methods, counts=[1])
    with pytest.raises(UserError, match="same inputs"):
        wasserstein2(torch.zeros(3, 2), torch.zeros(3, 1))
