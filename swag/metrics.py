"""Metrics of predictive distributions: NLL, accuracy, ECE, Brier score, calibration curve,
a running ensemble (Bayesian model average) of predicted probabilities, and the 1-D
Wasserstein-2 distance between two sets of draws (`wasserstein2`, torch in and out).

Every function takes `probs [N, C]` (rows on the simplex) and `targets [N]` (class indices)
as torch tensors on any device or as numpy arrays, computes in float64 and returns Python
floats. Means are over examples; `nll_sum` is the one sum, named as such (the original's
`utils.nll` printed a sum beside mean losses, a source of confusion in its issues #8, #25).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from swag.errors import UserError

# Floor on the probability of the true class: a single confidently wrong example costs at
# most −log(1e-12) ≈ 27.6 nats instead of making the NLL infinite (the original had no floor).
PROB_FLOOR = 1e-12
# Rows must sum to 1 within this tolerance: loose enough for half-precision softmax outputs,
# tight enough to catch logits passed by mistake.
_SIMPLEX_TOL = 1e-2


def _to_numpy(values, dtype) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64 if dtype == np.float64 else torch.int64)
        return values.numpy()
    return np.asarray(values, dtype=dtype)


def _probabilities(probs) -> np.ndarray:
    probs = _to_numpy(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise UserError(f"probs must have shape [N, C] with N > 0, got {probs.shape}.")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise UserError("probs contain negative or non-finite values; pass softmax outputs.")
    if np.abs(probs.sum(axis=1) - 1).max() > _SIMPLEX_TOL:
        raise UserError("rows of probs do not sum to 1; pass softmax probabilities, not logits.")
    return probs


def _validated(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    probs = _probabilities(probs)
    targets = _to_numpy(targets, np.int64)
    if targets.shape != probs.shape[:1]:
        raise UserError(
            f"targets must have shape [N] = [{probs.shape[0]}] to match probs, got {targets.shape}."
        )
    if targets.min() < 0 or targets.max() >= probs.shape[1]:
        raise UserError(f"targets must be class indices in [0, {probs.shape[1]}).")
    return probs, targets


def _true_class_log_probs(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    true_probs = probs[np.arange(len(targets)), targets]
    return np.log(np.maximum(true_probs, PROB_FLOOR))


def nll(probs, targets) -> float:
    """Mean negative log-likelihood: −(1/N) Σ_n log max(p_n[y_n], 1e-12).

    Args:
        probs: predicted probabilities `[N, C]`.
        targets: true classes `[N]`.
    """
    probs, targets = _validated(probs, targets)
    return float(-_true_class_log_probs(probs, targets).mean())


def nll_sum(probs, targets) -> float:
    """Summed negative log-likelihood −Σ_n log max(p_n[y_n], 1e-12): the original's `utils.nll`
    convention (plus the floor), N times `nll`."""
    probs, targets = _validated(probs, targets)
    return float(-_true_class_log_probs(probs, targets).sum())


def accuracy(probs, targets) -> float:
    """Top-1 accuracy as a fraction: (1/N) Σ_n 1[argmax p_n = y_n]."""
    probs, targets = _validated(probs, targets)
    return float((probs.argmax(axis=1) == targets).mean())


def brier(probs, targets) -> float:
    """Multi-class Brier score (Brier, 1950): (1/N) Σ_n Σ_c (p_nc − 1[y_n = c])², in [0, 2]."""
    probs, targets = _validated(probs, targets)
    squared = (probs**2).sum(axis=1) - 2 * probs[np.arange(len(targets)), targets] + 1
    return float(squared.mean())


@dataclass(frozen=True)
class CalibrationCurve:
    """Per-bin statistics of the top-class confidence (arrays of length `num_bins`).

    Attributes:
        edges: bin edges `[B + 1]`, 0 to 1; bin b holds confidences in (edges[b], edges[b+1]].
        confidence: mean top-class confidence per bin (NaN for an empty bin).
        accuracy: fraction of correct top-class predictions per bin (NaN for an empty bin).
        count: number of examples per bin.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def calibration_curve(probs, targets, num_bins: int = 20) -> CalibrationCurve:
    """Reliability curve over `num_bins` equal-width confidence bins.

    With confidence c_n = max_c p_nc and correctness a_n = 1[argmax p_n = y_n], bin b holds
    the examples with c_n ∈ (b/B, (b+1)/B] (Guo et al., 2017); confidence 0 joins the first bin.
    The original's unused `utils.calibration_curve` used equal-mass bins instead (edges at
    sorted confidences), which gives a different ECE.
    """
    if num_bins < 1:
        raise UserError(f"num_bins must be a positive integer, got {num_bins}.")
    probs, targets = _validated(probs, targets)
    confidences = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, num_bins - 1)
    count = np.bincount(bins, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, confidences, minlength=num_bins) / count
        mean_accuracy = np.bincount(bins, correct, minlength=num_bins) / count
    return CalibrationCurve(edges, mean_confidence, mean_accuracy, count)


