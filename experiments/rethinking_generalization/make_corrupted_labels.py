"""Write label-corruption arrays for `run_swag.py --label_arr` (the rethinking-generalisation
networks): for each count N, `<dataset lower>_label_corruption_<N>.npy`, int64 [n_train], the
true training labels with N uniformly chosen positions relabelled uniformly at random
(`swag.label_noise.corrupt_labels`; about (1 − 1/C)·N labels end up wrong). Files are
independent draws: the file for count N uses stream N of `--seed`, whatever else `--counts`
lists.

    python experiments/rethinking_generalization/make_corrupted_labels.py \\
        --dataset FashionMNIST --data_path data --out runs/label_corruption
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402

from swag import data, label_noise  # noqa: E402
from swag.cli import ArgumentParser, non_negative_int, record_invocation, run_main  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.io import atomic_save_npy  # noqa: E402
from swag.seeding import derived_seed  # noqa: E402

COUNTS = [5000, 10000, 20000, 30000, 40000, 50000]  # of CIFAR-10's 50,000 training labels


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="CIFAR10", choices=data.DATASETS)
    parser.add_argument("--data_path", required=True, metavar="PATH", help="datasets root")
    parser.add_argument("--download", action="store_true", help="let torchvision download it")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--counts", type=non_negative_int, nargs="+", default=COUNTS, metavar="N")
    parser.add_argument("--seed", type=non_negative_int, default=1, metavar="S")
    args = parser.parse_args(argv)
    if min(args.counts) < 0:
        parser.error("--counts must be non-negative")
    return args


def output_name(dataset: str, count: int) -> str:
    return f"{dataset.lower()}_label_corruption_{count}.npy"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _, targets = data.load_split(args.dataset, args.data_path, train=True, download=args.download)
    labels = targets.numpy().astype(np.int64)
    if max(args.counts) > labels.shape[0]:
        raise UserError(
            f"--counts {max(args.counts)} exceeds the {labels.shape[0]} training labels of "
            f"{args.dataset}; pass counts of at most {labels.shape[0]}"
        )
    num_classes = int(labels.max()) + 1
    record_invocation(args.out, args, __file__, argv, name="make_corrupted_labels")
    for count in args.counts:
        rng = np.random.default_rng(derived_seed(args.seed, count))
        corrupted = label_noise.corrupt_labels(labels, count, num_classes, rng)
        atomic_save_npy(args.out / output_name(args.dataset, count), corrupted)
        wrong = float(np.mean(corrupted != labels))
        print(f"{output_name(args.dataset, count)}: {wrong:.4f} of labels differ from the truth")
    return 0


if __name__ == "__main__":
    run_main(main)
