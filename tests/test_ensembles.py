"""Vectorised deep ensembles against members trained one by one with torch.optim.SGD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from swag.errors import UserError
from swag.models.regression_net import RegressionNet
from swag.posteriors.ensembles import DeepEnsemble, initial_members, map_loss
from swag.posteriors.flat import FlatModel

NOISE_VAR, PRIOR_VAR, LR, STEPS = 5e-4, 100.0, 2e-6, 40


def data():
    x = torch.linspace(-3, 3, 24)
    inputs = torch.stack([x, x**2], 1)
    return inputs, torch.sin(x)[:, None]


def train_alone(seed: int, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The original notebook's loop for one member, written with torch.optim.SGD."""
    torch.manual_seed(seed)
    net = RegressionNet()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    for _ in range(STEPS):
        opt.zero_grad()
        prior = sum(p.pow(2).sum() for p in net.parameters()) / (2 * PRIOR_VAR) / len(inputs)
        loss = F.mse_loss(net(inputs), targets) / (2 * NOISE_VAR) + prior
        loss.backward()
        opt.step()
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach()


def test_vectorised_ensemble_equals_sequential_members():
    inputs, targets = data()
    seeds = [3, 11, 12]
    ensemble = DeepEnsemble(RegressionNet(), seeds, prior_var=PRIOR_VAR).fit(
        inputs, targets, noise_var=NOISE_VAR, num_steps=STEPS, lr=LR
    )
    expected = torch.stack([train_alone(s, inputs, targets) for s in seeds])
    # Batched and single matrix products round differently: float32 tolerance.
    torch.testing.assert_close(ensemble.members, expected, rtol=1e-4, atol=1e-5)
    starts = initial_members(RegressionNet(), seeds)
    assert (ensemble.members - starts).abs().max() > 1e-3  # training moved the members
    outputs = ensemble(inputs)
    assert outputs.shape == (3, 24, 1)


def test_initial_members_are_seeded_default_inits_and_keep_the_global_rng():
    model = RegressionNet()
    state = torch.random.get_rng_state()
    thetas = initial_members(model, [5, 6])
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(6)
    expected = torch.nn.utils.parameters_to_vector(RegressionNet().parameters())
    assert torch.equal(thetas[1], expected.detach())
    assert thetas.shape == (2, 261)


def test_map_loss_closed_form():
    net = torch.nn.Linear(2, 1)
    flat = FlatModel(net)
    inputs, targets = data()
    theta = flat.flatten()
    residuals = inputs @ theta[:2] + theta[2] - targets[:, 0]
    expected = residuals.pow(2).mean() / (2 * NOISE_VAR) + theta.pow(2).sum() / (2 * 3.0 * 24)
    loss = map_loss(flat, theta[None], inputs, targets, NOISE_VAR, prior_var=3.0)
    torch.testing.assert_close(loss, expected[None])


def test_bad_input_raises_user_error():
    with pytest.raises(UserError):
        initial_members(RegressionNet(), [])
    inputs, targets = data()
    with pytest.raises(UserError):
        DeepEnsemble(RegressionNet(), [0]).fit(
            inputs, targets, noise_var=NOISE_VAR, num_steps=5, lr=-1.0
        )
