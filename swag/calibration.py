"""Calibration temperature scaling (Guo et al., 2017), fitted on held-out data.

Not to be confused with *posterior tempering* (Wilson & Izmailov 2020, section 8): that
changes the posterior that samples are drawn from (the SWAG `scale` on the covariance, or a
likelihood temperature p(D|w)^(1/T) in SGLD/HMC). Calibration temperature scaling leaves the
posterior alone and rescales the *predictive* after the fact:

    p_T(y | x) = softmax(z(x) / T)_y,

with `z` the logits of one network, or `z = log p_bma(y | x)` (the log of the averaged
probabilities) for a Bayesian model average, so that `p_T ∝ p_bma^(1/T)`. The scalar
`T > 0` minimises the validation NLL `-(1/N) Σ_i log p_T(y_i | x_i)`.

The NLL is convex in the inverse temperature `β = 1/T`: with `f(β) = mean_i [logsumexp(β z_i)
- β z_{i, y_i}]`, `f'(β) = mean_i [E_{softmax(β z_i)}[z_i] - z_{i, y_i}]` is nondecreasing
(`f''(β)` is a mean of variances), so `T` is found by bisection on the sign of `f'`, with no
learning rate or iteration budget to tune.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from swag.errors import UserError

TEMPERATURE_RANGE = (1e-2, 1e2)  # search interval for T; the fit clips to it
_TINY = 1e-12  # floor on probabilities before the log (a BMA can output exact zeros)


def _tensor(array, dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array).to(dtype)


def probs_to_logits(probs) -> torch.Tensor:
    """Return `log(max(probs, 1e-12))`, float64 `[N, C]`: the logits of a model average."""
    return _tensor(probs, torch.float64).clamp_min(_TINY).log()


def scale_logits(logits, temperature: float) -> torch.Tensor:
    """Return `softmax(logits / T)`, float64 `[N, C]`."""
    if not temperature > 0:
        raise UserError(f"the calibration temperature must be positive, got {temperature}")
    return torch.softmax(_tensor(logits, torch.float64) / temperature, dim=-1)


def fit_temperature(logits, targets, tol: float = 1e-8) -> float:
    """Fit the calibration temperature `T` that minimises the mean NLL of `softmax(z / T)`.

    Args:
        logits: `z [N, C]` (for a model average, `probs_to_logits(probs)`).
        targets: `[N]` class indices.
        tol: stop when the bracket on `log T` is narrower than this.

    Returns:
        `T` in `TEMPERATURE_RANGE` (an end of the range when the optimum lies beyond it, e.g.
        `T -> 0` for a validation set that the model separates perfectly).
    """
    z = _tensor(logits, torch.float64)
    y = _tensor(targets, torch.long)
    if z.ndim != 2 or y.shape != z.shape[:1] or len(y) == 0:
        raise UserError(
            f"temperature scaling needs logits [N, C] and targets [N], got "
            f"{tuple(z.shape)} and {tuple(y.shape)}"
        )
    z_true = z.gather(1, y[:, None]).squeeze(1)

    def slope(log_beta: float) -> float:  # f'(β); its sign says on which side the optimum lies
        p = torch.softmax(math.exp(log_beta) * z, dim=-1)
        return float(((p * z).sum(-1) - z_true).mean())

    lo, hi = -math.log(TEMPERATURE_RANGE[1]), -math.log(TEMPERATURE_RANGE[0])  # bounds on log β
    if slope(lo) >= 0:
        return TEMPERATURE_RANGE[1]
    if slope(hi) <= 0:
        return TEMPERATURE_RANGE[0]
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if slope(mid) < 0:
            lo = mid
        else:
            hi = mid
    return math.exp(-0.5 * (lo + hi))
