"""Seconds to fit a diagonal and a KFAC Laplace (GGN and log marginal likelihood) of LeNet5 on
Fashion-MNIST: this library against laplace-torch, in the same run.

Rows, for each Hessian structure:
  ours, N = num_train   swag.posteriors.laplace on the training images (default all 60,000);
  ours, M               the same on the first M images (--reference_examples DIAG KRON);
  laplace-torch, M      laplace-torch 0.3 defaults (curvlinops backend, exact GGN: jacrev
                        Jacobians for diag, KFAC-expand type-2 for kron) on those images,
                        with the same batches (diag: --reference_diag_batch, as its full
                        Jacobians need B·C·P floats); full-data time extrapolated linearly.

The ratio is laplace-torch / ours on the M images (both measured here, so it survives machine
load better than the absolute seconds); the evidence columns show the two agree. Weights are
LeNet5's initialisation (seed 0): the cost does not depend on them.

    python benchmarks/laplace.py [--data_path data] [--num_train 60000] [--threads 2]
        [--workers 1] [--batch_size 500] [--reference_examples 1000 4000]
        [--reference_diag_batch 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# the repository root replaces this folder on the path, so `import laplace` is laplace-torch
sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from swag import data, models  # noqa: E402
from swag.posteriors.laplace import Laplace  # noqa: E402


def batches(data_path: str, count: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `count` Fashion-MNIST training images, normalised, in batches (in memory)."""
    images, targets = data.load_split("FashionMNIST", data_path, train=True)
    preset = models.get_model("LeNet5").preset
    loader = data.TensorLoader(images[:count], targets[:count], preset, batch_size, False, False)
    return list(loader)


def ours(model, hessian: str, loader, workers: int = 1) -> tuple[float, float]:
    start = time.perf_counter()
    posterior = Laplace(model, hessian, prior_precision=1.0).fit(loader, workers=workers)
    evidence = float(posterior.log_marginal_likelihood())
    return time.perf_counter() - start, evidence


def laplace_torch(model, hessian: str, loader, batch_size: int) -> tuple[float, float]:
    from laplace import Laplace as Reference
    from torch.utils.data import DataLoader, TensorDataset

    inputs, targets = (torch.cat(parts) for parts in zip(*loader, strict=True))
    torch_loader = DataLoader(TensorDataset(inputs, targets), batch_size=batch_size)
    start = time.perf_counter()
    reference = Reference(
        model, "classification", subset_of_weights="all", hessian_structure=hessian
    )
    reference.fit(torch_loader)
    evidence = float(reference.log_marginal_likelihood())
    return time.perf_counter() - start, evidence


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default="data")
    parser.add_argument("--num_train", type=int, default=60_000)
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument(
        "--reference_examples", type=int, nargs=2, default=[1000, 4000], metavar=("DIAG", "KRON"),
        help="images for the laplace-torch comparison (its diag costs ~0.5 s per image)",
    )  # fmt: skip
    parser.add_argument(
        "--reference_diag_batch", type=int, default=32,
        help="laplace-torch diag batch (its Jacobians take B·C·P floats: 550 MB at 32)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--workers", type=int, default=1,
        help="our fit's worker threads (each one intra-op thread); 1: --threads intra-op threads",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.get_model("LeNet5").build(10).eval()
    full = batches(args.data_path, args.num_train, args.batch_size)
    rows = []
    for hessian, count in zip(("diag", "kron"), args.reference_examples, strict=True):
        subset = batches(args.data_path, count, args.batch_size)
        ours_full, evidence_full = ours(model, hessian, full, args.workers)
        ours_subset, evidence_ours = ours(model, hessian, subset, args.workers)
        reference_batch = args.reference_diag_batch if hessian == "diag" else args.batch_size
        reference = laplace_torch(model, hessian, subset, reference_batch)
        reference_subset, evidence_reference = reference
        rows.append([
            hessian, count, f"{ours_full:.1f}", f"{ours_subset:.2f}", f"{reference_subset:.2f}",
            f"{reference_subset * args.num_train / count:.0f}",
            f"{reference_subset / ours_subset:.1f}", f"{evidence_full / args.num_train:.4f}",
            f"{evidence_ours:.2f}", f"{evidence_reference:.2f}",
        ])  # fmt: skip
    n = args.num_train
    print(
        tabulate(
            rows,
            headers=[
                "hessian",
                "M",
                f"ours s (N={n})",
                "ours s (M)",
                "laplace-torch s (M)",
                f"laplace-torch s (N={n}, extrapolated)",
                "ratio (lt/ours, M)",
                f"ours lml/N (N={n})",
                "ours lml (M)",
                "laplace-torch lml (M)",
            ],
        )  # fmt: skip
    )
    print(
        f"threads {args.threads}, workers {args.workers}, batch {args.batch_size}, "
        f"load {os.getloadavg()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
