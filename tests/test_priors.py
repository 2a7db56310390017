"""Function-space priors: draws, the batched prior predictive, correlations and baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from swag import prior_inputs, priors
from swag.errors import UserError
from swag.models import get_model


def small_bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def test_prior_draws_have_the_stated_variance_per_tensor():
    # resample_ sets every tensor (conv/linear weights and biases, BN γ and β) i.i.d. N(0, α²).
    # Per tensor of n entries pooled over 40 draws, the sample variance has relative standard
    # error √(2/(40n)); n ≥ 4 here, so 5 standard errors ≤ 5·√(2/160) = 0.56 for the smallest
    # tensors and ≤ 0.07 for the 144-entry ones. The mean is within 5·α/√(40n).
    model, alpha = small_bn_net(), 0.3
    generator = torch.Generator().manual_seed(0)
    values = {name: [] for name, _ in model.named_parameters()}
    for _ in range(40):
        priors.resample_(model, alpha, generator)
        for name, parameter in model.named_parameters():
            values[name].append(parameter.detach().clone().flatten())
    for name, draws in values.items():
        pooled = torch.cat(draws).double()
        n = pooled.numel()
        assert abs(pooled.mean()) < 5 * alpha / n**0.5, name
        assert abs(pooled.var() / alpha**2 - 1) < 5 * (2 / n) ** 0.5, name


def loop_predictive(model, inputs, alpha, num_samples, generator, bn_mode):
    """The original notebooks' loop: one resample and one forward per prior sample."""
    model = model.train() if bn_mode == "train" else model.eval()
    outputs = []
    with torch.no_grad():
        for _ in range(num_samples):
            priors.resample_(model, alpha, generator)
            outputs.append(model(inputs))
    return torch.stack(outputs)


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_batched_prior_predictive_equals_the_per_sample_loop(bn_mode):
    model = small_bn_net()
    inputs = torch.randn(7, 1, 8, 8)
    batched = priors.prior_predictive(
        model, inputs, 0.5, 9, torch.Generator().manual_seed(1), bn_mode, memory_budget=10**9
    )
    chunked = priors.prior_predictive(
        model, inputs, 0.5, 9, torch.Generator().manual_seed(1), bn_mode,
        memory_budget=2 * priors.bytes_per_sample(model, inputs),
    )  # fmt: skip
    loop = loop_predictive(model, inputs, 0.5, 9, torch.Generator().manual_seed(1), bn_mode)
    assert batched.shape == (9, 7, 3)
    torch.testing.assert_close(batched, loop, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(chunked, batched, rtol=1e-4, atol=1e-5)


def test_prior_predictive_of_registry_models():
    for name, shape in [("LeNet5", (5, 1, 28, 28)), ("PreResNet20NoAug", (4, 3, 32, 32))]:
        model = get_model(name).build(10)
        inputs = torch.randn(shape)
        batched = priors.prior_predictive(model, inputs, 1.0, 3, torch.Generator().manual_seed(2))
        loop = loop_predictive(model, inputs, 1.0, 3, torch.Generator().manual_seed(2), "train")
        # float32 sums of large terms in another order (grouped convolutions): logits reach
        # ~300 at α = 1, so the tolerance is relative to the largest logit
        scale = float(loop.abs().max())
        torch.testing.assert_close(batched, loop, rtol=0, atol=1e-5 * scale)


def test_bad_prior_settings_are_one_sentence_errors():
    model, inputs = small_bn_net(), torch.randn(3, 1, 8, 8)
    with pytest.raises(UserError, match="positive"):
        priors.prior_predictive(model, inputs, 0.0, 2)
    with pytest.raises(UserError, match="at least 1"):
        priors.prior_predictive(model, inputs, 1.0, 0)
    smallest = priors.bytes_per_sample(model, inputs)
    with pytest.raises(UserError, match=f"at least {smallest:,} bytes"):
        priors.prior_predictive(model, inputs, 1.0, 2, memory_budget=smallest - 1)
    with pytest.raises(UserError):
        priors.prior_predictive(model, inputs, 1.0, 2, bn_mode="test")


def test_correlations_match_numpy_corrcoef():
    generator = torch.Generator().manual_seed(3)
    outputs = torch.randn(50, 6, 3, generator=generator) + torch.randn(
        50, 1, 3, generator=generator
    )
    corr = priors.output_correlations(outputs)
    for c in range(3):
        np.testing.assert_allclose(corr[c].numpy(), np.corrcoef(outputs[:, :, c].T.numpy()))
    levels = outputs.reshape(50, 2, 3, 3)  # 2 inputs × 3 levels
    perturbed = priors.perturbation_correlations(levels, logit=1)
    for n in range(2):
        expected = np.corrcoef(levels[:, n, :, 1].T.numpy())[0]
        np.testing.assert_allclose(perturbed[n].numpy(), expected)
    assert priors.mean_offdiagonal(torch.tensor([[1.0, 0.2], [0.4, 1.0]])) == pytest.approx(0.3)


def test_rbf_kernel_by_hand():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    y = torch.tensor([[0.0, 0.0], [6.0, 8.0]])
    expected = torch.tensor([[1.0, np.exp(-100 / 25)], [np.exp(-25 / 25), np.exp(-25 / 25)]])
    torch.testing.assert_close(priors.rbf_kernel(x, y, lengthscale=5.0), expected.double())
    levels = torch.stack([x, y])  # two inputs, two levels each
    expected_levels = torch.tensor([[1.0, np.exp(-1)], [1.0, np.exp(-4)]], dtype=torch.float64)
    torch.testing.assert_close(priors.rbf_perturbation_kernel(levels, 5.0), expected_levels)
    # the original's scale: two images 15000/√3072 ≈ 271 apart in every pixel give k = e^-1
    far = torch.full((1, 3072), 15000 / 3072**0.5)
    assert float(priors.rbf_kernel(torch.zeros(1, 3072), far)) == pytest.approx(np.exp(-1))


def test_linear_model_correlation_matches_its_closed_form():
    # 20,000 draws: the sample correlation r of a pair with true ρ has standard error
    # (1 − ρ²)/√S ≤ 0.0071; we allow 5 standard errors (0.036) for every pair.
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(5, 2, 3, generator=generator, dtype=torch.float64)
    inputs[1] = inputs[0] + 0.3 * inputs[1]
    outputs = priors.linear_prior_outputs(inputs, 0.3, 20_000, generator)
    assert outputs.shape == (20_000, 5, 1)
    sampled = priors.output_correlations(outputs)[0]
    expected = priors.linear_correlation(inputs, inputs)
    tolerance = 5 * (1 - expected**2) / 20_000**0.5 + 1e-12
    assert ((sampled - expected).abs() <= tolerance).all(), (sampled - expected).abs().max()


def test_class_indices_select_and_sort_by_class():
    targets = torch.tensor([3, 1, 3, 0, 1, 3, 1, 0])
    index = prior_inputs.class_indices(targets, [1, 3], per_class=2, offset=1)
    assert index.tolist() == [4, 6, 2, 5]
    with pytest.raises(UserError, match="class 2 has 0 images"):
        prior_inputs.class_indices(targets, [2], per_class=1)


def test_translation_shifts_within_its_range_and_keeps_content():
    images = torch.zeros(200, 1, 32, 32, dtype=torch.uint8)
    images[:, 0, 16, 16] = 255
    for intensity in (1, 3):
        moved = prior_inputs.translate(images, intensity, np.random.default_rng(0))
        rows, columns = (moved[:, 0] == 255).nonzero()[:, 1:].T
        assert len(rows) == 200  # the pixel stays inside: shifts ≤ 2k < 16
        shifts = torch.cat([rows - 16, columns - 16])
        assert shifts.abs().max() == 2 * intensity  # every shift in [-2k, 2k] occurs over 200
    assert torch.equal(prior_inputs.translate(images, 0, np.random.default_rng(0)), images)


def test_perturbation_levels_rgb32_and_path():
    grey = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    rgb = prior_inputs.to_rgb32(grey)
    assert rgb.shape == (3, 3, 32, 32) and torch.equal(rgb[:, 1, 2:30, 2:30], grey[:, 0])
    brighten = prior_inputs.corruption(lambda x, k, rng: np.minimum(x.astype(int) + k, 255), None)
    levels = prior_inputs.perturbation_levels(rgb, brighten, levels=2)
    assert levels.shape == (3, 3, 3, 32, 32) and torch.equal(levels[:, 0], rgb)
    assert torch.equal(levels[:, 2], torch.clamp(rgb.long() + 2, max=255).to(levels.dtype))
    start, end = torch.randn(1, 4, 4), torch.randn(1, 4, 4)
    path = prior_inputs.interpolation_path(start, end, torch.linspace(-1, 2, 7))
    norms = path.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((7,), float((2 * start - end).norm())))
    direction = path[3] / path[3].norm()  # t = 0.5
    torch.testing.assert_close(direction, (start + end) / (start + end).norm())
