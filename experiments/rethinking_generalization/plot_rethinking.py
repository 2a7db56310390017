"""Figure and tables of the rethinking-generalisation study (the paper's Fig. 7): the binary
GP's evidence (ELBO/n) against the fraction of flipped labels, the one-vs-all GP's accuracies
with true and permuted labels, and, when `--laplace_json` is given, the networks' Laplace
evidence and accuracies against label corruption (a JSON list of {fraction,
log_marglik_per_example, train_acc, test_acc}, one entry per corruption level, and an optional
"hessian" key that draws one evidence line per Hessian; `laplace_evidence.py` writes it).

    python experiments/rethinking_generalization/plot_rethinking.py \\
        --binary_dir runs/rethinking/binary_n1000 --one_vs_all_dir runs/rethinking/one_vs_all \\
        --out experiments/rethinking_generalization/rethinking.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

from tabulate import tabulate  # noqa: E402

from swag.cli import ArgumentParser, run_main  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.io import atomic_savefig  # noqa: E402

LAPLACE_KEYS = ("fraction", "log_marglik_per_example", "train_acc", "test_acc")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary_dir", type=Path, default=None, help="binary GP results")
    parser.add_argument("--one_vs_all_dir", type=Path, default=None, help="one-vs-all results")
    parser.add_argument("--laplace_json", type=Path, default=None, help="network evidence")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    if not (args.binary_dir or args.one_vs_all_dir or args.laplace_json):
        parser.error("pass at least one of --binary_dir, --one_vs_all_dir, --laplace_json")
    return args


def binary_rows(directory: Path) -> list[dict]:
    """One row per `bin_model_corrupted<f>.json`, sorted by f."""
    paths = [p for p in directory.glob("bin_model_corrupted*.json") if "_config" not in p.name]
    if not paths:
        raise UserError(f"no bin_model_corrupted*.json in {directory}; run the binary GP first")
    rows = [json.loads(path.read_text()) for path in paths]
    return sorted(rows, key=lambda row: row["corrupted_labels"])


def one_vs_all_rows(directory: Path) -> list[dict]:
    rows = [
        json.loads((directory / f"{kind}_summary.json").read_text())
        for kind in ("true", "shuffled")
        if (directory / f"{kind}_summary.json").is_file()
    ]
    if not rows:
        raise UserError(f"no *_summary.json in {directory}; run gp_train_one_vs_all.py --cls all")
    return rows


def laplace_rows(path: Path) -> list[dict]:
    """The networks' Laplace evidence: a JSON list of {fraction, log_marglik_per_example,
    train_acc, test_acc}, validated."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"--laplace_json {path} is not a readable JSON file: {error}") from error
    if not isinstance(rows, list) or not all(
        isinstance(row, dict) and set(LAPLACE_KEYS) <= set(row) for row in rows
    ):
        raise UserError(
            f"--laplace_json {path} must be a list of objects with keys {', '.join(LAPLACE_KEYS)}"
        )
    return sorted(rows, key=lambda row: row["fraction"])


def plot_laplace(evidence_axis, accuracy_axis, rows: list[dict]) -> None:
    """The networks' evidence against corruption (one line per `hessian`, when rows name one)
    and their train (corrupted labels) and test (true labels) accuracies."""
    for index, hessian in enumerate(dict.fromkeys(row.get("hessian") for row in rows)):
        group = [row for row in rows if row.get("hessian") == hessian]
        evidence_axis.plot(
            [row["fraction"] for row in group],
            [row["log_marglik_per_example"] for row in group],
            "o-", color=f"C{3 + index}", label=hessian or "Laplace",
        )  # fmt: skip
    evidence_axis.set(
        xlabel="fraction of corrupted labels",
        ylabel="Laplace log evidence / n",
        title="network (Laplace)",
    )
    evidence_axis.legend()
    levels = {row["fraction"]: row for row in rows}  # accuracies do not depend on the Hessian
    for key, label in (("train_acc", "train (corrupted labels)"), ("test_acc", "test (true)")):
        accuracy_axis.plot(list(levels), [row[key] for row in levels.values()], "o-", label=label)
    accuracy_axis.set(xlabel="fraction of corrupted labels", ylabel="accuracy", ylim=(0, 1.05),
                      title="network accuracy")  # fmt: skip
    accuracy_axis.legend()


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A GitHub table of `rows`: one (header, key, format spec) per column."""
    return tabulate(
        [[format(r.get(key, ""), spec) for _, key, spec in columns] for r in rows],
        headers=[header for header, _, _ in columns],
        tablefmt="github",
    )


BINARY_COLUMNS = [
    ("flipped", "corrupted_labels", ""), ("N", "n_train", ""),
    ("ELBO/N", "elbo_per_example", ".4f"), ("train acc (noisy)", "train_accuracy", ".3f"),
    ("test acc (true)", "test_accuracy", ".3f"), ("train s", "train_seconds", ".0f"),
]  # fmt: skip
ONE_VS_ALL_COLUMNS = [
    ("labels", "labels", ""), ("mean ELBO/N of 10 models", "mean_elbo_per_example", ".4f"),
    ("10-class train acc", "train_accuracy", ".3f"), ("10-class test acc", "test_accuracy", ".3f"),
]  # fmt: skip
LAPLACE_COLUMNS = [
    ("fraction", "fraction", ""), ("hessian", "hessian", ""),
    ("log evidence / n", "log_marglik_per_example", ".4f"),
    ("train acc (corrupted)", "train_acc", ".3f"), ("test acc (true)", "test_acc", ".3f"),
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args = parse_args(argv)
    panels = []
    if args.binary_dir:
        rows = binary_rows(args.binary_dir)
        print(table(rows, BINARY_COLUMNS))
        panels.append(("binary", rows))
    if args.one_vs_all_dir:
        rows = one_vs_all_rows(args.one_vs_all_dir)
        print(table(rows, ONE_VS_ALL_COLUMNS))
        panels.append(("one_vs_all", rows))
    if args.laplace_json:
        rows = laplace_rows(args.laplace_json)
        print(table(rows, LAPLACE_COLUMNS))
        panels += [("laplace", rows), ("laplace_accuracy", rows)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for position, (axis, (kind, rows)) in enumerate(zip(axes[0], panels, strict=True)):
        if kind == "binary":
            axis.plot(
                [r["corrupted_labels"] for r in rows], [r["elbo_per_example"] for r in rows], "o-"
            )
            axis.set(
                xlabel="fraction of flipped labels",
                ylabel="ELBO / N",
                title=f"binary GP (N = {rows[0]['n_train']})",
            )
        elif kind == "one_vs_all":
            names = [r["labels"] for r in rows]
            positions = range(len(rows))
            axis.bar(
                [p - 0.2 for p in positions],
                [r["train_accuracy"] for r in rows],
                0.4,
                label="train",
            )
            axis.bar(
                [p + 0.2 for p in positions], [r["test_accuracy"] for r in rows], 0.4, label="test"
            )
            axis.set_xticks(
                list(positions),
                [
                    f"{n}\nELBO/N {r['mean_elbo_per_example']:.3f}"
                    for n, r in zip(names, rows, strict=True)
                ],
            )
            axis.set(ylabel="10-class accuracy", ylim=(0, 1.05), title="one-vs-all GP")
            axis.legend()
        elif kind == "laplace":
            plot_laplace(axis, axes[0][position + 1], rows)
    figure.tight_layout()
    atomic_savefig(figure, args.out, dpi=120)
    plt.close(figure)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
