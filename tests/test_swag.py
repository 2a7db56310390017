"""SWAG (swag.posteriors.SWAG) against numpy, torch.optim.swa_utils and the original's formulas.

Iterates are recorded as numpy arrays and written into a model with
`torch.nn.utils.vector_to_parameters`, so the expected moments never pass through the code
under test. Statistical checks draw from fixed generators and state their tolerance.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.optim.swa_utils import AveragedModel

from swag.errors import UserError
from swag.posteriors import SWAG

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))  # 23 parameters


def bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))  # 29 parameters


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flat(model: nn.Module) -> np.ndarray:
    return parameters_to_vector(model.parameters()).detach().numpy()


def record_iterates(num: int, dim: int, seed: int, loc=0.0, spread=1.0) -> np.ndarray:
    """[num, dim] float32 iterates with per-coordinate scales, so variances differ."""
    rng = np.random.default_rng(seed)
    scales = spread * rng.uniform(0.2, 2.0, size=dim)
    return (loc + scales * rng.standard_normal((num, dim))).astype(np.float32)


def collect(posterior: SWAG, model: nn.Module, iterates: np.ndarray) -> None:
    for w in iterates:
        vector_to_parameters(torch.as_tensor(w), model.parameters())
        posterior.collect_model(model)


def expected_deviations(iterates: np.ndarray, keep: int) -> np.ndarray:
    """Upstream convention: column i = w_i − (running mean after adding w_i); the last `keep`."""
    w = iterates.astype(np.float64)
    running = np.cumsum(w, axis=0) / np.arange(1, len(w) + 1)[:, None]
    return (w - running)[-keep:]


def draw(posterior: SWAG, num: int, seed: int, **kwargs) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return np.stack([posterior.sample(generator=generator, **kwargs).numpy() for _ in range(num)])


def assert_covariance(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray, sigmas=5.0):
    """Sample mean and covariance within `sigmas` standard errors of the truth, entry by entry.

    For Gaussian draws, se(mean_i) = √(Σ_ii/N) and se(Ĉ_ij) = √((Σ_ii Σ_jj + Σ_ij²)/N).
    """
    num = samples.shape[0]
    diag = np.diag(cov)
    assert np.all(np.abs(samples.mean(0) - mean) <= sigmas * np.sqrt(diag / num))
    estimate = np.cov(samples, rowvar=False)
    standard_error = np.sqrt((np.outer(diag, diag) + cov**2) / num)
    z = np.abs(estimate - cov) / standard_error
    assert z.max() <= sigmas, f"max |z| = {z.max():.2f}"


def test_moments_and_fifo_deviations_match_numpy():
    model = small_model()
    posterior = SWAG(small_model(1), max_num_models=5, var_clamp=1e-30)
    iterates = record_iterates(7, num_params(model), seed=0)
    collect(posterior, model, iterates)
    w = iterates.astype(np.float64)
    assert int(posterior.n_models) == 7
    np.testing.assert_allclose(posterior.mean.numpy(), w.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(posterior.variance().numpy(), w.var(0), rtol=1e-10)
    assert posterior.rank == 5
    # FIFO: the columns of iterates 3..7, oldest first.
    np.testing.assert_allclose(
        posterior.deviations.numpy(), expected_deviations(iterates, 5), rtol=1e-5, atol=1e-6
    )


def test_deviations_before_the_buffer_is_full():
    model = small_model()
    posterior = SWAG(small_model(1), max_num_models=20)
    iterates = record_iterates(3, num_params(model), seed=1)
    collect(posterior, model, iterates)
    assert posterior.rank == 3
    np.testing.assert_allclose(
        posterior.deviations.numpy(), expected_deviations(iterates, 3), rtol=1e-5, atol=1e-6
    )


def test_variance_of_a_large_weight_keeps_precision():
    """Mean 10, std 1e-3: the naive float32 E[w²] − E[w]² loses the variance entirely."""
    model = small_model()
    iterates = record_iterates(50, num_params(model), seed=2, loc=10.0, spread=1e-3)
    posterior = SWAG(small_model(1), var_clamp=1e-30)
    collect(posterior, model, iterates)
    truth = iterates.astype(np.float64).var(0)
    relative = np.abs(posterior.variance().numpy() - truth) / truth
    assert relative.max() < 1e-3
    # The test can fail: the float32 two-moment formula of the original is far off here.
    w32 = torch.as_tensor(iterates)
    naive = ((w32**2).mean(0) - w32.mean(0) ** 2).double().numpy()
    assert (np.abs(naive - truth) / truth).max() > 1e-2


def test_swa_mean_equals_averaged_model():
    model = bn_model()
    averaged = AveragedModel(model)
    posterior = SWAG(bn_model(1))
    for w in record_iterates(9, num_params(model), seed=3):
        vector_to_parameters(torch.as_tensor(w), model.parameters())
        averaged.update_parameters(model)
        posterior.collect_model(model)
    theta = posterior.set_swa()
    reference = parameters_to_vector(averaged.module.parameters()).double()
    torch.testing.assert_close(theta, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        parameters_to_vector(posterior.base_model.parameters()).double(), reference, rtol=0,
        atol=1e-6,
    )  # fmt: skip


@pytest.mark.parametrize("cov", [True, False])
def test_sample_covariance_is_diag_plus_low_rank(cov):
    """Σ = scale·(diag(var) + D Dᵀ/(K−1)) with K = 4 kept columns; 8,000 draws, 5 s.e. per entry."""
    model = nn.Linear(3, 2)  # 8 parameters
    iterates = record_iterates(6, 8, seed=4)
    posterior = SWAG(nn.Linear(3, 2), max_num_models=4, var_clamp=1e-30)
    collect(posterior, model, iterates)
    w = iterates.astype(np.float64)
    deviations = expected_deviations(iterates, 4)
    scale = 0.5
    expected = np.diag(w.var(0))
    if cov:
        expected = expected + deviations.T @ deviations / (4 - 1)
    samples = draw(posterior, 8000, seed=0, scale=scale, cov=cov)
    assert_covariance(samples, w.mean(0), scale * expected)
    # The last draw is what the base model now holds.
    np.testing.assert_allclose(
        flat(posterior.base_model),
        samples[-1],
        rtol=1e-6,
        atol=1e-6,
    )


def test_cov_mat_false_is_swag_diagonal():
    model = nn.Linear(3, 2)
    iterates = record_iterates(6, 8, seed=5)
    posterior = SWAG(nn.Linear(3, 2), max_num_models=4, var_clamp=1e-30, cov_mat=False)
    collect(posterior, model, iterates)
    assert posterior.rank == 0
    w = iterates.astype(np.float64)
    samples = draw(posterior, 8000, seed=1, scale=1.0)
    assert_covariance(samples, w.mean(0), np.diag(w.var(0)))


def test_legacy_variance_multiplies_by_the_variance():
    """Paper-era sampling: Cov = scale·diag(var²) (var ∈ [0.04, 4] here, so var² ≠ var)."""
    model = nn.Linear(3, 2)
    iterates = record_iterates(8, 8, seed=6)
    posterior = SWAG(nn.Linear(3, 2), var_clamp=1e-30, cov_mat=False)
    collect(posterior, model, iterates)
    w = iterates.astype(np.float64)
    samples = draw(posterior, 8000, seed=2, scale=0.5, legacy_variance=True)
    assert_covariance(samples, w.mean(0), 0.5 * np.diag(w.var(0) ** 2))


def test_one_collected_model_samples_the_clamped_diagonal():
    """K = 1: no division by zero; the variance is var_clamp, so θ̃ − mean has std √(scale·1e-6)."""
    model = nn.Linear(3, 2)
    posterior = SWAG(nn.Linear(3, 2), var_clamp=1e-6)
    collect(posterior, model, record_iterates(1, 8, seed=7))
    assert posterior.rank == 1
    samples = draw(posterior, 4000, seed=3, scale=0.5)
    assert np.isfinite(samples).all()
    std = (samples - posterior.mean.numpy()).std()
    # The std of 32,000 normal draws is within 2% of the truth with overwhelming probability.
    assert abs(std / np.sqrt(0.5e-6) - 1) < 0.02


def test_sampling_or_swa_before_collecting_is_a_user_error():
    posterior = SWAG(nn.Linear(3, 2))
    with pytest.raises(UserError, match="no collected models"):
        posterior.sample()
    with pytest.raises(UserError, match="no collected models"):
        posterior.set_swa()


def test_collecting_another_architecture_is_a_user_error():
    posterior = SWAG(nn.Linear(3, 2))
    with pytest.raises(UserError, match="same architecture"):
        posterior.collect_model(nn.Linear(3, 3))


def test_generator_reproducibility():
    model = nn.Linear(3, 2)
    posterior = SWAG(nn.Linear(3, 2), max_num_models=3)
    collect(posterior, model, record_iterates(5, 8, seed=8))
    first = draw(posterior, 3, seed=11)
    again = draw(posterior, 3, seed=11)
    other = draw(posterior, 3, seed=12)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert not np.allclose(first[0], first[1])


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_round_trip_across_ranks_and_devices(device, tmp_path):
    model = bn_model()
    source = SWAG(bn_model(1), max_num_models=5)
    collect(source, model, record_iterates(3, num_params(model), seed=9))
    path = tmp_path / "swag.pt"
    torch.save(source.state_dict(), path)
    for existing_rank in (0, 5):  # an empty posterior and one that already holds K = 5
        target = SWAG(bn_model(2), max_num_models=5).to(device)
        collect(target, bn_model(3).to(device), record_iterates(existing_rank, 29, seed=10))
        assert target.rank == existing_rank
        state = torch.load(path, map_location=device, weights_only=True)
        target.load_state_dict(state)
        assert target.rank == 3
        for name, buffer in source.named_buffers():
            loaded = dict(target.named_buffers())[name]
            assert loaded.device.type == torch.device(device).type
            torch.testing.assert_close(loaded.cpu(), buffer, rtol=0, atol=0)
        generator = torch.Generator(device).manual_seed(0)
        theta = target.sample(generator=generator)
        assert theta.device.type == torch.device(device).type
        if device == "cpu":
            reference = source.sample(generator=torch.Generator().manual_seed(0))
            torch.testing.assert_close(theta, reference, rtol=0, atol=0)


def test_to_returns_self_and_moves_buffers():
    posterior = SWAG(nn.Linear(3, 2))
    assert posterior.to("cpu") is posterior
    assert posterior.to(torch.device("meta")).mean.device.type == "meta"


def test_loading_a_checkpoint_of_another_parameter_count_is_a_user_error():
    source = SWAG(nn.Linear(3, 2))
    collect(source, nn.Linear(3, 2), record_iterates(2, 8, seed=11))
    target = SWAG(nn.Linear(4, 2))
    with pytest.raises(UserError, match="8 parameters but the model has 10"):
        target.load_state_dict(source.state_dict())


def upstream_state(model: nn.Module, iterates: np.ndarray, max_rank: int) -> dict:
    """An original-format SWAG state (docs/original_code.md, "SWAG"): float32 running moments."""
    size = iterates.shape[1]
    mean, sq_mean = torch.zeros(size), torch.zeros(size)
    rows: list[torch.Tensor] = []
    for n, w in enumerate(torch.as_tensor(iterates)):
        mean = mean * n / (n + 1) + w / (n + 1)
        sq_mean = sq_mean * n / (n + 1) + w**2 / (n + 1)
        rows = [*rows, w - mean][-max_rank:]
    state = {f"base_model.{k}": v for k, v in model.state_dict().items()}
    state.update(
        {
            "mean": mean,
            "sq_mean": sq_mean,
            "n_models": torch.tensor(len(iterates)),
            "subspace.rank": torch.tensor(len(rows)),
            "subspace.cov_mat_sqrt": torch.stack(rows),
        }
    )
    return state


@pytest.mark.parametrize("as_file", [True, False])
def test_load_upstream_checkpoint(as_file, tmp_path):
    model = bn_model()
    iterates = record_iterates(7, num_params(model), seed=12, loc=0.5)
    state = upstream_state(model, iterates, max_rank=4)
    if as_file:  # swag-<epoch>.pt of the original: {'epoch', 'state_dict'}
        source = tmp_path / "swag-7.pt"
        torch.save({"epoch": 7, "state_dict": state}, source)
    else:
        source = state
    posterior = SWAG.load_upstream(source, bn_model(5), var_clamp=1e-30)
    w = iterates.astype(np.float64)
    assert int(posterior.n_models) == 7 and posterior.rank == 4
    np.testing.assert_allclose(posterior.mean.numpy(), w.mean(0), rtol=0, atol=1e-6)
    # float32 moments: the variance is only as good as sq_mean − mean² in float32.
    np.testing.assert_allclose(posterior.variance().numpy(), w.var(0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        posterior.deviations.numpy(), expected_deviations(iterates, 4), rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(flat(posterior.base_model), w.mean(0), atol=1e-6)
    theta = posterior.sample(generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(theta).all()
    # The loaded posterior continues like one that collected the iterates itself.
    native = SWAG(bn_model(6), max_num_models=4)
    collect(native, bn_model(), iterates)
    extra = record_iterates(1, num_params(model), seed=13)
    collect(posterior, bn_model(), extra)
    collect(native, bn_model(), extra)
    torch.testing.assert_close(posterior.mean, native.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(posterior.deviations, native.deviations, rtol=0, atol=1e-5)


def test_load_upstream_rejects_foreign_files():
    model = nn.Linear(3, 2)
    with pytest.raises(UserError, match="not a swag-<epoch>.pt"):
        SWAG.load_upstream({"state_dict": model.state_dict()}, model)
    state = upstream_state(nn.Linear(3, 2), record_iterates(3, 8, seed=14), max_rank=2)
    with pytest.raises(UserError, match="8 parameters but the model has 10"):
        SWAG.load_upstream(state, nn.Linear(4, 2))


def test_state_dict_survives_a_weights_only_round_trip():
    """The checkpoint holds tensors only, so torch.load(weights_only=True) accepts it."""
    posterior = SWAG(nn.Linear(3, 2))
    collect(posterior, nn.Linear(3, 2), record_iterates(2, 8, seed=15))
    buffer = io.BytesIO()
    torch.save({"epoch": 2, "state_dict": posterior.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state["state_dict"]) >= {"mean", "m2", "n_models", "deviations"}
