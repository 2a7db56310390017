"""Hand-written log density and gradient of a ReLU MLP's parameters, batched over HMC chains.

For `Sequential(Linear, ReLU, ..., Linear)` networks `swag.posteriors.hmc` skips autograd: the
chains sit on the last axis, so every product is a broadcast (no tiny batched matrix products),
and a whole leapfrog step is one function that `torch.compile` fuses into a single CPU kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

# Without it inductor recomputes each layer's δ inside the next layer's reductions (2x slower).
_INDUCTOR_OPTIONS = {"realize_reads_threshold": 1}


def mlp_widths(model: nn.Module) -> tuple[int, ...] | None:
    """`(in, hidden..., out)` if `model` is `Sequential(Linear, ReLU, ..., ReLU, Linear)` with
    biases (the layout `mlp_log_prob_and_grad` differentiates by hand), else None."""
    if not isinstance(model, nn.Sequential) or len(model) % 2 == 0:
        return None
    linears, activations = list(model)[0::2], list(model)[1::2]
    if not all(type(m) is nn.Linear and m.bias is not None for m in linears):
        return None
    if not all(type(m) is nn.ReLU for m in activations):
        return None
    return (linears[0].in_features, *(m.out_features for m in linears))


def mlp_log_prob_and_grad(
    thetas_t: Tensor,
    inputs_t: Tensor,
    targets_t: Tensor,
    widths: tuple[int, ...],
    likelihood_scale: float | Tensor,
    prior_scale: float | Tensor,
) -> tuple[Tensor, Tensor]:
    """Gaussian log density of a ReLU MLP's parameters and its gradient, without autograd.

    `log p(θ) = -(λ/2)·Σ_n ||y_n - f_θ(x_n)||² - (κ/2)·||θ||²` with λ = 1/(σ²T), κ = 1/(s²T).
    Forward: `h_0 = x, z_l = W_l h_{l-1} + b_l, h_l = relu(z_l)`, `f = z_L`. Backward:
    `δ_L = -λ (f - y)`, `∂/∂W_l = Σ_n δ_l h_{l-1}ᵀ`, `∂/∂b_l = Σ_n δ_l`,
    `δ_{l-1} = (W_lᵀ δ_l) ⊙ 1[h_{l-1} > 0]`, plus the prior's `-κ θ`.
    The chains are the last axis, so every product is a broadcast vectorised over chains
    (no tiny batched matrix products).

    Args:
        thetas_t: `[D, C]` flat parameters in `FlatModel` order, one column per chain.
        inputs_t: `[in, N, 1]`; targets_t: `[out, N, 1]` (transposed data).
        widths: `(in, hidden..., out)`, see `mlp_widths`.
        likelihood_scale, prior_scale: λ and κ (κ = 0: flat prior).

    Returns:
        `(log_probs [C], grads [D, C])`.
    """
    num_chains = thetas_t.shape[1]
    weights, biases, offset = [], [], 0
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        weights.append(thetas_t[offset : offset + fan_out * fan_in].view(fan_out, fan_in, 1, -1))
        offset += fan_out * fan_in
        biases.append(thetas_t[offset : offset + fan_out].view(fan_out, 1, num_chains))
        offset += fan_out
    hidden, layer_inputs = inputs_t, []
    for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        layer_inputs.append(hidden)  # [in, N, C] (or [in, N, 1] for the data)
        hidden = (weight * hidden).sum(1) + bias  # [out, in, N, C] summed over in
        if layer < len(weights) - 1:
            hidden = hidden.clamp_min(0)
    residuals = hidden - targets_t  # [out, N, C]
    log_probs = -0.5 * (
        likelihood_scale * residuals.pow(2).sum((0, 1)) + prior_scale * thetas_t.pow(2).sum(0)
    )
    delta = -likelihood_scale * residuals
    grads = []
    for layer in reversed(range(len(weights))):
        hidden = layer_inputs[layer]
        grads.append(delta.sum(1))
        grads.append((delta[:, None] * hidden).sum(2).flatten(0, 1))
        if layer > 0:
            delta = (weights[layer] * delta[:, None]).sum(0) * (hidden > 0)
    return log_probs, torch.cat(grads[::-1]) - prior_scale * thetas_t


def mlp_leapfrog_step(
    thetas_t: Tensor,
    momenta_t: Tensor,
    inverse_mass_t: Tensor,
    inputs_t: Tensor,
    targets_t: Tensor,
    widths: tuple[int, ...],
    step_size: Tensor,
    likelihood_scale: Tensor,
    prior_scale: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`θ ← θ + ε M⁻¹ p;  p ← p + ε ∇log p(θ)` in chain-last layout (one fused kernel)."""
    thetas_t = thetas_t + step_size * inverse_mass_t * momenta_t
    log_probs, grads_t = mlp_log_prob_and_grad(
        thetas_t, inputs_t, targets_t, widths, likelihood_scale, prior_scale
    )
    return thetas_t, momenta_t + step_size * grads_t, log_probs, grads_t


def mlp_ascent_step(
    thetas_t: Tensor,
    inputs_t: Tensor,
    targets_t: Tensor,
    widths: tuple[int, ...],
    step_size: Tensor,
    likelihood_scale: Tensor,
    prior_scale: Tensor,
) -> Tensor:
    """`θ ← θ + η ∇log p(θ)` in chain-last layout."""
    grads_t = mlp_log_prob_and_grad(
        thetas_t, inputs_t, targets_t, widths, likelihood_scale, prior_scale
    )[1]
    return thetas_t + step_size * grads_t


@functools.cache
def compiled_step(fn: Callable) -> Callable:
    # One compiled function per step kind, shared by all posteriors: the data and the scalars
    # (0-d tensors, which dynamo does not specialise on) are arguments, so new data, step sizes
    # or priors reuse the compiled kernel instead of exhausting dynamo's recompilation limit.
    return torch.compile(fn, dynamic=False, options=_INDUCTOR_OPTIONS)
