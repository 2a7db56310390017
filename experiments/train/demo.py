"""The `make demo` job: LeNet5 on Fashion-MNIST, SGD then SWAG, then a SWAG model average.

Trains with `run_swag.py` (the README's LeNet5 recipe at fewer epochs), then evaluates the
final SGD weights, the SWA mean and a 20-sample SWAG Bayesian model average (scale 0.5) with
the same BMA code as `eval_multiswag.py`, prints accuracy / NLL / ECE / Brier, and writes
`<dir>/reliability.png` and `<dir>/demo_results.json`.

    python experiments/train/demo.py --data_path data --dir runs/demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from experiments.train import run_swag  # noqa: E402
from swag import bma, cli, data, metrics, models, plots, training  # noqa: E402
from swag.io import atomic_write_text  # noqa: E402
from swag.posteriors import SWA, SWAG, Checkpoint  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default="data")
    parser.add_argument("--dataset", default="FashionMNIST")
    parser.add_argument("--dir", default="runs/demo")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--swag_start", type=float, default=10)
    parser.add_argument("--swag_samples", type=int, default=20)
    parser.add_argument("--scale", type=float, default=0.5, help="SWAG covariance scale")
    cli.add_runtime_arguments(parser)
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> None:
    run_swag.main([
        f"--data_path={args.data_path}", f"--dataset={args.dataset}", "--model=LeNet5",
        f"--epochs={args.epochs}", f"--save_freq={args.epochs}", "--lr_init=0.05", "--swag",
        f"--swag_start={args.swag_start}", "--swag_lr=0.01", "--cov_mat", "--use_test",
        "--wd=0", "--prior_var=0.1", f"--seed={args.seed}", f"--dir={args.dir}",
        f"--eval_freq={args.epochs}", *([f"--device={args.device}"] if args.device else []),
    ])  # fmt: skip


def evaluate(args: argparse.Namespace, device: torch.device) -> dict[str, tuple]:
    """Predictions of SGD, SWA and SWAG on the test set: name -> (probs [N, C], targets [N])."""
    spec = models.get_model("LeNet5")
    loaders, num_classes = data.loaders(
        args.dataset, args.data_path, bma.SCORING_BATCH_SIZE, 0, spec.preset,
        use_validation=False, device=device,
    )  # fmt: skip
    out = Path(args.dir)
    sgd = spec.build(num_classes).to(device)
    state = training.load_checkpoint(out / f"checkpoint-{args.epochs}.pt", map_location=device)
    training.load_model_state(sgd, state["state_dict"], "the final checkpoint")
    swag_model = SWAG(spec.build(num_classes).to(device))
    state = training.load_checkpoint(out / f"swag-{args.epochs}.pt", map_location=device)
    training.load_model_state(swag_model, state["state_dict"], "the final SWAG checkpoint")
    swag_model.scale = args.scale
    methods = {
        "SGD": (Checkpoint(sgd), 1),
        "SWA": (SWA(swag_model), 1),
        "SWAG": (swag_model, args.swag_samples),
    }
    predictions = {}
    for name, (posterior, samples) in methods.items():
        result = bma.bayesian_model_average(
            [posterior], {"test": loaders["test"]}, samples, device,
            bn_loader=loaders["train"], seed=args.seed,
        )  # fmt: skip
        predictions[name] = (result.member_probs["test"][0], result.targets["test"])
    return predictions


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.resolve_device(args.device)
    train(args)
    predictions = evaluate(args, device)
    rows = []
    for name, (probs, targets) in predictions.items():
        rows.append({
            "method": name, "accuracy": metrics.accuracy(probs, targets),
            "nll": metrics.nll(probs, targets), "ece": metrics.ece(probs, targets),
            "brier": metrics.brier(probs, targets),
        })  # fmt: skip
    print(tabulate(rows, headers="keys", floatfmt=".4f"))
    out = Path(args.dir)
    plots.reliability_diagram(predictions, out / "reliability.png", title="LeNet5, Fashion-MNIST")
    atomic_write_text(out / "demo_results.json", json.dumps(rows, indent=2) + "\n")
    print(f"reliability diagram: {out / 'reliability.png'}")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
