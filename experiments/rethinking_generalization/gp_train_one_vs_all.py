"""One-vs-all GP classifiers on true or randomly permuted labels, and their 10-class vote: does
the GP fit random labels, and how does its evidence compare with the true labels'?

Model c is `swag.gp.DenseVariationalGP` trained on target 1[y ≠ c] (class c is 0, as in the
original). All ten share one training set, the first `--n_train` images, so the 10-class
prediction argmax_c p(y = c) = argmin_c p(not c) has a training accuracy; the original trained
model c on 5,000 images of c plus the first 10,000 others. Labels are the permuted
`shuffled_train_y.npy` unless `--true_labels`. `--cls all` trains the ten models then aggregates;
`--cls c` trains one (as the original); `--aggregate` only aggregates. Writes
`<prefix>model<c>.pth/.json`, `<prefix>conf<c>.npz` (p(not c) on the training set and the test
set) and `<prefix>summary.json`, prefix `true_` or `shuffled_`.

    python experiments/rethinking_generalization/gp_train_one_vs_all.py --cls all \\
        --data_dir runs/rethinking/data --dir runs/rethinking/one_vs_all --n_train 1000 \\
        --true_labels
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402

from experiments.rethinking_generalization import gp_common  # noqa: E402
from swag.cli import ArgumentParser, record_invocation, run_main  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.io import atomic_savez, atomic_write_text  # noqa: E402
from swag.seeding import derived_generator  # noqa: E402

ORIGINAL_N_TRAIN = 15000  # 5,000 images of class c + 10,000 others in the original


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    gp_common.add_gp_arguments(parser)
    parser.add_argument("--cls", default="all", help="class index, or all (train ten, aggregate)")
    parser.add_argument("--true_labels", action="store_true", help="train on the true labels")
    parser.add_argument("--aggregate", action="store_true", help="only aggregate saved models")
    args = parser.parse_args(argv)
    if args.cls != "all" and not args.cls.lstrip("-").isdigit():
        parser.error("--cls takes a class index or all")
    gp_common.check_counts(args)
    return args


def aggregate(directory: Path, prefix: str, labels, test_labels, num_classes: int) -> dict:
    """10-class accuracies of argmin_c p(not c) and the models' evidence, from saved files."""
    paths = [directory / f"{prefix}conf{c}.npz" for c in range(num_classes)]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"missing {', '.join(missing)}; train those classes (--cls) first")
    confs = [np.load(path) for path in paths]
    train_conf = np.stack([conf["train"] for conf in confs], 1)
    test_conf = np.stack([conf["test"] for conf in confs], 1)
    if train_conf.shape[0] != labels.shape[0] or test_conf.shape[0] != test_labels.shape[0]:
        raise UserError(
            f"the saved {prefix}conf*.npz files were made with other --n_train or "
            "--n_test; rerun with the same sizes or retrain"
        )
    runs = [
        json.loads((directory / f"{prefix}model{c}.json").read_text()) for c in range(num_classes)
    ]
    summary = {
        "labels": prefix.rstrip("_"),
        "train_accuracy": float((train_conf.argmin(1) == labels).mean()),
        "test_accuracy": float((test_conf.argmin(1) == test_labels).mean()),
        "elbo_per_example": [run["elbo_per_example"] for run in runs],
        "binary_train_accuracy": [run["train_accuracy"] for run in runs],
        "binary_test_accuracy": [run["test_accuracy"] for run in runs],
        "train_seconds": sum(run["train_seconds"] for run in runs),
    }
    summary["mean_elbo_per_example"] = float(np.mean(summary["elbo_per_example"]))
    atomic_write_text(directory / f"{prefix}summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    arrays, meta = gp_common.load_arrays(args.data_dir)
    classes = range(meta["num_classes"]) if args.cls == "all" else [int(args.cls)]
    for cls in classes:
        gp_common.check_class(cls, meta)
    labels = arrays["train_y" if args.true_labels else "shuffled_train_y"]
    args.n_train = args.n_train or min(ORIGINAL_N_TRAIN, labels.shape[0])
    gp_common.check_memory(args.n_train, args)
    if args.n_train > labels.shape[0] or (args.n_test or 0) > arrays["test_y"].shape[0]:
        raise UserError(
            f"{meta['dataset']} has {labels.shape[0]} training and "
            f"{arrays['test_y'].shape[0]} test images; lower --n_train/--n_test"
        )
    labels = labels[: args.n_train]
    test_count = args.n_test or arrays["test_y"].shape[0]
    test_labels = arrays["test_y"][:test_count]
    prefix = "true_" if args.true_labels else "shuffled_"
    if not args.aggregate:
        dtype = gp_common.DTYPES[args.dtype]
        x = gp_common.inputs(arrays["train_x"][: args.n_train], args.scale, dtype)
        test_x = gp_common.inputs(arrays["test_x"][:test_count], args.scale, dtype)
        record_invocation(args.dir, args, __file__, argv, name=f"command_{prefix}{args.cls}")
        for cls in classes:
            targets = (labels != cls).astype(np.int64)
            model, results, train_probs, test_probs = gp_common.train_and_score(
                x,
                targets,
                test_x,
                (test_labels != cls).astype(np.int64),
                args,
                derived_generator(args.seed, cls),
            )
            results.update(cls=cls, labels=prefix.rstrip("_"), dataset=meta["dataset"])
            gp_common.save(model, results, args.dir, f"{prefix}model{cls}")
            atomic_savez(
                args.dir / f"{prefix}conf{cls}.npz",
                train=train_probs.numpy(),
                test=test_probs.numpy(),
            )
            print(
                f"class {cls}: ELBO/n {results['elbo_per_example']:.4f}, train accuracy "
                f"{results['train_accuracy']:.4f}, test accuracy {results['test_accuracy']:.4f}"
            )
    if args.aggregate or args.cls == "all":
        summary = aggregate(args.dir, prefix, labels, test_labels, meta["num_classes"])
        print(
            f"{prefix.rstrip('_')} labels, 10-class: train accuracy "
            f"{summary['train_accuracy']:.4f}, test accuracy {summary['test_accuracy']:.4f}, "
            f"mean ELBO/n {summary['mean_elbo_per_example']:.4f}"
        )
    return 0


if __name__ == "__main__":
    run_main(main)
