"""swag.gp: the dense-Cholesky variational GP against gpytorch's model (the original's) and
against numerical integration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swag import gp

# gpytorch's log Φ is an approximation off by up to 5e-5 near x = −2 (torch.special.log_ndtr is
# exact to rounding), so the per-example ELBOs agree to about 1e-4, not to rounding.
ELBO_TOLERANCE = 2e-4


def toy_problem(n: int, flip: float = 0.0, seed: int = 0):
    """Linearly separable inputs [n, 20] in float64 and labels with a fraction flipped."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 20, generator=generator, dtype=torch.float64)
    w = torch.randn(20, generator=generator, dtype=torch.float64)
    y = ((x - 0.5) @ w > 0).long()
    flipped = torch.randperm(n, generator=generator)[: int(flip * n)]
    y[flipped] = 1 - y[flipped]
    return x, y


def paired_models(x):
    """A `DenseVariationalGP` and the gpytorch model holding the same initial parameters."""
    fast = gp.DenseVariationalGP(x, torch.Generator().manual_seed(1))
    reference, likelihood = gp.gpytorch_classifier(x)
    reference.variational_strategy.variational_params_initialized.fill_(1)
    reference.load_state_dict(fast.gpytorch_state_dict(), strict=False)
    return fast, reference, likelihood


def test_expected_log_likelihood_matches_numerical_integration():
    import math

    from scipy import integrate, special

    mean = torch.tensor([0.3, -1.2, 2.5, 0.0], dtype=torch.float64)
    var = torch.tensor([0.5, 2.0, 0.1, 4.0], dtype=torch.float64)
    signs = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)

    def integrand(f, m, v, s):
        return (
            math.exp(-((f - m) ** 2) / (2 * v))
            / math.sqrt(2 * math.pi * v)
            * special.log_ndtr(s * f)
        )

    expected = sum(
        integrate.quad(integrand, m - 12 * v**0.5, m + 12 * v**0.5, args=(m, v, s))[0]
        for m, v, s in zip(mean.tolist(), var.tolist(), signs.tolist(), strict=True)
    )
    # 20-point Gauss–Hermite is exact for polynomials of degree 39; log Φ is not one, and the
    # widest Gaussian here (variance 4) leaves an error of about 2e-6.
    assert gp.expected_log_likelihood(mean, var, signs).item() == pytest.approx(expected, abs=1e-5)


def test_initialisation_matches_gpytorch():
    """gpytorch initialises q(u) at the prior: m = c + 10⁻³ε, L = chol(K + 10⁻³ I)."""
    x, _ = toy_problem(50)
    fast = gp.DenseVariationalGP(x)
    reference, _ = gp.gpytorch_classifier(x)
    reference.train()
    reference(x)  # the first call initialises the variational parameters
    state = reference.state_dict()
    chol = state[gp.GPYTORCH_NAMES["chol_variational_covar"]]
    torch.testing.assert_close(fast.chol_variational_covar.detach(), chol)
    assert fast.variational_mean.abs().max() < 1e-2


@pytest.mark.parametrize("n", [120, 600])
def test_gradients_match_gpytorch_autograd(n):
    """At n = 600 the blocked kernels (512-column blocks) split the matrices unevenly."""
    x, y = toy_problem(n)
    fast, reference, likelihood = paired_models(x)
    fast.negative_elbo(y)
    gp.gpytorch_step(reference, likelihood, torch.optim.SGD(reference.parameters(), lr=0.0), x, y)
    grads = dict(reference.named_parameters())
    for name, parameter in fast.named_parameters():
        expected = grads[gp.GPYTORCH_NAMES[name]].grad.reshape(parameter.shape)
        scale = expected.abs().max().item()
        torch.testing.assert_close(parameter.grad, expected, rtol=0, atol=1e-3 * scale + 1e-9)


