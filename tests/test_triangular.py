"""swag.triangular: blocked triangular kernels against torch's dense linear algebra, with blocks
small enough that every recursion level and a ragged last block are exercised."""

from __future__ import annotations

import pytest
import torch

from swag import triangular


def lower_factor(n: int, seed: int = 0) -> torch.Tensor:
    """The Cholesky factor [n, n] of a well-conditioned SPD matrix, in float64."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n + 10, generator=generator, dtype=torch.float64)
    return torch.linalg.cholesky(x @ x.T / n + 0.1 * torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("n", [50, 130, 333])
def test_lower_inverse_matches_dense_inverse(n):
    factor = lower_factor(n)
    expected = torch.linalg.inv(factor)
    inverse = triangular.lower_inverse_(factor.clone(), block=32)
    torch.testing.assert_close(inverse, expected)
    assert inverse.triu(1).abs().max() == 0


def test_gram_is_the_inverse_of_the_factored_matrix():
    """VᵀV with V = C⁻¹ is P⁻¹ = (CCᵀ)⁻¹, as `torch.cholesky_inverse`."""
    factor = lower_factor(333)
    inverse = triangular.lower_inverse_(factor.clone(), block=32)
    gram = triangular.gram_(inverse, torch.empty_like(inverse), block=32)
    torch.testing.assert_close(gram, torch.cholesky_inverse(factor))
    torch.testing.assert_close(gram, gram.T, rtol=0, atol=0)


def test_lower_product_uses_only_the_lower_triangle():
    generator = torch.Generator().manual_seed(0)
    full = torch.randn(200, 333, generator=generator, dtype=torch.float64)
    lower = torch.randn(333, 333, generator=generator, dtype=torch.float64).tril()
    expected = full @ lower
    lower += torch.randn(333, 333, generator=generator, dtype=torch.float64).triu(64)
    torch.testing.assert_close(triangular.lower_product(full, lower, block=32), expected)


def test_lower_copy_and_row_norms():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(333, 333, generator=generator, dtype=torch.float64)
    out = torch.zeros(333, 333, dtype=torch.float32)
    norms = triangular.lower_copy_(source, out, block=32)
    torch.testing.assert_close(out, source.tril().float(), rtol=0, atol=0)
    torch.testing.assert_close(norms, source.tril().square().sum(1))


def test_frobenius_dot():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 333, 200, generator=generator, dtype=torch.float64)
    assert triangular.frobenius_dot(x, y, block=32) == pytest.approx(float((x * y).sum()))
