"""Write the arrays the GP scripts read: train_x.npy / test_x.npy (uint8 images, [N, H, W, 3]
for CIFAR, [N, H, W] for grey datasets), train_y.npy / test_y.npy (int64 labels),
shuffled_train_y.npy (a seeded permutation of train_y: the "random labels", class counts kept)
and meta.json (dataset, class names). The original wrote the same five arrays for CIFAR-10 into
the working directory with an unseeded shuffle.

    python experiments/rethinking_generalization/gp_prepare_data.py \\
        --dataset FashionMNIST --data_path data --dir runs/rethinking/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402

from swag import data, label_noise  # noqa: E402
from swag.cli import ArgumentParser, non_negative_int, record_invocation, run_main  # noqa: E402
from swag.io import atomic_save_npy, atomic_write_text  # noqa: E402
from swag.seeding import derived_seed  # noqa: E402

CLASS_NAMES = {
    "CIFAR10": [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ],
    "FashionMNIST": [
        "T-shirt/top",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle boot",
    ],
    "MNIST": [str(digit) for digit in range(10)],
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="CIFAR10", choices=sorted(CLASS_NAMES))
    parser.add_argument("--data_path", required=True, metavar="PATH", help="datasets root")
    parser.add_argument("--download", action="store_true", help="let torchvision download it")
    parser.add_argument("--dir", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--seed", type=non_negative_int, default=1, help="seed of the label permutation"
    )
    return parser.parse_args(argv)


def channels_last(images) -> np.ndarray:
    """[N, C, H, W] tensor → [N, H, W, C] uint8 array, or [N, H, W] when C = 1."""
    array = images.numpy().transpose(0, 2, 3, 1)
    return np.ascontiguousarray(array[..., 0] if array.shape[-1] == 1 else array)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train_x, train_y = data.load_split(args.dataset, args.data_path, True, args.download)
    test_x, test_y = data.load_split(args.dataset, args.data_path, False, args.download)
    train_y = train_y.numpy().astype(np.int64)
    rng = np.random.default_rng(derived_seed(args.seed, 0))
    arrays = {
        "train_x": channels_last(train_x),
        "train_y": train_y,
        "shuffled_train_y": label_noise.permute_labels(train_y, rng),
        "test_x": channels_last(test_x),
        "test_y": test_y.numpy().astype(np.int64),
    }
    record_invocation(args.dir, args, __file__, argv, name="gp_prepare_data")
    for name, array in arrays.items():
        atomic_save_npy(args.dir / f"{name}.npy", array)
    meta = {
        "dataset": args.dataset,
        "num_classes": len(CLASS_NAMES[args.dataset]),
        "class_names": CLASS_NAMES[args.dataset],
        "seed": args.seed,
    }
    atomic_write_text(args.dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    changed = float(np.mean(arrays["shuffled_train_y"] != train_y))
    print(
        f"wrote {len(train_y)} training and {len(arrays['test_y'])} test images to {args.dir}; "
        f"{changed:.3f} of the shuffled labels differ from the truth"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