def test_training_matches_gpytorch_default_path():
    """Five Adam steps from the same initialisation: −ELBO/n at each step, then the predictive
    probabilities at held-out points, at n = 300 (gpytorch uses Cholesky below 800 points)."""
    x, y = toy_problem(300)
    test_x, _ = toy_problem(100, seed=1)
    fast, reference, likelihood = paired_models(x)
    fast_optimizer = torch.optim.Adam(fast.parameters(), lr=0.1)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.1)
    for _ in range(5):
        expected = gp.gpytorch_step(reference, likelihood, reference_optimizer, x, y)
        fast_optimizer.zero_grad()
        assert fast.negative_elbo(y) == pytest.approx(expected, abs=ELBO_TOLERANCE)
        fast_optimizer.step()
    reference.eval()
    likelihood.eval()
    with torch.no_grad():
        expected = likelihood(reference(test_x)).probs
    torch.testing.assert_close(fast.probabilities(test_x), expected, rtol=0, atol=1e-3)
    torch.testing.assert_close(
        fast.train_probabilities(), likelihood(reference(x)).probs.detach(), rtol=0, atol=1e-3
    )


def test_evidence_falls_with_label_noise():
    """On a separable problem, each flipped label lowers the fitted ELBO/n."""
    elbos = []
    for flip in (0.0, 0.2, 0.4):
        x, y = toy_problem(100, flip=flip)
        model = gp.DenseVariationalGP(x, torch.Generator().manual_seed(0))
        gp.fit(model, y, 60, progress=False)
        elbos.append(-model.negative_elbo(y, backward=False))
    assert elbos[0] > elbos[1] > elbos[2]


def test_memory_estimate_and_largest_n():
    assert gp.dense_memory_bytes(10_000) == 10 * 10_000**2 * 8
    assert gp.dense_memory_bytes(10_000, torch.float64, torch.float32) == 7.6e9
    for products in (None, torch.float32):
        n = gp.largest_n(6 * 2**30, torch.float64, products)
        memory = [gp.dense_memory_bytes(m, torch.float64, products) for m in (n, n + 1)]
        assert memory[0] <= 6 * 2**30 < memory[1]
    assert np.isfinite(gp.largest_n(1.0))


def test_float32_products_keep_the_gradients():
    """float32 products (A = P⁻¹L, AAᵀ) beside float64 factorisations, after 20 steps."""
    x, y = toy_problem(300)
    exact = gp.DenseVariationalGP(x, torch.Generator().manual_seed(0))
    gp.fit(exact, y, 20, progress=False)
    mixed = gp.DenseVariationalGP(x, product_dtype=torch.float32)
    mixed.load_state_dict(exact.state_dict())
    assert mixed.negative_elbo(y) == pytest.approx(exact.negative_elbo(y), abs=1e-6)
    for (name, expected), actual in zip(exact.named_parameters(), mixed.parameters(), strict=True):
        scale = expected.grad.abs().max().item()
        assert actual.grad.dtype == torch.float64, name
        torch.testing.assert_close(actual.grad, expected.grad, rtol=0, atol=1e-4 * scale)


def test_solve_with_cholesky_matches_torch():
    x, _ = toy_problem(200)
    factor = torch.linalg.cholesky(torch.exp(-gp.squared_distances(x, x)) + torch.eye(200))
    vector = torch.linspace(-1.0, 1.0, 200, dtype=torch.float64)
    expected = torch.cholesky_solve(vector[:, None], factor)[:, 0]
    torch.testing.assert_close(gp.solve_with_cholesky(factor, vector), expected)


def test_fit_equals_plain_adam():
    """`fit`'s fused Adam takes the same steps as `torch.optim.Adam`'s default loop."""
    x, y = toy_problem(100)
    fused = gp.DenseVariationalGP(x, torch.Generator().manual_seed(0))
    history = gp.fit(fused, y, 5, progress=False)
    plain = gp.DenseVariationalGP(x, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(plain.parameters(), lr=0.1, fused=False)
    for expected in history:
        optimizer.zero_grad()
        assert plain.negative_elbo(y) == pytest.approx(expected, rel=1e-9)
        optimizer.step()
    for a, b in zip(fused.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b)