def ece(probs, targets, num_bins: int = 20) -> float:
    """Expected calibration error over equal-width bins (Naeini et al., 2015; Guo et al., 2017):
    ECE = Σ_b (n_b / N) |acc_b − conf_b|, with bins as in `calibration_curve`."""
    curve = calibration_curve(probs, targets, num_bins)
    filled = curve.count > 0
    gaps = np.abs(curve.accuracy[filled] - curve.confidence[filled])
    return float((curve.count[filled] * gaps).sum() / curve.count.sum())


class RunningEnsemble:
    """Running mean of the members' predicted probabilities, kept in float64.

    After M calls to `update`, `probs` = (1/M) Σ_m p^(m): the Bayesian model average of the
    paper's Eq. (2) estimated by simple Monte Carlo, or an ensemble of SGD iterates. The mean
    is updated in place, p̄ ← p̄ + (p^(M) − p̄)/M, so memory stays one `[N, C]` float64 array.

    Args:
        num_examples: N, the number of predicted examples (fixed order across members).
        num_classes: C.
    """

    def __init__(self, num_examples: int, num_classes: int):
        self._mean = torch.zeros(num_examples, num_classes, dtype=torch.float64)
        self.num_members = 0

    def update(self, probs) -> None:
        """Add one member's predictions `probs [N, C]` (tensor on any device, or numpy)."""
        probs = torch.from_numpy(_probabilities(probs))
        if probs.shape != self._mean.shape:
            raise UserError(
                f"member predictions have shape {tuple(probs.shape)} but the ensemble holds "
                f"{tuple(self._mean.shape)}; predict the same examples for every member."
            )
        self.num_members += 1
        self._mean += (probs - self._mean) / self.num_members

    @property
    def probs(self) -> torch.Tensor:
        """Ensemble probabilities `[N, C]`, float64 on the CPU."""
        if self.num_members == 0:
            raise UserError("the ensemble has no members yet; call update() first.")
        return self._mean

    def state_dict(self) -> dict:
        return {"mean": self._mean.clone(), "num_members": self.num_members}

    def load_state_dict(self, state: dict) -> None:
        mean = state["mean"]
        if mean.shape != self._mean.shape:
            raise UserError(
                f"saved ensemble has shape {tuple(mean.shape)}, expected "
                f"{tuple(self._mean.shape)}; resume with the same dataset and split."
            )
        self._mean = mean.to(torch.float64).clone()
        self.num_members = int(state["num_members"])


def wasserstein2(samples_a: torch.Tensor, samples_b: torch.Tensor) -> torch.Tensor:
    """Exact 1-D Wasserstein-2 distance between two empirical distributions, per column.

    `W2² = ∫_0^1 (F_a⁻¹(u) - F_b⁻¹(u))² du`; both quantile functions are step functions, so
    the integral is a finite sum over the merged breakpoints `{i/S_a} ∪ {j/S_b}`.

    Args:
        samples_a: `[S_a, M]` draws at M inputs; samples_b: `[S_b, M]` draws.

    Returns:
        `[M]` float64 distances (same units as the samples).
    """
    if samples_a.dim() != 2 or samples_b.dim() != 2 or samples_a.shape[1] != samples_b.shape[1]:
        raise UserError("pass two sample sets shaped [draws, inputs] with the same inputs")
    a = samples_a.double().sort(0).values
    b = samples_b.double().sort(0).values
    size_a, size_b = a.shape[0], b.shape[0]
    levels = (
        torch.cat([torch.arange(1, size_a + 1) / size_a, torch.arange(1, size_b + 1) / size_b])
        .double()
        .unique()
    )
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    middles = levels - widths / 2
    index_a = (middles * size_a).long().clamp_max(size_a - 1).to(a.device)
    index_b = (middles * size_b).long().clamp_max(size_b - 1).to(b.device)
    squared = (a[index_a] - b[index_b]).pow(2) * widths.to(a.device)[:, None]
    return squared.sum(0).sqrt()
