"""Metrics against torch, torchmetrics, scikit-learn, hand-computed cases and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from swag import metrics
from swag.errors import UserError


def _random_predictions(num_examples=2000, num_classes=10, seed=0):
    """Softmax of scaled Gaussian logits (varied confidences) and random targets."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(num_examples, num_classes, generator=generator, dtype=torch.float64)
    targets = torch.randint(num_classes, (num_examples,), generator=generator)
    return logits.softmax(dim=1), targets


# Three examples; top-class confidences 0.9 (right), 0.6 (wrong), 0.62 (right).
HAND_PROBS = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.62, 0.38, 0.0]])
HAND_TARGETS = np.array([0, 1, 0])


def test_nll_matches_torch_nll_loss_on_log_probs():
    probs, targets = _random_predictions()
    log_probs = probs.log()
    assert metrics.nll(probs, targets) == pytest.approx(F.nll_loss(log_probs, targets).item())
    expected_sum = F.nll_loss(log_probs, targets, reduction="sum").item()
    assert metrics.nll_sum(probs, targets) == pytest.approx(expected_sum)


def test_nll_hand_case_and_floor_against_log_zero():
    expected = -(math.log(0.9) + math.log(0.3) + math.log(0.62)) / 3
    assert metrics.nll(HAND_PROBS, HAND_TARGETS) == pytest.approx(expected)
    # The third example's true class has probability 0: the floor keeps the NLL finite.
    floored = metrics.nll(HAND_PROBS, np.array([0, 1, 2]))
    expected = -(math.log(0.9) + math.log(0.3) + math.log(metrics.PROB_FLOOR)) / 3
    assert floored == pytest.approx(expected)


def test_accuracy_matches_torchmetrics_and_is_a_fraction():
    probs, targets = _random_predictions()
    reference = MulticlassAccuracy(num_classes=10, average="micro")(probs, targets).item()
    assert metrics.accuracy(probs, targets) == pytest.approx(reference)
    assert metrics.accuracy(HAND_PROBS, HAND_TARGETS) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_torchmetrics_l1_with_20_bins(seed):
    probs, targets = _random_predictions(seed=seed)
    probs = probs.float()
    reference = MulticlassCalibrationError(num_classes=10, n_bins=20, norm="l1")
    expected = reference(probs, targets).item()
    assert metrics.ece(probs, targets) == pytest.approx(expected, abs=1e-6)


def test_ece_and_calibration_curve_hand_case():
    # Four bins of width 0.25: 0.6 and 0.62 share (0.5, 0.75]; 0.9 is alone in (0.75, 1].
    curve = metrics.calibration_curve(HAND_PROBS, HAND_TARGETS, num_bins=4)
    np.testing.assert_allclose(curve.edges, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(curve.count, [0, 0, 2, 1])
    np.testing.assert_allclose(curve.confidence[2:], [0.61, 0.9])
    np.testing.assert_allclose(curve.accuracy[2:], [0.5, 1.0])
    assert np.isnan(curve.confidence[:2]).all() and np.isnan(curve.accuracy[:2]).all()
    expected = 2 / 3 * abs(0.5 - 0.61) + 1 / 3 * abs(1.0 - 0.9)
    assert metrics.ece(HAND_PROBS, HAND_TARGETS, num_bins=4) == pytest.approx(expected)


def test_ece_of_calibrated_predictions_is_small():
    # Two classes; the top class has confidence c ~ U(0.5, 1) and is right with probability c.
    # Per bin (~5,000 examples) |acc − conf| has std √(c(1−c)/n) ≤ 0.007, so ECE < 0.02 holds
    # with a wide margin; moving every confidence halfway to 1 (mean gap 0.125) must show.
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, size=100_000)
    correct = rng.uniform(size=confidence.size) < confidence
    probs = np.stack([confidence, 1 - confidence], axis=1)
    targets = np.where(correct, 0, 1)
    assert metrics.ece(probs, targets) < 0.02
    overconfident = np.stack([(1 + confidence) / 2, (1 - confidence) / 2], axis=1)
    assert metrics.ece(overconfident, targets) > 0.1


def test_brier_hand_case():
    # Σ_c (p_c − onehot_c)² per example, then the mean over the three examples.
    per_example = [
        0.1**2 + 0.05**2 + 0.05**2,
        0.6**2 + 0.7**2 + 0.1**2,
        0.38**2 + 0.38**2 + 0.0,
    ]
    assert metrics.brier(HAND_PROBS, HAND_TARGETS) == pytest.approx(np.mean(per_example))


