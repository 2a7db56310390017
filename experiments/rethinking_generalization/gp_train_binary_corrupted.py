"""Binary GP classification with a fraction of flipped training labels: the evidence (ELBO/n)
against label corruption (the paper's §6 GP figure; the original used CIFAR-10 airplane vs
automobile, 5,000 + 5,000 training images).

A seeded `--corrupted_labels f` of the training labels get y ← 1 − y (f > 0.5 makes the labels
anti-correlated with the truth, so the informative range is 0 to 0.5). Trains
`swag.gp.DenseVariationalGP` (the original's gpytorch model, every training point inducing)
with Adam for `--iterations` full-batch steps and writes `bin_model_corrupted<f>.pth` (gpytorch
names) and `bin_model_corrupted<f>.json`: −ELBO/n per step, final ELBO/n, train accuracy against
the corrupted labels, test accuracy against the true ones.

    python experiments/rethinking_generalization/gp_train_binary_corrupted.py \\
        --data_dir runs/rethinking/data --dir runs/rethinking/binary --corrupted_labels 0.1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402

from experiments.rethinking_generalization import gp_common  # noqa: E402
from swag import label_noise  # noqa: E402
from swag.cli import ArgumentParser, record_invocation, run_main  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.seeding import derived_generator, derived_seed  # noqa: E402

# Pullover vs coat: two long-sleeved upper garments that raw-pixel kernels confuse, so, like
# airplane vs automobile on CIFAR-10, the clean task is learnable but far from trivial (T-shirt
# vs trouser is separable almost perfectly and leaves little room for evidence to move).
DEFAULT_CLASSES = {"CIFAR10": (0, 1), "FashionMNIST": (2, 4), "MNIST": (3, 5)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    gp_common.add_gp_arguments(parser)
    parser.add_argument(
        "--corrupted_labels",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of training labels flipped, 0 to 0.5",
    )
    parser.add_argument(
        "--classes",
        type=int,
        nargs=2,
        default=None,
        metavar=("NEG", "POS"),
        help="label 0 and label 1 classes (default: dataset's pair)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.corrupted_labels <= 1.0:
        parser.error("--corrupted_labels is a fraction in [0, 1] (0 to 0.5 is informative)")
    gp_common.check_counts(args)
    return args


def binary_split(images, labels, classes, count, rng):
    """Images of the two classes with labels 0/1; a random subset of `count` if given."""
    keep = np.flatnonzero(np.isin(labels, classes))
    if count is not None:
        if count > keep.size:
            raise UserError(f"only {keep.size} images of classes {classes}; pass at most that")
        keep = np.sort(rng.choice(keep, size=count, replace=False))
    return images[keep], (labels[keep] == classes[1]).astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    arrays, meta = gp_common.load_arrays(args.data_dir)
    classes = tuple(args.classes or DEFAULT_CLASSES.get(meta["dataset"], (0, 1)))
    for cls in classes:
        gp_common.check_class(cls, meta)
    if classes[0] == classes[1]:
        raise UserError("--classes needs two different classes")
    rng = np.random.default_rng(derived_seed(args.seed, 0))
    images, clean = binary_split(arrays["train_x"], arrays["train_y"], classes, args.n_train, rng)
    gp_common.check_memory(clean.shape[0], args)
    test_images, test_y = binary_split(
        arrays["test_x"], arrays["test_y"], classes, args.n_test, rng
    )
    noisy = label_noise.flip_binary_labels(
        clean, args.corrupted_labels, np.random.default_rng(derived_seed(args.seed, 1))
    )
    if args.corrupted_labels > 0.5:
        print(
            f"warning: --corrupted_labels {args.corrupted_labels} > 0.5 makes the labels "
            "anti-correlated with the truth",
            file=sys.stderr,
        )
    dtype = gp_common.DTYPES[args.dtype]
    x = gp_common.inputs(images, args.scale, dtype)
    test_x = gp_common.inputs(test_images, args.scale, dtype)
    stem = f"bin_model_corrupted{args.corrupted_labels:g}"
    record_invocation(args.dir, args, __file__, argv, name=f"command_{stem}")
    model, results, _, _ = gp_common.train_and_score(
        x, noisy, test_x, test_y, args, derived_generator(args.seed, 2)
    )
    results.update(
        corrupted_labels=args.corrupted_labels,
        classes=list(classes),
        flipped=int((noisy != clean).sum()),
        dataset=meta["dataset"],
    )
    gp_common.save(model, results, args.dir, stem)
    print(
        f"Train Accuracy: {results['train_accuracy']:.4f}  MLL: {results['elbo_per_example']:.4f}"
        f"  Test accuracy: {results['test_accuracy']:.4f}"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
