"""The double-descent table (CSV, JSON, text) and figure: test error and NLL against width,
one column of panels per label-noise level, with SGD, SWAG, MultiSWAG and the deep ensemble.

Redraw a finished sweep without retraining:

    python experiments/double_descent/plot.py --out <out of run.py>
"""

from __future__ import annotations

import csv
import io as text_io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

from tabulate import tabulate  # noqa: E402

from swag import cli, io  # noqa: E402
from swag.errors import UserError  # noqa: E402

COLUMNS = ["noise", "width", "num_parameters", "train_error", "sgd_error", "swag_error",
           "multiswag_error", "ensemble_error", "sgd_nll", "swag_nll", "multiswag_nll",
           "ensemble_nll", "seconds"]  # fmt: skip
# (label, colour, line style) of each method's curves.
METHODS = {
    "sgd": ("SGD", "tab:blue", "-"),
    "swag": ("SWAG", "tab:orange", "-"),
    "multiswag": ("MultiSWAG", "tab:green", "-"),
    "ensemble": ("SGD ensemble", "tab:gray", "--"),
}


def write_table(rows: list[dict], out: Path) -> str:
    """Write `results.json` (rows with per-member numbers) and `results.csv`; return the text."""
    rows = sorted(rows, key=lambda row: (row["noise"], row["width"]))
    io.atomic_write_text(out / "results.json", json.dumps(rows, indent=1) + "\n")
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    io.atomic_write_text(out / "results.csv", buffer.getvalue())
    return tabulate([[row[key] for key in COLUMNS] for row in rows], COLUMNS, floatfmt=".4g")


def plot_sweep(rows: list[dict], path: Path, title: str = "") -> Path:
    """Error (top) and NLL (bottom) against width, one column per noise level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({row["noise"] for row in rows})
    figure, axes = plt.subplots(2, len(levels), figsize=(4.5 * len(levels), 6.5), squeeze=False)
    for column, eta in enumerate(levels):
        level = sorted((row for row in rows if row["noise"] == eta), key=lambda r: r["width"])
        widths = [row["width"] for row in level]
        for method, (label, colour, style) in METHODS.items():
            for panel, metric in enumerate(("error", "nll")):
                values = [row[f"{method}_{metric}"] for row in level]
                axes[panel, column].plot(widths, values, style, color=colour, marker="o",
                                         markersize=3, label=label)  # fmt: skip
        axes[0, column].plot(widths, [row["train_error"] for row in level], ":", color="black",
                             label="SGD train error (noisy labels)")  # fmt: skip
        axes[0, column].set_title(f"{title}, {eta:.0%} label noise".lstrip(", "))
        axes[0, column].set_ylabel("test error")
        axes[1, column].set_ylabel("test NLL")
        for panel in range(2):
            axes[panel, column].set_xscale("log", base=2)
            axes[panel, column].set_xlabel("width k")
            axes[panel, column].grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    figure.tight_layout()
    io.atomic_savefig(figure, path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description="redraw the double-descent figure")
    parser.add_argument("--out", required=True, help="the --out folder of run.py")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    results = Path(args.out) / "results.json"
    if not results.is_file():
        raise UserError(f"{results} does not exist; run experiments/double_descent/run.py first")
    plot_sweep(json.loads(results.read_text()), Path(args.out) / "double_descent.png", args.title)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
