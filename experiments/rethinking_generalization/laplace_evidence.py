"""The networks' half of the rethinking-generalisation study (§6, Fig. 7): Laplace evidence of a
network trained on increasingly corrupted labels. Resumable: finished cells are skipped.

For each fraction f of `--fractions`, in-process and in this order:

1. `make_corrupted_labels.py`: count round(f·N) of the N training labels relabelled uniformly
   (about 1 − 1/C of them end up wrong);
2. `run_swag.py --label_arr` trains `--model` on them (SGD, the original schedule, `--use_test`);
3. `fit_laplace.py` fits a Laplace posterior per `--hessians` at the final weights, with the
   prior precision optimised on the evidence (`--optimize_prior`).

Writes to --out: `laplace_evidence.json` (list of {fraction, count, wrong_fraction, hessian,
log_marglik_per_example, log_marglik, train_acc (corrupted labels, unaugmented), test_acc (true
test labels), prior_precision, ...}, one per fraction and hessian), the figure
(`plot_rethinking.py --laplace_json`), and one folder per cell (`labels/`, `train_<count>/`,
`laplace_<count>_<hessian>/`). `--train_subset N` (MNIST-format datasets) first writes a seeded
random subset of N training and `--test_subset` test images in the idx format under
`<out>/data`, so that every step runs on it.

Fitting random labels needs training without augmentation (random crops and flips change the
image a label belongs to), hence the `NoAug` models: `LeNet5NoAug` (the default) and
`PreResNet20NoAug`.

    python experiments/rethinking_generalization/laplace_evidence.py --model LeNet5NoAug \\
        --dataset FashionMNIST --data_path data --train_subset 2000 --test_subset 1000 \\
        --epochs 30 --batch_size 32 --lr_init 0.05 --wd 5e-4 --out runs/rethinking/laplace_lenet
    python experiments/rethinking_generalization/laplace_evidence.py --model PreResNet20NoAug \\
        --dataset CIFAR10 --data_path ~/datasets --epochs 300 --batch_size 128 --lr_init 0.1 \\
        --wd 3e-4 --hessians kron --device cuda --out runs/rethinking/laplace_preresnet20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402

from experiments.rethinking_generalization import make_corrupted_labels, plot_rethinking  # noqa: E402
from experiments.train import fit_laplace, run_swag  # noqa: E402
from swag import cli, data, idx_format, io, models, speed  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.posteriors.curvature import SUBSETS  # noqa: E402
from swag.posteriors.laplace import HESSIANS, PRIOR_MODES  # noqa: E402
from swag.seeding import derived_seed  # noqa: E402

FRACTIONS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # of the (subset) training labels relabelled
SUBSET_STREAM = {True: 10**6, False: 10**6 + 1}  # seed streams of the training / test subsets
# settings every cell of one --out must share (fractions and hessians may grow on resume)
SHARED = ("dataset", "model", "train_subset", "test_subset", "epochs", "lr_init", "wd",
          "prior_var", "batch_size", "seed", "optimize_prior", "laplace_subset")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", default="FashionMNIST", help="one of " + ", ".join(data.DATASETS)
    )
    parser.add_argument("--data_path", required=True, metavar="PATH", help="datasets root")
    parser.add_argument("--download", action="store_true", help="let torchvision download it")
    parser.add_argument(
        "--model", default="LeNet5NoAug", help="registry name (default: LeNet5NoAug)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--fractions", type=float, nargs="+", default=FRACTIONS, metavar="F")
    parser.add_argument("--train_subset", type=cli.positive_int, default=None, metavar="N",
                        help="train on N random training images (MNIST, FashionMNIST)")  # fmt: skip
    parser.add_argument("--test_subset", type=cli.positive_int, default=None, metavar="N",
                        help="with --train_subset: N random test images (default all)")  # fmt: skip
    parser.add_argument("--epochs", type=cli.positive_int, default=30)
    parser.add_argument("--lr_init", type=cli.positive_float, default=0.05)
    parser.add_argument("--wd", type=cli.non_negative_float, default=5e-4, help="weight decay")
    parser.add_argument("--prior_var", type=cli.positive_float, default=None,
                        help="Gaussian prior variance in training (instead of --wd)")  # fmt: skip
    parser.add_argument("--batch_size", type=cli.positive_int, default=32)
    parser.add_argument("--hessians", nargs="+", default=list(HESSIANS), help="diag and/or kron")
    parser.add_argument("--optimize_prior", default="layerwise", help="scalar or layerwise")
    parser.add_argument("--laplace_subset", default="all", help="all or last_layer weights")
    parser.add_argument("--figure", type=Path, default=None,
                        help="PNG to write (default: <out>/laplace_evidence.png)")  # fmt: skip
    parser.add_argument("--binary_dir", type=Path, default=None, help="GP panel beside (optional)")
    parser.add_argument("--threads", type=cli.positive_int, default=None, help="torch CPU threads")
    cli.add_runtime_arguments(parser)
    args = parser.parse_args(argv)
    validate(args)
    return args


def validate(args: argparse.Namespace) -> None:
    """Flag checks that need no data (nothing is written before they pass)."""
    if args.dataset not in data.DATASETS:
        raise UserError(
            f"unknown --dataset {args.dataset!r}; choose one of {', '.join(data.DATASETS)}"
        )
    models.get_model(args.model)
    if not all(0.0 <= f <= 1.0 for f in args.fractions):
        raise UserError(f"--fractions must lie in [0, 1]; got {args.fractions}")
    if unknown := sorted(set(args.hessians) - set(HESSIANS)):
        raise UserError(f"unknown --hessians {' '.join(unknown)}; choose diag and/or kron")
    if args.optimize_prior not in PRIOR_MODES[1:]:
        raise UserError(
            f"unknown --optimize_prior {args.optimize_prior!r}; choose scalar or layerwise"
        )
    if args.laplace_subset not in SUBSETS:
        raise UserError(
            f"unknown --laplace_subset {args.laplace_subset!r}; choose all or last_layer"
        )
    if args.train_subset and args.dataset not in data.MNIST_FORMAT:
        raise UserError(f"--train_subset works with MNIST and FashionMNIST, not {args.dataset}; "
                        "drop it to train on the whole dataset")  # fmt: skip
    if args.test_subset and not args.train_subset:
        raise UserError("--test_subset needs --train_subset; pass both or neither")


def check_settings(out: Path, args: argparse.Namespace) -> dict:
    """The shared settings; a UserError if <out>/evidence_settings.json records other ones."""
    settings = {key: getattr(args, key) for key in SHARED}
    path = out / "evidence_settings.json"
    if path.is_file() and (old := json.loads(path.read_text())) != settings:
        changed = ", ".join(f"--{key}" for key in SHARED if old.get(key) != settings[key])
        raise UserError(f"{out} holds a study made with other {changed}; pass the same flags to "
                        "resume it or a new --out")  # fmt: skip
    return settings


def choose_subsets(args: argparse.Namespace) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """A seeded random subset of each split (train split?: (images [n, H, W], labels [n]))."""
    subsets = {}
    for train, size in ((True, args.train_subset), (False, args.test_subset)):
        images, labels = data.load_split(args.dataset, args.data_path, train, args.download)
        size = size or labels.shape[0]
        if size > labels.shape[0]:
            split = "training" if train else "test"
            raise UserError(f"{args.dataset} has {labels.shape[0]} {split} images, fewer than "
                            f"the subset of {size}; pass a smaller subset")  # fmt: skip
        rng = np.random.default_rng(derived_seed(args.seed, SUBSET_STREAM[train]))
        chosen = np.sort(rng.choice(labels.shape[0], size, replace=False))
        subsets[train] = images[chosen, 0].numpy(), labels[chosen].numpy()
    return subsets


def write_subsets(subsets: dict, dataset: str, root: Path) -> None:
    """The subsets as idx files in torchvision's layout under root (`--data_path root`)."""
    raw = data.dataset_root(dataset, root) / dataset / "raw"
    for train, (images, labels) in subsets.items():
        image_file, label_file = idx_format.FILES[train]
        idx_format.write_idx(raw / image_file, images)
        idx_format.write_idx(raw / label_file, labels)


