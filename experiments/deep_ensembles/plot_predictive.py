"""Draw the paper's three panels: predictive mean ± 2 std of HMC, deep ensembles and VI.

Reads the predictions that `compare.py` saved in --dir (targets ×10, no observation noise)
and the data, and writes one PNG:

    python experiments/deep_ensembles/plot_predictive.py --dir runs/deep_ensembles/2020-02
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402

from experiments.deep_ensembles import regression1d  # noqa: E402
from swag import cli  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.io import atomic_savefig  # noqa: E402

HERE = Path(__file__).resolve().parent
PANELS = [("hmc", "HMC"), ("ensemble", "Deep ensemble"), ("vi", "Mean-field VI")]


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path} does not exist: run compare.py with the same --dir first")
    arrays = np.load(path)
    missing = [k for k, _ in PANELS if k not in arrays]
    if missing:
        raise UserError(f"{path} lacks {missing}: pass the --dir of a finished compare.py run")
    # HMC is [chains, samples, M]: every draw of every chain is one predictive sample.
    return {k: arrays[k].reshape(-1, arrays[k].shape[-1]) for k, _ in PANELS}


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="a compare.py output directory")
    parser.add_argument("--data", type=Path, default=HERE / "data.npz")
    parser.add_argument("--out", type=Path, default=None, help="default: <dir>/predictive.png")
    args = parser.parse_args(argv)
    try:
        predictions = load_predictions(args.dir / "predictions.npz")
        data = regression1d.load_data(args.data)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.dir / "predictive.png"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_grid = data.x_grid.numpy()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), sharey=True)
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        draws = predictions[key]
        mean, std = draws.mean(0), draws.std(0)
        ax.fill_between(x_grid, mean - 2 * std, mean + 2 * std, alpha=0.3, label="± 2 std")
        ax.plot(x_grid, mean, label="predictive mean")
        ax.plot(x_grid, data.grid_targets[:, 0].numpy(), "k--", lw=1, label="true function")
        ax.scatter(data.x.numpy(), data.targets[:, 0].numpy(), s=8, c="k", zorder=3)
        ax.set(title=f"{title} ({len(draws)} draws)", xlabel="x")
    axes[0].set_ylabel("10 y")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
