"""Test NLL and accuracy of SGD, SWA and SWAG against the prior std α (paper §5, Fig. 5).

For each α of --alphas, one cell `<dir>/alpha_<α>/` is trained by run_swag.py's `main` with
`--wd 0 --prior_var α²` (the Gaussian prior replaces weight decay) and SWAG collection after
--swag_start, then SWAG is scored by eval_multiswag.py's `main` (--swag_samples draws). SGD is
the final SGD iterate and SWA the SWA mean, both read from the cell's metrics.jsonl. A cell
that finished is skipped, one that stopped is resumed from its last checkpoint-<e>.pt, so the
sweep can be interrupted and rerun with the same command. Writes <dir>/sweep.json and
<dir>/sweep.png. --train_subset / --test_subset (MNIST-format datasets) train on the first
images of each split, written as idx files under <dir>/data, for small CPU runs.

    python experiments/priors/prior_sweep.py --data_path data --dataset FashionMNIST \
        --model LeNet5 --alphas 0.01 0.03 0.1 0.3 1 3 10 --epochs 20 --swag_start 11 \
        --lr_init 0.05 --swag_lr 0.01 --dir runs/priors/sweep
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

from experiments.train import eval_multiswag, run_swag  # noqa: E402
from swag import cli, data, idx_format, models  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.io import atomic_savefig, atomic_write_text  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="output directory (one folder per α)")
    cli.add_data_arguments(parser)
    parser.add_argument("--model", required=True, help="LeNet5, PreResNet20, VGG16, ...")
    parser.add_argument("--alphas", type=float, nargs="+", required=True, help="prior stds α")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr_init", type=float, default=0.05)
    parser.add_argument("--swag_start", type=float, default=11)
    parser.add_argument("--swag_lr", type=float, default=0.01)
    parser.add_argument("--swag_samples", type=int, default=20, help="SWAG draws per cell")
    parser.add_argument("--train_subset", type=int, default=None, help="first N training images")
    parser.add_argument("--test_subset", type=int, default=None, help="first M test images")
    cli.add_runtime_arguments(parser)
    args = parser.parse_args(argv)
    if min(args.alphas) <= 0:
        raise UserError("every --alphas value must be positive (they are prior stds)")
    if (args.train_subset or args.test_subset) and args.dataset not in data.MNIST_FORMAT:
        raise UserError("--train_subset/--test_subset work with MNIST and FashionMNIST only")
    models.get_model(args.model)
    return args


def write_subset(args: argparse.Namespace) -> str:
    """Idx files of the first images of each split under <dir>/data; returns that data path."""
    root = Path(args.dir) / "data"
    for train, count in ((True, args.train_subset), (False, args.test_subset)):
        images, labels = data.load_split(args.dataset, args.data_path, train)
        count = count or len(labels)
        raw = root / args.dataset.lower() / args.dataset / "raw"
        for name, array in zip(idx_format.FILES[train], (images[:count, 0], labels[:count]),
                               strict=True):  # fmt: skip
            idx_format.write_idx(raw / name, array.to(dtype=images.dtype).numpy())
    return str(root)


def run_cell(args: argparse.Namespace, alpha: float, data_path: str) -> dict:
    """Train (or resume) and evaluate one α; returns its test metrics."""
    cell = Path(args.dir) / f"alpha_{alpha:g}"
    final = cell / f"swag-{args.epochs}.pt"
    device = ["--device", args.device] if args.device else []
    common = ["--dataset", args.dataset, "--data_path", data_path, "--model", args.model,
              "--use_test", "--batch_size", str(args.batch_size), "--seed", str(args.seed),
              "--loader", args.loader, *device]  # fmt: skip
    if not final.is_file():
        argv = [*common, "--dir", str(cell), "--epochs", str(args.epochs), "--lr_init",
                str(args.lr_init), "--wd", "0", "--prior_var", str(alpha**2), "--swag",
                "--cov_mat", "--swag_start", str(args.swag_start), "--swag_lr", str(args.swag_lr),
                "--save_freq", "1", "--eval_freq", str(args.epochs)]  # fmt: skip
        done = sorted(cell.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        if done and int(done[-1].stem.split("-")[1]) > 0:
            argv += ["--resume", str(done[-1])]
        run_swag.main(argv)
    evaluation = cell / "eval"
    if not (evaluation / "multiswag.json").is_file():
        eval_multiswag.main([*common, "--savedir", str(evaluation), "--swag_ckpts", str(final),
                             "--method", "multiswag",
                             "--swag_samples", str(args.swag_samples)])  # fmt: skip
    rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    swag = json.loads((evaluation / "multiswag.json").read_text())["curves"]["clean"][-1]
    return {"alpha": alpha, "sgd_nll": last["te_loss"], "sgd_acc": last["te_acc"] / 100,
            "swa_nll": last["swa_te_loss"], "swa_acc": last["swa_te_acc"] / 100,
            "swag_nll": swag["nll"], "swag_acc": swag["accuracy"]}  # fmt: skip


def plot(results: list[dict], title: str, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2), dpi=110, layout="constrained")
    alphas = [row["alpha"] for row in results]
    for index, (metric, label) in enumerate([("nll", "test NLL"), ("acc", "test accuracy")]):
        axes = figure.add_subplot(1, 2, index + 1)
        for method, colour in [("sgd", "tab:blue"), ("swa", "tab:orange"), ("swag", "tab:green")]:
            values = [row[f"{method}_{metric}"] for row in results]
            axes.plot(alphas, values, "o-", color=colour, label=method.upper())
        axes.set_xscale("log")
        axes.set_xlabel("prior std α")
        axes.set_ylabel(label)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    atomic_savefig(figure, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    cli.record_invocation(out, args, __file__, argv)
    data_path = write_subset(args) if args.train_subset or args.test_subset else args.data_path
    results = [run_cell(args, alpha, data_path) for alpha in sorted(args.alphas)]
    payload = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs,
               "train_subset": args.train_subset, "results": results}  # fmt: skip
    atomic_write_text(out / "sweep.json", json.dumps(payload, indent=2) + "\n")
    plot(results, f"{args.model} on {args.dataset}, SWAG with prior N(0, α²I)", out / "sweep.png")
    for row in results:
        print("  ".join(f"{key} {value:.4g}" for key, value in row.items()))
    return 0


if __name__ == "__main__":
    cli.run_main(main)
