"""Figures of the prior studies (swag/priors.py), written as PNG atomically.

Each function draws one figure with matplotlib's object API (no pyplot state), saves it with
`swag.io.atomic_savefig` and returns the path, so a notebook shows it with
`IPython.display.Image(path)`. matplotlib is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from swag.io import atomic_savefig


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def correlation_heatmap(
    corr: torch.Tensor, labels: torch.Tensor, title: str, path: str | Path
) -> Path:
    """The paper's prior correlation diagram: `corr [N, N]` of class-sorted inputs (coolwarm),
    with lines between class blocks; `labels [N]` name the blocks."""
    figure = _figure(5.2, 4.6)
    axes = figure.add_subplot()
    image = axes.imshow(corr.numpy(), cmap="coolwarm", interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8)
    labels = labels.numpy()
    edges = np.flatnonzero(np.diff(labels)) + 0.5
    for edge in edges:
        axes.axhline(edge, color="k", lw=0.6)
        axes.axvline(edge, color="k", lw=0.6)
    centres = (np.concatenate([[-0.5], edges]) + np.concatenate([edges, [len(labels) - 0.5]])) / 2
    blocks = labels[np.concatenate([[0], (edges + 0.5).astype(int)])]
    axes.set_xticks(centres, blocks)
    axes.set_yticks(centres, blocks)
    axes.set_title(title)
    return atomic_savefig(figure, path)


def path_functions(ts: torch.Tensor, outputs: torch.Tensor, title: str, path: str | Path) -> Path:
    """Prior sample functions along an input path: `outputs [K, T]` against `ts [T]`."""
    figure = _figure(5.5, 3.5)
    axes = figure.add_subplot()
    for curve in outputs.numpy():
        axes.plot(ts.numpy(), curve, lw=1)
    axes.axvline(0, color="grey", ls=":", lw=1)
    axes.axvline(1, color="grey", ls=":", lw=1)
    axes.set_xlabel("t  (x(t) = x₀ + t·(x₁ − x₀); x₀ at 0, x₁ at 1)")
    axes.set_ylabel("logit")
    axes.set_title(title)
    return atomic_savefig(figure, path)


def perturbation_curves(
    panels: Mapping[str, Mapping[str, torch.Tensor]],
    path: str | Path,
    columns: int = 5,
    colours: Mapping[str, str] | None = None,
) -> Path:
    """Correlation between clean and perturbed inputs against intensity, mean ± std over
    images: `panels[perturbation][model] = corr [N, L]`, one panel per perturbation."""
    colours = colours or {"rbf": "tab:blue", "resnet": "tab:orange", "linear": "tab:green"}
    rows = -(-len(panels) // columns)
    figure = _figure(2.6 * min(columns, len(panels)), 2.2 * rows)
    for index, (name, curves) in enumerate(panels.items()):
        axes = figure.add_subplot(rows, min(columns, len(panels)), index + 1)
        for model, corr in curves.items():
            mean, std = corr.mean(0).numpy(), corr.std(0).numpy()
            levels = np.arange(len(mean))
            colour = colours.get(model)
            axes.plot(levels, mean, color=colour, label=model)
            axes.fill_between(levels, mean - std, mean + std, color=colour, alpha=0.2)
        axes.set_title(name, fontsize=8)
        axes.tick_params(labelsize=7)
        if index == 0:
            axes.legend(fontsize=7)
    return atomic_savefig(figure, path)


def class_probabilities(
    rows: Mapping[str, Sequence[tuple[str, torch.Tensor]]],
    class_names: Sequence[str],
    path: str | Path,
) -> Path:
    """Bar charts of class probabilities averaged over test inputs, one row of panels per key:
    `rows[title] = [(panel label, probs [C]), ...]` (e.g. the predictive, then single draws)."""
    columns = max(len(panels) for panels in rows.values())
    figure = _figure(2.2 * columns, 2.0 * len(rows))
    positions = np.arange(len(class_names))
    for row, (title, panels) in enumerate(rows.items()):
        for column, (label, probs) in enumerate(panels):
            axes = figure.add_subplot(len(rows), columns, row * columns + column + 1)
            axes.bar(positions, probs.numpy(), color="tab:blue" if column == 0 else "tab:grey")
            axes.set_ylim(0, 1)
            axes.set_xticks(positions, class_names, fontsize=6)
            axes.tick_params(axis="y", labelsize=6)
            axes.set_title(f"{title}\n{label}" if column == 0 else label, fontsize=7)
    return atomic_savefig(figure, path)
