"""Mean-field VI: closed-form KL, likelihood gradients, and the exact optimum on a linear model."""

from __future__ import annotations

import pytest
import torch
from conftest import LINEAR_NOISE_VAR, LINEAR_PRIOR_VAR, bayesian_linear_regression
from torch import nn
from torch.distributions import Normal, kl_divergence

from swag.errors import UserError
from swag.posteriors.vi import MeanFieldVI, gaussian_kl

NOISE_VAR, PRIOR_VAR = LINEAR_NOISE_VAR, LINEAR_PRIOR_VAR
linear_problem = bayesian_linear_regression


def test_kl_matches_torch_distributions():
    mean = torch.tensor([0.3, -1.2, 2.0])
    std = torch.tensor([0.1, 0.5, 1.7])
    expected = kl_divergence(Normal(mean, std), Normal(0.0, 0.1**0.5)).sum()
    torch.testing.assert_close(gaussian_kl(mean, std, 0.1), expected)


def test_likelihood_gradient_reaches_means_and_scales():
    inputs, targets, design, _, _ = linear_problem()
    vi = MeanFieldVI(nn.Linear(2, 1).double(), PRIOR_VAR, init_rho=-1.0)
    outputs = vi(inputs, 1, torch.Generator().manual_seed(3))
    loss = (outputs[0] - targets).pow(2).mean() / (2 * NOISE_VAR)  # likelihood term only
    loss.backward()
    noise = torch.randn(1, 3, generator=torch.Generator().manual_seed(3)).double()[0]
    theta = vi.mean.detach() + vi.std.detach() * noise
    # θ = μ + softplus(ρ)·ε: dL/dμ = dL/dθ and dL/dρ = dL/dθ · ε · sigmoid(ρ).
    grad_theta = -design.T @ (targets[:, 0] - design @ theta) / (30 * NOISE_VAR)
    torch.testing.assert_close(vi.mean.grad, grad_theta)
    torch.testing.assert_close(vi.rho.grad, grad_theta * noise * torch.sigmoid(vi.rho.detach()))
    assert vi.rho.grad.abs().min() > 0


def test_fit_on_linear_model_reaches_exact_mean_field_optimum():
    # For a Gaussian posterior N(m, Λ⁻¹), the mean-field optimum is N(m, diag(1/Λ_ii)).
    inputs, targets, _, precision, mean = linear_problem()
    vi = MeanFieldVI(nn.Linear(2, 1).double(), PRIOR_VAR, init_rho=-2.0)
    vi.fit(inputs, targets, noise_var=NOISE_VAR, num_steps=1500, lr=0.02, num_samples=16,
           optimizer="adam", generator=torch.Generator().manual_seed(0))  # fmt: skip
    posterior_std = torch.linalg.inv(precision).diagonal().sqrt()
    assert ((vi.mean.detach() - mean).abs() / posterior_std).max() < 0.15
    optimal_std = precision.diagonal().rsqrt()
    assert ((vi.std.detach() / optimal_std) - 1).abs().max() < 0.15


def test_bad_input_raises_user_error():
    with pytest.raises(UserError):
        MeanFieldVI(nn.Linear(2, 1), prior_var=0.0)
    vi = MeanFieldVI(nn.Linear(2, 1), prior_var=1.0)
    with pytest.raises(UserError):
        vi.fit(
            torch.zeros(3, 2),
            torch.zeros(3, 1),
            noise_var=1.0,
            num_steps=1,
            lr=0.1,
            optimizer="lbfgs",
        )
