"""Model-wise double descent under SGD, SWAG and MultiSWAG (Wilson & Izmailov, 2020, Fig. 8).

A grid of widths k × label-noise fractions η: every cell trains `--members` networks of width
k on the training set with a fraction η of its labels moved to another class, and scores SGD,
SWAG and MultiSWAG (and the deep ensemble of the SGD members) by test error and NLL; see
`sweep.py`. Each finished cell is written atomically to `<out>/cells/`, so a killed sweep run
again with the same flags skips the finished cells. Writes `<out>/results.csv`,
`<out>/results.json` and `<out>/double_descent.png`.

The paper's setting (GPU):

    python experiments/double_descent/run.py --dataset CIFAR100 --data_path data \
        --model PreResNet18Width --widths 1 2 4 6 8 10 12 16 20 24 32 48 64 --noise 0 0.2 \
        --members 3 --epochs 200 --swag_start 160 --lr 0.05 --swag_lr 0.01 --wd 5e-4 \
        --swag_samples 20 --out runs/double_descent_cifar100
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from experiments.double_descent import plot  # noqa: E402
from experiments.double_descent.label_noise import corrupt_labels  # noqa: E402
from experiments.double_descent.sweep import (  # noqa: E402
    NOISE_STREAM,
    SUBSET_STREAM,
    TEST_SUBSET_STREAM,
    CellData,
    TrainConfig,
    run_cell,
)
from swag import cli, data, io, models  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.seeding import derived_generator, derived_seed  # noqa: E402
from swag.transforms import MNIST_PRESET, InputPreset, input_preset  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description="double descent: SGD vs SWAG vs MultiSWAG")
    parser.add_argument("--out", required=True, help="output folder (reused to resume)")
    parser.add_argument("--dataset", default="CIFAR100", help=", ".join(data.DATASETS))
    parser.add_argument("--data_path", required=True, help="datasets live in PATH/<dataset lower>")
    parser.add_argument("--download", action="store_true", help="let torchvision download")
    parser.add_argument("--model", default="PreResNet18Width", help="PreResNet18Width, CNN5, ...")
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2],
                        help="fractions of training labels moved to another class")  # fmt: skip
    parser.add_argument("--members", type=int, default=3, help="M: SGD/SWAG runs per cell")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--swag_start", type=float, default=160, help="collect after this epoch")
    parser.add_argument("--lr", type=float, default=0.05, help="initial SGD learning rate")
    parser.add_argument(
        "--swag_lr", type=float, default=0.01, help="learning rate while collecting"
    )
    parser.add_argument("--wd", type=float, default=5e-4, help="SGD weight decay")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--swag_samples", type=int, default=20, help="S: draws per SWAG posterior")
    parser.add_argument("--scale", type=float, default=0.5, help="covariance scale of SWAG draws")
    parser.add_argument("--max_num_models", type=int, default=20, help="rank K of SWAG")
    parser.add_argument("--train_subset", type=int, default=None, help="N random training images")
    parser.add_argument("--test_subset", type=int, default=None, help="random test images")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if found)")
    args = parser.parse_args(argv)
    validate(args)
    return args


def validate(args: argparse.Namespace) -> None:
    spec = models.get_model(args.model)
    if "width" not in inspect.signature(spec.factory).parameters:
        raise UserError(f"--model {args.model} has no width; pass PreResNet18Width or CNN5")
    if args.dataset not in data.DATASETS:
        raise UserError(f"unknown --dataset {args.dataset}; choose one of {data.DATASETS}")
    if min(args.widths) < 1 or len(set(args.widths)) != len(args.widths):
        raise UserError("--widths must be distinct positive integers, e.g. --widths 1 2 4 8")
    if not all(0.0 <= eta < 1.0 for eta in args.noise) or len(set(args.noise)) != len(args.noise):
        raise UserError("--noise takes distinct fractions in [0, 1), e.g. --noise 0 0.2")
    positive = ("members", "epochs", "swag_samples", "batch_size", "max_num_models")
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if not 0 < args.swag_start < args.epochs:
        raise UserError(f"--swag_start must lie strictly between 0 and --epochs ({args.epochs})")
    if min(args.lr, args.swag_lr) <= 0 or min(args.wd, args.momentum, args.scale) < 0:
        raise UserError("--lr and --swag_lr must be positive; --wd, --momentum, --scale ≥ 0")
    for name in ("train_subset", "test_subset"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be a positive number of images")


def _random_subset(images, labels, size: int | None, seed: int, stream: int):
    if size is None:
        return images, labels
    if size > labels.shape[0]:
        raise UserError(f"the split has {labels.shape[0]} images; pass a subset of at most that")
    chosen = torch.randperm(labels.shape[0], generator=derived_generator(seed, stream))[:size]
    return images[chosen], labels[chosen]


def load_data(args: argparse.Namespace) -> dict[float, CellData]:
    """The (sub)sampled splits with one training-label array per noise level."""
    train_images, train_labels = data.load_split(args.dataset, args.data_path, True, args.download)
    test_images, test_labels = data.load_split(args.dataset, args.data_path, False, args.download)
    num_classes = int(train_labels.max()) + 1
    train_images, train_labels = _random_subset(
        train_images, train_labels, args.train_subset, args.seed, SUBSET_STREAM
    )
    test_images, test_labels = _random_subset(
        test_images, test_labels, args.test_subset, args.seed, TEST_SUBSET_STREAM
    )
    preset = input_preset(models.get_model(args.model).preset)
    if len(preset.mean) != train_images.shape[1]:  # grey images: normalise as (Fashion-)MNIST
        grey = MNIST_PRESET
        preset = InputPreset(grey.mean, grey.std, preset.crop_padding, preset.hflip)
    cells = {}
    for eta in args.noise:
        rng = np.random.default_rng(derived_seed(args.seed, NOISE_STREAM))  # same for every η
        noisy = corrupt_labels(train_labels.numpy(), eta, num_classes, rng)
        cells[eta] = CellData(train_images, torch.from_numpy(noisy), test_images, test_labels,
                              num_classes, preset)  # fmt: skip
    return cells


def sweep_identity(args: argparse.Namespace) -> tuple[dict, TrainConfig]:
    """(identity, config): what must match for a stored cell to be reused, and the settings."""
    config = TrainConfig(args.model, args.epochs, args.swag_start, args.lr, args.swag_lr, args.wd,
                         args.momentum, args.swag_samples, args.scale, args.max_num_models,
                         args.members, args.batch_size, args.seed)  # fmt: skip
    data_keys = ("dataset", "train_subset", "test_subset")
    return {**config.fingerprint(), **{key: getattr(args, key) for key in data_keys}}, config


def load_cell(path: Path, identity: dict) -> dict | None:
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if stored.get("identity") != identity:
        raise UserError(
            f"{path} was made with other settings; pass a new --out or the flags of that sweep"
        )
    return stored


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.resolve_device(args.device)
    out = Path(args.out)
    identity, config = sweep_identity(args)
    cells = load_data(args)
    spec = models.get_model(args.model)
    cli.record_invocation(out, args, __file__, argv)
    io.remove_partial_files(out / "cells")
    rows = []
    grid = [(eta, width) for eta in args.noise for width in sorted(args.widths)]
    with tqdm(grid, desc="cells", file=sys.stderr, disable=None) as bar:
        for eta, width in bar:
            bar.set_postfix(noise=eta, width=width)
            path = out / "cells" / f"noise{eta:g}_width{width}.json"
            cell = load_cell(path, identity)
            if cell is None:
                cell = {"identity": identity, "noise": eta,
                        **run_cell(spec, width, cells[eta], config, device)}  # fmt: skip
                io.atomic_write_text(path, json.dumps(cell, indent=1) + "\n")
            rows.append({key: value for key, value in cell.items() if key != "identity"})
    table = plot.write_table(rows, out)
    print(table)
    plot.plot_sweep(rows, out / "double_descent.png", title=f"{args.model} on {args.dataset}")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
