"""SGLD against a Gaussian whose answer is known, and the sample bank's contract."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from swag.errors import UserError
from swag.posteriors.base import load
from swag.posteriors.methods import get_method
from swag.posteriors.sample_bank import SampleBank, Thinning
from swag.posteriors.sgld import SGLD, full_batch_sgld, noise_factor_for

MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
COVARIANCE = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
NUM_TRAIN = 100  # the loss is a mean over N "points": L = U / N


def run_chains(temperature: float, lr: float, num_chains: int, num_steps: int) -> torch.Tensor:
    """Final states [num_chains, 2] of independent SGLD chains on the mean loss
    L(θ) = ½(θ − μ)ᵀΣ⁻¹(θ − μ) / N, started at 0."""
    precision = torch.linalg.inv(COVARIANCE)
    theta = nn.Parameter(torch.zeros(num_chains, 2, dtype=torch.float64))
    optimizer = SGLD(
        [theta], lr=lr, noise_factor=noise_factor_for(NUM_TRAIN, temperature),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    for _ in range(num_steps):
        optimizer.zero_grad()
        centred = theta - MEAN
        # Sum over chains of each chain's mean loss: every chain gets its own gradient.
        loss = 0.5 * ((centred @ precision) * centred).sum() / NUM_TRAIN
        loss.backward()
        optimizer.step()
    return theta.detach()


def discrete_stationary_covariance(temperature: float, step: float) -> torch.Tensor:
    """Stationary covariance of the Euler-Maruyama chain with effective step h = lr/N:
    C = (I − hP) C (I − hP) + 2hT·I with P = Σ⁻¹, so C = T·Σ(I − hP/2)⁻¹ (step-size bias)."""
    precision = torch.linalg.inv(COVARIANCE)
    return temperature * COVARIANCE @ torch.linalg.inv(torch.eye(2) - step * precision / 2)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_sgld_samples_the_gaussian_at_temperature_t(temperature):
    # 10,000 independent chains, h = lr/N = 0.02. The slow eigenvalue of Σ⁻¹ is 1/1.8, so after
    # 800 steps the start is forgotten to (1 − 0.02/1.8)^800 ≈ 1e-4 (mean) and 2e-8 (covariance):
    # the final states are 10,000 independent draws of the chain's stationary law N(μ, C).
    # The step-size bias C/(TΣ) − 1 is ≤ h·λ_max(Σ⁻¹)/2 ≈ 5.6%; we compare with C exactly and
    # check C is within 6% of TΣ. Tolerance: 5 standard errors of the sample mean (√(C_ii/n))
    # and of each sample covariance entry (√((C_ii C_jj + C_ij²)/n)), n = 10,000.
    lr, num_chains = 2.0, 10_000
    draws = run_chains(temperature, lr, num_chains, num_steps=800)
    expected = discrete_stationary_covariance(temperature, lr / NUM_TRAIN)
    torch.testing.assert_close(expected, temperature * COVARIANCE, rtol=0.06, atol=0.0)
    mean_error = (draws.mean(0) - MEAN).abs()
    assert (mean_error < 5 * torch.sqrt(expected.diagonal() / num_chains)).all(), mean_error
    sample_covariance = torch.cov(draws.T)
    variances = expected.diagonal()
    standard_error = torch.sqrt((variances[:, None] * variances[None] + expected**2) / num_chains)
    assert ((sample_covariance - expected).abs() < 5 * standard_error).all(), sample_covariance


def test_one_step_equals_the_update_formula():
    torch.manual_seed(0)
    param = nn.Parameter(torch.randn(3, 4))
    grad = torch.randn(3, 4)
    param.grad = grad.clone()
    lr, noise_factor, weight_decay = 0.05, 0.3, 0.01
    start = param.detach().clone()
    SGLD([param], lr, noise_factor, weight_decay, torch.Generator().manual_seed(7)).step()
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(7))
    expected = start - lr * (grad + weight_decay * start) + noise_factor * math.sqrt(2 * lr) * noise
    torch.testing.assert_close(param.detach(), expected)


def test_bad_sgld_settings_are_user_errors():
    param = nn.Parameter(torch.zeros(2))
    for lr in (0.0, -1e-3):
        with pytest.raises(UserError, match="learning rate"):
            SGLD([param], lr)
    with pytest.raises(UserError):
        SGLD([param], 1e-3, noise_factor=-1.0)
    with pytest.raises(UserError):
        noise_factor_for(0)
    assert noise_factor_for(400) == pytest.approx(0.05)
    assert noise_factor_for(400, temperature=4.0) == pytest.approx(0.1)


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def filled_bank(num_samples: int) -> SampleBank:
    torch.manual_seed(0)
    model = small_model()
    bank = SampleBank(model)
    for _ in range(num_samples):
        for parameter in model.parameters():
            parameter.data.normal_()
        bank.collect()
    return bank


def current_weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_bank_draws_without_replacement():
    bank = filled_bank(5)
    assert bank.samples.shape == (5, sum(p.numel() for p in bank.model.parameters()))
    generator = torch.Generator().manual_seed(3)
    seen = []
    for _ in range(10):
        bank.sample(generator)
        weights = current_weights(bank.model)
        matches = (bank.samples == weights).all(1).nonzero().flatten().tolist()
        assert len(matches) == 1
        seen.append(matches[0])
    assert sorted(seen[:5]) == list(range(5)) and sorted(seen[5:]) == list(range(5))


def test_bank_round_trip_reproduces_draws(tmp_path):
    bank = filled_bank(4)
    bank.save(tmp_path / "samples.pt")
    loaded = load(tmp_path / "samples.pt", small_model())
    assert isinstance(loaded, SampleBank) and loaded.needs_bn_update
    torch.testing.assert_close(loaded.samples, bank.samples)
    first, second = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(6):
        bank.sample(first)
        loaded.sample(second)
        torch.testing.assert_close(current_weights(loaded.model), current_weights(bank.model))
    assert get_method("sgld").kinds == ("samples",)


def test_thinning_and_empty_banks():
    thinning = Thinning(burn_in=3, thin=2)
    assert [t for t in range(1, 10) if thinning.keeps(t)] == [5, 7, 9]
    assert thinning.count(9) == 3 and thinning.check(9) == 3
    with pytest.raises(UserError, match="keeps no sample"):
        thinning.check(4)
    with pytest.raises(UserError):
        Thinning(thin=0)
    with pytest.raises(UserError, match="empty"):
        SampleBank(small_model()).sample()


def test_run_sgld_end_to_end(tmp_path, tiny_fashion_mnist):
    from experiments.train import run_sgld
    from swag.models import get_model

    tiny = tiny_fashion_mnist(tmp_path / "data", n_train=128, n_test=32)
    out = tmp_path / "run"
    argv = ["--dir", str(out), "--data_path", str(tiny.data_path), "--dataset", "FashionMNIST",
            "--model", "LeNet5", "--epochs", "3", "--burn_in", "1", "--thin", "1", "--cosine",
            "--use_test", "--batch_size", "64", "--lr_init", "1e-3", "--prior_var", "1",
            "--device", "cpu"]  # fmt: skip
    assert run_sgld.main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["kept"] for row in rows] == [False, True, True]
    assert rows[0]["lr"] == pytest.approx(1e-3) and rows[2]["lr"] == pytest.approx(2.5e-4)
    results = json.loads((out / "results.json").read_text())
    assert results["num_samples"] == 2 and results["noise_factor"] == pytest.approx(128**-0.5)
    assert 0 <= results["bma_acc"] <= 100 and results["bma_nll"] > 0
    assert (out / "command.sh").is_file() and (out / "config.json").is_file()
    bank = load(out / "samples.pt", get_model("LeNet5").build(10))
    assert isinstance(bank, SampleBank) and bank.num_samples == 2


def test_run_sgld_refuses_a_chain_that_keeps_nothing(tmp_path):
    from experiments.train import run_sgld

    argv = ["--dir", str(tmp_path / "run"), "--data_path", str(tmp_path), "--model", "LeNet5",
            "--epochs", "3", "--burn_in", "3"]  # fmt: skip
    with pytest.raises(UserError, match="keeps no sample"):
        run_sgld.main(argv)
    assert not (tmp_path / "run").exists()


def test_full_batch_sgld_runs_and_validates():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    inputs, targets = torch.randn(30, 4), torch.arange(30) % 3
    before = current_weights(model)
    result = full_batch_sgld(model, inputs, targets, prior_var=1.0, num_steps=5,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert set(result) == {"loss", "accuracy"} and result["loss"] > 0
    assert not torch.equal(before, current_weights(model))
    with pytest.raises(UserError):
        full_batch_sgld(model, inputs, targets, prior_var=1.0, num_steps=0)
