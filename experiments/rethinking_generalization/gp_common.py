"""What the GP drivers share: reading the arrays `gp_prepare_data.py` wrote, flags, the
memory check, training a `swag.gp.DenseVariationalGP` and writing its results."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from swag import gp
from swag.cli import non_negative_int, positive_float, positive_int, resolve_device
from swag.errors import UserError
from swag.io import atomic_torch_save, atomic_write_text

ARRAYS = ("train_x", "train_y", "shuffled_train_y", "test_x", "test_y")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def add_gp_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data_dir", type=Path, required=True, help="gp_prepare_data.py --dir")
    parser.add_argument("--dir", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--n_train",
        type=positive_int,
        default=None,
        help="training subset (default: all; 15000 one-vs-all)",
    )
    parser.add_argument(
        "--n_test", type=positive_int, default=None, help="test subset (default all)"
    )
    parser.add_argument(
        "--scale", type=positive_float, default=5000.0, help="inputs = pixels / scale"
    )
    parser.add_argument(
        "--iterations", type=positive_int, default=100, help="full-batch Adam steps"
    )
    parser.add_argument("--lr", type=positive_float, default=0.1, help="Adam learning rate")
    parser.add_argument("--dtype", default="float64", choices=sorted(DTYPES))
    parser.add_argument(
        "--products",
        default=None,
        choices=sorted(DTYPES),
        help="dtype of the two n³ products (default --dtype; float32 halves their cost)",
    )
    parser.add_argument(
        "--memory_gib",
        type=positive_float,
        default=None,
        help="limit for n×n matrices (default: 80%% of the memory available now)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=1, metavar="S")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch threads (default all)"
    )
    parser.add_argument("--no_progress", action="store_true", help="no tqdm bar")


def check_counts(args: argparse.Namespace) -> None:
    """Flag checks that need no data: sizes and the memory of an n×n training step."""
    for name in ("n_train", "n_test", "iterations"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be a positive integer")
    if args.scale <= 0:
        raise UserError("--scale must be positive (pixels are divided by it)")
    if args.n_train is not None:
        check_memory(args.n_train, args)


def available_memory_bytes() -> int:
    """Memory the kernel could give this process now (MemAvailable; free pages elsewhere)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(n: int, args: argparse.Namespace) -> None:
    dtype, products = DTYPES[args.dtype], DTYPES[args.products or args.dtype]
    needed = gp.dense_memory_bytes(n, dtype, products)
    if args.memory_gib is None:
        limit, source = 0.8 * available_memory_bytes(), "80% of the memory available"
    else:
        limit, source = args.memory_gib * 2**30, f"--memory_gib {args.memory_gib:g}"
    if needed > limit:
        fits = gp.largest_n(limit, dtype, products)
        raise UserError(
            f"a dense GP on {n} points needs about {needed / 2**30:.1f} GiB for its {n}×{n} "
            f"matrices, over {source} ({limit / 2**30:.1f} GiB); pass --n_train {fits} or "
            "less (or raise --memory_gib on a machine with more memory)"
        )


def load_arrays(data_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The five arrays and meta.json of a `gp_prepare_data.py` folder, validated."""
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{data_dir} has no meta.json; run gp_prepare_data.py --dir {data_dir}")
    meta = json.loads(meta_path.read_text())
    arrays = {}
    for name in ARRAYS:
        path = data_dir / f"{name}.npy"
        if not path.is_file():
            raise UserError(f"{path} is missing; run gp_prepare_data.py --dir {data_dir} again")
        arrays[name] = np.load(path, allow_pickle=False)
    for images, labels in [
        ("train_x", "train_y"),
        ("train_x", "shuffled_train_y"),
        ("test_x", "test_y"),
    ]:
        check_labels(arrays[labels], arrays[images].shape[0], meta["num_classes"], labels)
    return arrays, meta


def check_labels(labels: np.ndarray, count: int, num_classes: int, name: str) -> None:
    if labels.ndim != 1 or labels.shape[0] != count:
        raise UserError(
            f"{name} has shape {labels.shape} but there are {count} images; rerun "
            "gp_prepare_data.py so labels and images match"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(
            f"{name} has labels in [{labels.min()}, {labels.max()}] but the dataset has "
            f"{num_classes} classes; rerun gp_prepare_data.py"
        )


def check_class(cls: int, meta: dict) -> None:
    if not 0 <= cls < meta["num_classes"]:
        names = ", ".join(f"{i} {name}" for i, name in enumerate(meta["class_names"]))
        raise UserError(f"class {cls} does not exist in {meta['dataset']}; choose from {names}")


def inputs(images: np.ndarray, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """Flattened pixels / scale, [n, d] (the original's input scaling: no normalisation)."""
    flat = torch.as_tensor(images.reshape(images.shape[0], -1))
    return flat.to(dtype) / scale


def train_and_score(x, labels, test_x, test_labels, args, generator) -> tuple:
    """Fit the GP on binary `labels`; return (model, results dict) with −ELBO/n per step,
    the final ELBO/n, train accuracy against `labels`, test accuracy against `test_labels`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    start = time.perf_counter()
    x, test_x = x.to(device), test_x.to(device)
    model = gp.DenseVariationalGP(x, generator, DTYPES[args.products or args.dtype])
    targets = torch.as_tensor(labels).to(device)
    history = gp.fit(model, targets, args.iterations, args.lr, not args.no_progress)
    elbo = -model.negative_elbo(targets, backward=False)
    train_seconds = time.perf_counter() - start
    train_probs = model.train_probabilities().cpu()
    test_probs = model.probabilities(test_x).cpu()
    targets = targets.cpu()
    results = {
        "n_train": int(x.shape[0]),
        "n_test": int(test_x.shape[0]),
        "neg_elbo_per_example": history,
        "elbo_per_example": elbo,
        "train_accuracy": float(((train_probs >= 0.5).long() == targets).double().mean()),
        "test_accuracy": float(
            ((test_probs >= 0.5).long() == torch.as_tensor(test_labels)).double().mean()
        ),
        "outputscale": float(model.outputscale.detach()),
        "lengthscale": float(model.lengthscale.detach()),
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }
    return model, results, train_probs, test_probs


def save(model: gp.DenseVariationalGP, results: dict, directory: Path, stem: str) -> None:
    atomic_torch_save(model.gpytorch_state_dict(), directory / f"{stem}.pth")
    atomic_write_text(directory / f"{stem}.json", json.dumps(results, indent=2) + "\n")