def test_brier_matches_scikit_learn_multiclass():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    probs, targets = _random_predictions()
    try:
        expected = sklearn_metrics.brier_score_loss(
            targets.numpy(), probs.numpy(), labels=list(range(10)), scale_by_half=False
        )
    except TypeError:
        pytest.skip("this scikit-learn has no multi-class Brier score")
    assert metrics.brier(probs, targets) == pytest.approx(expected)


def test_metrics_accept_numpy_and_torch_alike():
    probs, targets = _random_predictions(num_examples=300)
    for function in (metrics.nll, metrics.nll_sum, metrics.accuracy, metrics.brier, metrics.ece):
        from_torch = function(probs.float(), targets)
        from_numpy = function(probs.float().numpy(), targets.numpy())
        assert from_torch == from_numpy
        assert isinstance(from_torch, float)


@pytest.mark.parametrize(
    "probs, targets, fix",
    [
        (np.ones(3) / 3, np.array([0]), "shape"),
        (HAND_PROBS, np.array([0, 1]), "targets must have shape"),
        (HAND_PROBS, np.array([0, 1, 3]), "class indices"),
        (HAND_PROBS * 5, HAND_TARGETS, "not logits"),
        (np.full((3, 3), np.nan), HAND_TARGETS, "non-finite"),
    ],
)
def test_bad_inputs_raise_user_errors(probs, targets, fix):
    with pytest.raises(UserError, match=fix):
        metrics.nll(probs, targets)


def test_running_ensemble_is_the_float64_mean_of_its_members():
    members = [_random_predictions(num_examples=50, seed=seed)[0].float() for seed in range(7)]
    ensemble = metrics.RunningEnsemble(num_examples=50, num_classes=10)
    for index, member in enumerate(members):
        ensemble.update(member if index % 2 else member.numpy())
    expected = np.mean([member.double().numpy() for member in members], axis=0)
    assert ensemble.probs.dtype == torch.float64
    assert ensemble.num_members == 7
    np.testing.assert_allclose(ensemble.probs.numpy(), expected, rtol=1e-13, atol=1e-15)


def test_running_ensemble_keeps_precision_over_many_members():
    # 3,000 members alternating p and q: float32 accumulation would drift by ~1e-5; the float64
    # mean must equal (p + q)/2 to 1e-12.
    p = np.array([[0.1, 0.2, 0.7]], dtype=np.float32)
    q = np.array([[0.3, 0.3, 0.4]], dtype=np.float32)
    ensemble = metrics.RunningEnsemble(num_examples=1, num_classes=3)
    for index in range(3000):
        ensemble.update(p if index % 2 == 0 else q)
    expected = (p.astype(np.float64) + q.astype(np.float64)) / 2
    np.testing.assert_allclose(ensemble.probs.numpy(), expected, rtol=1e-12)


def test_running_ensemble_state_round_trip_and_errors():
    probs, _ = _random_predictions(num_examples=20)
    ensemble = metrics.RunningEnsemble(20, 10)
    with pytest.raises(UserError, match="no members"):
        _ = ensemble.probs
    ensemble.update(probs)
    with pytest.raises(UserError, match="same examples"):
        ensemble.update(probs[:10])
    restored = metrics.RunningEnsemble(20, 10)
    restored.load_state_dict(ensemble.state_dict())
    other = _random_predictions(num_examples=20, seed=1)[0]
    ensemble.update(other)
    restored.update(other)
    assert restored.num_members == 2
    torch.testing.assert_close(restored.probs, ensemble.probs, rtol=0, atol=0)
    with pytest.raises(UserError, match="same dataset"):
        metrics.RunningEnsemble(5, 10).load_state_dict(ensemble.state_dict())


def test_reliability_diagram_writes_a_png(tmp_path):
    from PIL import Image

    from swag.plots import reliability_diagram

    sgd = _random_predictions(num_examples=500, seed=0)
    swag = _random_predictions(num_examples=500, seed=1)
    path = tmp_path / "run" / "reliability.png"
    written = reliability_diagram({"SGD": sgd, "SWAG": swag}, path, title="LeNet5")
    assert written == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
        assert image.size[0] > 100 and image.size[1] > 100
    assert [entry.name for entry in path.parent.iterdir()] == ["reliability.png"]
    with pytest.raises(UserError):
        reliability_diagram({}, tmp_path / "empty.png")
