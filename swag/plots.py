"""Figures shared by the experiments; matplotlib is imported inside the functions."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from swag import metrics
from swag.errors import UserError
from swag.io import atomic_savefig


def reliability_diagram(
    named_predictions: Mapping[str, tuple],
    path: str | os.PathLike,
    num_bins: int = 20,
    title: str | None = None,
) -> Path:
    """Write a reliability diagram (accuracy against confidence) as a PNG, atomically.

    One panel: for each method, its `metrics.calibration_curve` (mean confidence and accuracy
    of the non-empty equal-width bins) as a line with markers, labelled with the method's ECE;
    the diagonal marks perfect calibration.

    Args:
        named_predictions: method name → `(probs [N, C], targets [N])`, tensors or arrays.
        path: output PNG file; missing parent directories are created.
        num_bins: number of equal-width confidence bins.
        title: optional figure title.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure  # Agg rendering, no pyplot global state

    if not named_predictions:
        raise UserError("reliability_diagram needs at least one (probs, targets) pair.")
    figure = Figure(figsize=(5, 5), dpi=120)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for name, (probs, targets) in named_predictions.items():
        curve = metrics.calibration_curve(probs, targets, num_bins)
        error = metrics.ece(probs, targets, num_bins)
        filled = curve.count > 0
        axes.plot(
            curve.confidence[filled],
            curve.accuracy[filled],
            marker="o",
            markersize=3,
            label=f"{name} (ECE {error:.3f})",
        )
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", aspect="equal")
    axes.legend(loc="best")
    if title:
        axes.set_title(title)
    figure.tight_layout()

    atomic_savefig(figure, path)
    return path
