"""Calibration temperature scaling, checked against scipy and a known true temperature."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from swag.calibration import (
    TEMPERATURE_RANGE,
    fit_temperature,
    probs_to_logits,
    scale_logits,
)
from swag.errors import UserError


def _calibrated_problem(n=20_000, c=5, seed=0):
    """Logits z and labels drawn from softmax(z): the true temperature of z is 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(n, c))
    p = np.exp(log_softmax(z, axis=1))
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z, y


def _nll(logits, y):
    return -log_softmax(logits, axis=1)[np.arange(len(y)), y].mean()


def test_fit_matches_scipy_and_recovers_true_temperature():
    z, y = _calibrated_problem()
    overconfident = 3.0 * z  # true temperature 3
    t = fit_temperature(torch.as_tensor(overconfident), torch.as_tensor(y))
    ref = minimize_scalar(
        lambda log_t: _nll(overconfident / np.exp(log_t), y),
        bounds=(-3, 3),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert t == pytest.approx(np.exp(ref.x), rel=1e-5)
    # statistical check: 20,000 labels pin T down to a few percent around the truth
    assert t == pytest.approx(3.0, rel=0.05)


def test_scaling_lowers_nll_and_keeps_accuracy():
    z, y = _calibrated_problem(seed=1)
    for wrong in (0.4 * z, 2.5 * z):  # under- and over-confident
        t = fit_temperature(wrong, y)
        probs = scale_logits(wrong, t).numpy()
        assert -np.log(probs[np.arange(len(y)), y]).mean() < _nll(wrong, y) - 0.01
        np.testing.assert_array_equal(probs.argmax(1), wrong.argmax(1))


def test_model_average_is_scaled_through_the_log_of_its_probabilities():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(4), size=6)
    p[0] = [1.0, 0.0, 0.0, 0.0]  # exact zeros, as a BMA can produce
    t = 1.7
    expected = p ** (1 / t) / (p ** (1 / t)).sum(1, keepdims=True)
    np.testing.assert_allclose(scale_logits(probs_to_logits(p), t).numpy(), expected, atol=1e-6)


def test_separable_data_hits_the_end_of_the_range_and_bad_input_fails():
    z = np.array([[5.0, 0.0], [0.0, 5.0]])
    assert fit_temperature(z, np.array([0, 1])) == TEMPERATURE_RANGE[0]
    assert fit_temperature(z, np.array([1, 0])) == TEMPERATURE_RANGE[1]
    with pytest.raises(UserError, match="targets"):
        fit_temperature(z, np.array([0, 1, 1]))
    with pytest.raises(UserError, match="positive"):
        scale_logits(z, 0.0)
