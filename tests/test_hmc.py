"""HMC against closed forms: Bayesian linear regression, Gaussian targets, split-R̂."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import LINEAR_NOISE_VAR, LINEAR_PRIOR_VAR, bayesian_linear_regression
from torch import nn

from experiments.deep_ensembles import regression1d
from swag.errors import UserError
from swag.posteriors.ensembles import train_members
from swag.posteriors.flat import FlatModel
from swag.posteriors.hmc import gaussian_log_posterior, hmc, split_rhat
from swag.posteriors.mlp_gradient import mlp_log_prob_and_grad, mlp_widths

NOISE_VAR, PRIOR_VAR = LINEAR_NOISE_VAR, LINEAR_PRIOR_VAR


def linear_problem(sequential: bool = False):
    """`nn.Linear(2, 1)` on features [x, x²]: flat θ = (w_x, w_x², b), a Gaussian posterior.

    `sequential=True` wraps it as `nn.Sequential(nn.Linear(2, 1))`, a Linear/ReLU stack with no
    hidden layer, which takes the hand-written gradient instead of autograd."""
    inputs, targets, _, precision, mean = bayesian_linear_regression()
    cov = torch.linalg.inv(precision)
    model = nn.Linear(2, 1).double()
    if sequential:
        model = nn.Sequential(model)
    return FlatModel(model), inputs, targets, mean, cov


def sample_linear(
    temperature: float, num_chains: int = 40, num_samples: int = 250, sequential: bool = False
):
    flat, inputs, targets, mean, cov = linear_problem(sequential)
    log_prob = gaussian_log_posterior(flat, inputs, targets, NOISE_VAR, PRIOR_VAR, temperature)
    assert (log_prob.widths is not None) == sequential
    # Step 0.4 × the smallest posterior std; trajectory length ≈ 1.6 × the smallest std.
    step = 0.4 * (temperature * torch.linalg.eigvalsh(cov)[0]).sqrt().item()
    start = torch.zeros(num_chains, 3, dtype=torch.float64)
    result = hmc(log_prob, start, step, 4, num_samples, burn=50, thin=2,
                 generator=torch.Generator().manual_seed(1))  # fmt: skip
    return result, mean, cov


def check_moments(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> None:
    draws = samples.reshape(-1, 3)
    std = cov.diagonal().sqrt()
    # 10,000 draws with autocorrelation: Monte Carlo error of the mean ≈ 0.02 std.
    assert ((draws.mean(0) - mean).abs() / std).max() < 0.1
    sample_cov = torch.cov(draws.T)
    assert ((sample_cov.diagonal().sqrt() / std) - 1).abs().max() < 0.1
    corr = cov / torch.outer(std, std)
    sample_corr = sample_cov / torch.outer(sample_cov.diagonal(), sample_cov.diagonal()).sqrt()
    assert (sample_corr - corr).abs().max() < 0.1


@pytest.mark.parametrize("sequential", [False, True], ids=["autograd", "hand-written"])
def test_linear_regression_matches_closed_form_posterior(sequential):
    result, mean, cov = sample_linear(temperature=1.0, sequential=sequential)
    assert result.samples.shape == (40, 250, 3)
    assert result.acceptance.min() > 0.6
    check_moments(result.samples, mean, cov)


def test_temperature_scales_posterior_covariance():
    # p(θ|D)^(1/T) of a Gaussian posterior is N(mean, T·cov).
    result, mean, cov = sample_linear(temperature=4.0)
    check_moments(result.samples, mean, 4.0 * cov)


def gaussian_target(stds: torch.Tensor):
    return lambda thetas: -0.5 * (thetas / stds).pow(2).sum(1)


def test_acceptance_and_rhat_on_gaussian_target():
    stds = torch.tensor([1.0, 0.8, 1.3, 0.6], dtype=torch.float64)
    start = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)).double() * stds
    # Leapfrog is stable for ε < 2·min(std) = 1.2: ε = 0.1 accepts most, ε = 1.3 diverges.
    # Trajectory length 2 is between 1.5 and 3.4 rad for every coordinate (no resonance).
    good = hmc(gaussian_target(stds), start, 0.1, 20, 1000, burn=100,
               generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert good.acceptance.min() > 0.9
    assert split_rhat(good.samples).max() < 1.01
    bad = hmc(gaussian_target(stds), start, 1.3, 20, 50, generator=torch.Generator().manual_seed(1))
    assert bad.acceptance.max() < 0.1


def test_rhat_flags_unmixed_chains():
    # Chains started at ±20 std with a tiny trajectory have not forgotten their starts.
    stds = torch.ones(2, dtype=torch.float64)
    start = torch.tensor([[20.0, 0.0], [-20.0, 0.0], [20.0, 5.0], [-20.0, 5.0]]).double()
    stuck = hmc(
        gaussian_target(stds), start, 1e-3, 2, 100, generator=torch.Generator().manual_seed(0)
    )
    assert split_rhat(stuck.samples)[0] > 2.0


def test_split_rhat_closed_form():
    # Two chains whose halves have known means and variances.
    half = torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    values = torch.stack([torch.cat([half, half]), torch.cat([half + 2, half + 2])])[..., None]
    # 4 split chains of n = 4: within var W = 4/3, chain means (0, 0, 2, 2): B/n = 4/3.
    within, between_over_n = 4 / 3, 4 / 3
    expected = ((3 / 4 * within + between_over_n) / within) ** 0.5
    assert split_rhat(values).item() == pytest.approx(expected)
    iid = torch.randn(4, 2000, 3, generator=torch.Generator().manual_seed(0))
    assert (split_rhat(iid) - 1).abs().max() < 0.01


def test_endpoint_semantics_burn_thin_and_rejection():
    stds = torch.ones(3)
    start = torch.full((2, 3), 0.5)
    result = hmc(gaussian_target(stds), start, 5.0, 3, 6, burn=2, thin=3,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    # ε = 5 always diverges, so every kept endpoint is the starting point.
    assert result.samples.shape == (2, 6, 3)
    assert torch.equal(result.samples, start[:, None].expand(2, 6, 3))
    assert torch.equal(result.acceptance, torch.zeros(2))
    torch.testing.assert_close(result.log_probs, torch.full((2, 6), -0.375))


def test_seeded_runs_are_reproducible():
    stds = torch.ones(5)
    start = torch.zeros(3, 5)
    run = [hmc(gaussian_target(stds), start, 0.3, 5, 10, generator=torch.Generator().manual_seed(7))
           for _ in range(2)]  # fmt: skip
    assert torch.equal(run[0].samples, run[1].samples)


def test_flat_model_matches_module_forward():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    flat = FlatModel(model)
    inputs = torch.randn(7, 2)
    thetas = torch.stack([flat.flatten(), torch.randn(flat.dim)])
    outputs = flat(thetas, inputs)
    torch.testing.assert_close(outputs[0], model(inputs))
    flat.load(thetas[1])
    torch.testing.assert_close(outputs[1], model(inputs))


def test_bad_input_raises_user_error():
    stds = torch.ones(2)
    with pytest.raises(UserError):
        hmc(gaussian_target(stds), torch.zeros(2), 0.1, 5, 10)
    with pytest.raises(UserError):
        hmc(gaussian_target(stds), torch.full((1, 2), float("nan")), 0.1, 5, 10)
    with pytest.raises(UserError):
        split_rhat(torch.zeros(2, 3))
    flat, inputs, targets, _, _ = linear_problem()
    with pytest.raises(UserError):
        gaussian_log_posterior(flat, inputs, targets, NOISE_VAR, PRIOR_VAR, temperature=0.0)


@pytest.mark.slow
def test_compiled_gradients_match_eager():
    flat, inputs, targets, _, _ = linear_problem()
    log_prob = gaussian_log_posterior(flat, inputs, targets, NOISE_VAR, PRIOR_VAR)
    start = torch.zeros(4, 3, dtype=torch.float64)
    runs = [hmc(log_prob, start, 0.05, 5, 5, generator=torch.Generator().manual_seed(0),
                compile=compile) for compile in (False, True)]  # fmt: skip
    torch.testing.assert_close(runs[0].samples, runs[1].samples)


def mlp_problem(num_chains: int = 5, dtype=torch.float64):
    """A 3→6→5→2 ReLU MLP (two outputs) on 9 points, and `num_chains` parameter vectors."""
    generator = torch.Generator().manual_seed(3)
    model = nn.Sequential(
        nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)
    ).to(dtype)
    flat = FlatModel(model)
    inputs = torch.randn(9, 3, generator=generator).to(dtype)
    targets = torch.randn(9, 2, generator=generator).to(dtype)
    thetas = torch.randn(num_chains, flat.dim, generator=generator).to(dtype)
    return flat, inputs, targets, thetas


def test_mlp_widths_recognises_only_linear_relu_stacks():
    assert mlp_widths(mlp_problem()[0].model) == (3, 6, 5, 2)
    assert mlp_widths(nn.Sequential(nn.Linear(2, 1))) == (2, 1)
    assert mlp_widths(nn.Linear(2, 1)) is None
    assert mlp_widths(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))) is None
    assert mlp_widths(nn.Sequential(nn.Linear(2, 3), nn.ReLU())) is None
    assert mlp_widths(nn.Sequential(nn.Linear(2, 1, bias=False))) is None


@pytest.mark.parametrize("prior_var", [0.5, None])
def test_hand_written_gradient_matches_autograd(prior_var):
    flat, inputs, targets, thetas = mlp_problem()
    log_prob = gaussian_log_posterior(flat, inputs, targets, 0.3, prior_var, temperature=2.0)
    thetas.requires_grad_(True)
    expected = log_prob(thetas)  # the generic functional_call path
    (expected_grads,) = torch.autograd.grad(expected.sum(), thetas)
    values, grads = mlp_log_prob_and_grad(
        thetas.detach().T, inputs.T[:, :, None], targets.T[:, :, None], (3, 6, 5, 2),
        1 / (0.3 * 2.0), 0.0 if prior_var is None else 1 / (prior_var * 2.0),
    )  # fmt: skip
    torch.testing.assert_close(values, expected.detach())
    torch.testing.assert_close(grads.T, expected_grads)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_fused_mlp_path_gives_the_generic_samples(compile):
    # Same seeds, same momenta: the chains differ only by float rounding, in float32 as run.
    flat, inputs, targets, thetas = mlp_problem(num_chains=4, dtype=torch.float32)
    inverse_mass = torch.rand(flat.dim, generator=torch.Generator().manual_seed(0)) + 0.5
    runs = []
    for hand in (False, True):
        log_prob = gaussian_log_posterior(flat, inputs, targets, 0.3, 1.0, hand_gradient=hand)
        generator = torch.Generator().manual_seed(5)
        runs.append(hmc(log_prob, thetas * 0.3, 0.1, 5, 6, burn=1, compile=compile and hand,
                        generator=generator, inverse_mass=inverse_mass))  # fmt: skip
    assert 0 < runs[0].acceptance.mean() < 1  # both branches of the accept step are taken
    torch.testing.assert_close(runs[1].samples, runs[0].samples, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(runs[1].log_probs, runs[0].log_probs, rtol=1e-4, atol=1e-4)
    assert torch.equal(runs[1].acceptance, runs[0].acceptance)


def test_ascend_is_sgd_on_the_mean_squared_error():
    # Pre-training: SGD at lr on mean squared error / (2σ²) (train_members, autograd) equals
    # gradient ascent on the flat-prior log likelihood at lr / (N·out).
    flat, inputs, targets, thetas = mlp_problem()
    expected = train_members(flat, thetas, inputs, targets, noise_var=0.3, num_steps=20, lr=0.01)
    likelihood = gaussian_log_posterior(flat, inputs, targets, 0.3, None)
    torch.testing.assert_close(likelihood.ascend(thetas, 20, 0.01 / targets.numel()), expected)


def test_curvature_diagonal_of_linear_model_is_exact_precision():
    # For a linear model the Gauss-Newton matrix is the exact posterior precision.
    flat, inputs, targets, mean, cov = linear_problem(sequential=True)
    log_prob = gaussian_log_posterior(flat, inputs, targets, NOISE_VAR, PRIOR_VAR)
    diagonal = log_prob.curvature_diagonal(torch.randn(2, 3, dtype=torch.float64))
    torch.testing.assert_close(diagonal, torch.linalg.inv(cov).diagonal().expand(2, 3))


def test_diagonal_mass_matrix_samples_a_badly_scaled_gaussian():
    # Scales 1e-3 .. 10: with identity mass, ε must be < 2e-3 and the wide coordinate does not
    # move in 200 trajectories; with M⁻¹ = the variances, ε = 0.3 mixes every coordinate.
    stds = torch.tensor([1e-3, 0.1, 1.0, 10.0], dtype=torch.float64)
    start = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)).double() * stds
    run = hmc(gaussian_target(stds), start, 0.3, 6, 1500, burn=100,
              generator=torch.Generator().manual_seed(1), inverse_mass=stds**2)  # fmt: skip
    assert run.acceptance.min() > 0.8
    assert split_rhat(run.samples).max() < 1.01
    draws = run.samples.reshape(-1, 4)
    # 12,000 autocorrelated draws: the std of each coordinate within 5%.
    assert ((draws.std(0) / stds) - 1).abs().max() < 0.05
    identity = hmc(
        gaussian_target(stds), start, 0.3, 6, 50, generator=torch.Generator().manual_seed(1)
    )
    assert identity.acceptance.max() < 0.1


def test_bad_inverse_mass_raises_user_error():
    stds = torch.ones(3)
    for bad in (torch.ones(2), -torch.ones(3), torch.ones(4, 3)):
        with pytest.raises(UserError):
            hmc(gaussian_target(stds), torch.zeros(2, 3), 0.1, 5, 10, inverse_mass=bad)


def test_run_hmc_with_curvature_mass_matrix():
    data = regression1d.load_data(Path(__file__).parents[1] / "experiments/deep_ensembles/data.npz")
    config = dataclasses.replace(
        regression1d.get_config("2020-12").hmc, step_size=0.002, num_leapfrog=5, num_samples=3,
        burn=2, pretrain_steps=10, mass="ggn",
    )  # fmt: skip
    result = regression1d.run_hmc(config, data, num_chains=4)
    assert result.samples.shape == (4, 3, 261)
    assert result.acceptance.mean() > 0.5
    with pytest.raises(UserError):
        regression1d.run_hmc(dataclasses.replace(config, mass="dense"), data, num_chains=4)