def train_cell(args, data_path: Path, label_file: Path, folder: Path) -> Path:
    """run_swag.py on one label array unless its final checkpoint exists; returns that file."""
    checkpoint = folder / f"checkpoint-{args.epochs}.pt"
    if checkpoint.is_file():
        return checkpoint
    argv = ["--dir", str(folder), "--overwrite", "--dataset", args.dataset, "--data_path",
            str(data_path), "--use_test", "--label_arr", str(label_file), "--model", args.model,
            "--epochs", str(args.epochs), "--lr_init", str(args.lr_init), "--wd", str(args.wd),
            "--batch_size", str(args.batch_size), "--save_freq", str(args.epochs), "--eval_freq",
            str(args.epochs), "--seed", str(args.seed)]  # fmt: skip
    argv += ["--prior_var", str(args.prior_var)] if args.prior_var else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    run_swag.main(argv + (["--device", args.device] if args.device else []))
    return checkpoint


def laplace_cell(
    args, data_path: Path, label_file: Path, checkpoint: Path, hessian: str, folder: Path
) -> dict:
    """fit_laplace.py at one checkpoint unless its evidence JSON exists; returns the evidence."""
    result = folder / f"laplace-{args.epochs}.json"
    if not result.is_file():
        argv = ["--checkpoint", str(checkpoint), "--model", args.model, "--dataset", args.dataset,
                "--data_path", str(data_path), "--use_test", "--label_arr", str(label_file),
                "--batch_size", str(args.batch_size), "--hessian", hessian,
                "--subset", args.laplace_subset, "--optimize_prior", args.optimize_prior,
                "--out", str(folder), "--seed", str(args.seed)]  # fmt: skip
        fit_laplace.main(argv + (["--device", args.device] if args.device else []))
    return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    speed.set_threads(args.threads)
    settings = check_settings(args.out, args)
    subsets = choose_subsets(args) if args.train_subset else None  # checked before any write
    out = io.output_directory(args.out, "--out")
    io.atomic_write_text(out / "evidence_settings.json", json.dumps(settings, indent=2) + "\n")
    data_path = Path(args.data_path)
    if subsets:
        data_path = out / "data"
        write_subsets(subsets, args.dataset, data_path)
    true_labels = data.load_split(args.dataset, data_path, True, args.download)[1].numpy()
    counts = [round(f * true_labels.shape[0]) for f in args.fractions]
    labels_dir = out / "labels"
    label_files = [labels_dir / make_corrupted_labels.output_name(args.dataset, c) for c in counts]
    missing = [c for c, path in zip(counts, label_files, strict=True) if not path.is_file()]
    if missing:
        make_corrupted_labels.main(["--dataset", args.dataset, "--data_path", str(data_path),
                                    "--out", str(labels_dir), "--seed", str(args.seed),
                                    "--counts", *map(str, sorted(set(missing)))])  # fmt: skip
    cli.record_invocation(out, args, __file__, argv, name="laplace_evidence")
    rows = []
    for fraction, count, label_file in zip(args.fractions, counts, label_files, strict=True):
        print(f"fraction {fraction:g} ({count} of {true_labels.shape[0]} labels relabelled)")
        checkpoint = train_cell(args, data_path, label_file, out / f"train_{count}")
        last = json.loads(io.read_lines(out / f"train_{count}" / "metrics.jsonl")[-1])
        wrong = float(np.mean(io.load_npy(label_file) != true_labels))
        for hessian in args.hessians:
            evidence = laplace_cell(args, data_path, label_file, checkpoint, hessian,
                                    out / f"laplace_{count}_{hessian}")  # fmt: skip
            rows.append({
                "fraction": fraction, "count": count, "wrong_fraction": wrong,
                "hessian": hessian, "model": args.model, "dataset": args.dataset,
                "n_train": int(true_labels.shape[0]),
                "log_marglik_per_example": evidence["log_marginal_likelihood_per_example"],
                "log_marglik": evidence["log_marginal_likelihood"],
                "log_likelihood": evidence["log_likelihood"],
                "train_acc": evidence["train_accuracy"], "test_acc": last["te_acc"] / 100,
                "prior_precision": evidence["prior_precision"],
                "optimize_prior": args.optimize_prior,
            })  # fmt: skip
    result = out / "laplace_evidence.json"
    io.atomic_write_text(result, json.dumps(rows, indent=2) + "\n")
    figure = args.figure or out / "laplace_evidence.png"
    extra = ["--binary_dir", str(args.binary_dir)] if args.binary_dir else []
    plot_rethinking.main(["--laplace_json", str(result), "--out", str(figure), *extra])
    return 0


if __name__ == "__main__":
    cli.run_main(main)
