"""Plot NLL, accuracy and ECE against the number of independently trained models.

For every test set (clean, and each corruption x severity) one panel draws the curves of deep
ensembles, MultiSWA and MultiSWAG, as in the paper's CIFAR-10-C figure (Wilson & Izmailov 2020,
Fig. 4): rows are corruptions, columns severities. Inputs are the `<method>.json` files of
eval_multiswag.py, or its `probs_<method>/` float16 caches (curves recomputed without networks).

    python experiments/train/plot_multiswag.py --out runs/eval/multiswag \
        --results runs/eval/{ensemble,multiswa,multiswag}.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

from swag import cli  # noqa: E402
from swag.bma_results import (  # noqa: E402
    load_probability_cache,
    prefix_metrics,
    split_test_set_name,
)
from swag.errors import UserError  # noqa: E402
from swag.io import atomic_savefig  # noqa: E402
from swag.posteriors import get_method, method_names  # noqa: E402

TITLES = {"nll": "NLL", "accuracy": "accuracy", "ece": "ECE", "brier": "Brier"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", nargs="+", required=True, metavar="PATH",
        help="<method>.json files or probs_<method>/ cache folders of eval_multiswag.py",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="output prefix: writes <out>_<metric>.png")
    parser.add_argument("--metrics", nargs="+", default=["nll", "accuracy", "ece"],
                        choices=sorted(TITLES))  # fmt: skip
    parser.add_argument("--corruptions", nargs="*", default=None, help="subset of corruptions")
    parser.add_argument("--severities", nargs="*", type=int, default=None, help="subset, 1..5")
    parser.add_argument(
        "--table", action="store_true",
        help="also print a markdown table: each metric per severity (mean over corruptions) "
        "against the number of models",
    )  # fmt: skip
    return parser.parse_args(argv)


def severity_table(curves: dict[str, dict], rows, metric: str) -> str:
    """Markdown: one line per (method, severity), the mean over corruptions for m = 1..M."""
    by_severity: dict[int, list[str]] = {}
    for _, cells in rows:
        for severity, name in cells:
            by_severity.setdefault(severity, []).append(name)
    num_models = max(len(c[n]) for c in curves.values() for n in c)
    lines = ["| method | severity | " + " | ".join(f"m={m}" for m in range(1, num_models + 1))]
    lines.append("|---|---" + "|---" * num_models)
    for method in (m for m in method_names() if m in curves):
        for severity, names in sorted(by_severity.items()):
            values = [
                sum(curves[method][n][m][metric] for n in names) / len(names)
                for m in range(len(curves[method][names[0]]))
            ]
            label = "clean" if severity == 0 else f"{severity} (mean of {len(names)})"
            lines.append(
                f"| {get_method(method).label} | {label} | "
                + " | ".join(f"{v:.4f}" for v in values)
            )
    return "\n".join(line + " |" for line in lines)


def load_curves(path: Path) -> tuple[str, dict]:
    """(method, {test set: prefix metrics}) from a results JSON or a probability cache."""
    if path.is_dir():
        method = path.name.removeprefix("probs_")
        probs, targets = load_probability_cache(path)
        return method, {name: prefix_metrics(probs[name], targets[name]) for name in probs}
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the <method>.json of eval_multiswag.py")
    try:
        results = json.loads(path.read_text())
        return results["method"], results["curves"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a results file of eval_multiswag.py") from error


def panels(names, corruptions, severities) -> list[tuple[str, list[tuple[int, str]]]]:
    """Rows of the figure: [(corruption, [(severity, test set name)])], clean first."""
    rows: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        corruption, severity = split_test_set_name(name)
        if corruptions is not None and corruption not in corruptions and severity != 0:
            continue
        if severities is not None and severity not in severities and severity != 0:
            continue
        rows.setdefault(corruption, []).append((severity, name))
    order = sorted(rows, key=lambda c: (min(s for s, _ in rows[c]) > 0, c))
    return [(c, sorted(rows[c])) for c in order]


def plot(curves: dict[str, dict], metric: str, rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(cells) for _, cells in rows)
    figure, axes = plt.subplots(
        len(rows), columns, figsize=(2.6 * columns, 2.2 * len(rows)), squeeze=False
    )
    for axis in axes.flat:
        axis.set_visible(False)
    for r, (corruption, cells) in enumerate(rows):
        for c, (severity, name) in enumerate(cells):
            axis = axes[r, c]
            axis.set_visible(True)
            for method in (get_method(m) for m in method_names()):
                if method.name in curves and name in curves[method.name]:
                    entries = curves[method.name][name]
                    xs, ys = [e["num_models"] for e in entries], [e[metric] for e in entries]
                    axis.plot(xs, ys, marker="o", ms=3, color=method.colour, label=method.label)
            axis.set_title(corruption if severity == 0 else f"{corruption}, severity {severity}",
                           fontsize=8)  # fmt: skip
            axis.tick_params(labelsize=7)
            axis.set_xlabel("number of models", fontsize=7)
            axis.set_ylabel(TITLES[metric], fontsize=7)
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    atomic_savefig(figure, path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    curves = dict(load_curves(Path(p)) for p in args.results)
    unknown = sorted(set(curves) - set(method_names()))
    if unknown:
        raise UserError(
            f"unknown methods {unknown} in --results; expected {', '.join(method_names())}"
        )
    names = list(dict.fromkeys(name for c in curves.values() for name in c))
    rows = panels(names, args.corruptions, args.severities)
    if not rows:
        raise UserError("no test set left to plot; check --corruptions and --severities")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for metric in args.metrics:
        path = out.with_name(f"{out.name}_{metric}.png")
        plot(curves, metric, rows, path)
        print(f"wrote {path}")
        if args.table:
            print(f"\n{TITLES[metric]}\n{severity_table(curves, rows, metric)}\n")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
