"""Blocked dense kernels for triangular matrices, built from matrix products.

LAPACK's inverse from a Cholesky factor (`potri`, behind `torch.cholesky_inverse`) and
triangular solves with many right-hand sides run at a fraction of the matrix-product rate on
CPUs; these kernels do the same arithmetic as large matrix products that skip the zero blocks.
For an n×n problem split into blocks of b columns (flop counts for b ≪ n):

    lower_inverse_:  C ← C⁻¹ for lower-triangular C, by the recursion
                     [[C₁₁, 0], [C₂₁, C₂₂]]⁻¹ = [[C₁₁⁻¹, 0], [−C₂₂⁻¹ C₂₁ C₁₁⁻¹, C₂₂⁻¹]]   (n³/3)
    gram_:           VᵀV for lower-triangular V, lower blocks then mirrored        (n³/3)
    lower_product:   X L for lower-triangular L, skipping L's zero rows            (n³ for full X)

Every result equals the dense formula up to floating-point rounding.
"""

from __future__ import annotations

import torch

BLOCK = 512  # columns per block: large enough for matrix-product speed, small enough to skip


def lower_product(
    x: torch.Tensor, low: torch.Tensor, block: int = BLOCK, out: torch.Tensor | None = None
) -> torch.Tensor:
    """X L [m, n] for x [m, k] and lower-triangular low [k, n], column block by column block.

    Only the lower triangle of `low` is read except within its diagonal blocks, which must
    hold zeros above the diagonal.
    """
    out = (
        torch.empty(x.shape[0], low.shape[1], dtype=x.dtype, device=x.device)
        if out is None
        else out
    )
    for start in range(0, low.shape[1], block):
        stop = min(start + block, low.shape[1])
        torch.matmul(x[:, start:], low[start:, start:stop], out=out[:, start:stop])
    return out


def lower_times(low: torch.Tensor, x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """L X [n, m] for lower-triangular low [n, n] (zeros above the diagonal) and x [n, m]."""
    out = torch.empty(low.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    for start in range(0, low.shape[0], block):
        stop = min(start + block, low.shape[0])
        torch.matmul(low[start:stop, :stop], x[:stop], out=out[start:stop])
    return out


def lower_inverse_(factor: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Overwrite lower-triangular `factor` [n, n] (zeros above the diagonal) with its inverse.

    Returns:
        `factor`, now C⁻¹ (lower-triangular).
    """
    n = factor.shape[0]
    if n <= block:
        eye = torch.eye(n, dtype=factor.dtype, device=factor.device)
        return factor.copy_(torch.linalg.solve_triangular(factor, eye, upper=False))
    half = -(-n // (2 * block)) * block  # a whole number of blocks, at least half of n
    head, tail = factor[:half, :half], factor[half:, half:]
    lower_inverse_(head, block)
    lower_inverse_(tail, block)
    mixed = lower_product(factor[half:, :half], head, block)  # C₂₁ C₁₁⁻¹
    factor[half:, :half] = lower_times(tail, mixed, block).neg_()
    return factor


def gram_(inverse: torch.Tensor, out: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """out ← VᵀV [n, n] (symmetric) for lower-triangular V = `inverse` [n, n].

    With V = C⁻¹ for the Cholesky factor C of P, this is P⁻¹ = C⁻ᵀ C⁻¹.
    """
    n = inverse.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        torch.matmul(
            inverse[start:, start:stop].T, inverse[start:, :stop], out=out[start:stop, :stop]
        )
    for start in range(block, n, block):
        stop = min(start + block, n)
        out[:start, start:stop] = out[start:stop, :start].T
    return out


def frobenius_dot(x: torch.Tensor, y: torch.Tensor, block: int = BLOCK) -> float:
    """Σ_ij x_ij y_ij in float64, by row blocks (no n×n temporary)."""
    total = 0.0
    for start in range(0, x.shape[0], block):
        rows = slice(start, start + block)
        total += float((x[rows] * y[rows]).sum(dtype=torch.float64))
    return total


def lower_copy_(source: torch.Tensor, out: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """out ← tril(source) [n, n], converting dtype, writing only blocks that meet the lower
    triangle (the rest of `out` must already hold zeros).

    Returns:
        Σ_{j ≤ i} source_ij² [n] in source's dtype (squared row norms of the lower triangle).
    """
    norms = []
    for start in range(0, source.shape[0], block):
        rows, stop = slice(start, start + block), start + block
        out[rows, :start] = source[rows, :start]
        diagonal = source[rows, start:stop].tril()
        out[rows, start:stop] = diagonal
        left = torch.linalg.vector_norm(source[rows, :start], dim=1).square()
        norms.append(left + diagonal.square().sum(1))
    return torch.cat(norms)
