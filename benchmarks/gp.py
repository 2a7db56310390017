"""Seconds per training step of the rethinking-generalisation GP: gpytorch's default path
(conjugate gradients and stochastic Lanczos above 800 points) against `swag.gp`'s dense
Cholesky path, at a common N, from the same run; then the dense path alone at larger N and its
projection to the paper's N = 10,000 × 100 steps (measured setup + 100 steps when N = 10,000
is timed, else cost ∝ N³ from the largest measured N).

Target: N = 10,000 × 100 steps in under an hour on 2 CPU cores. Each figure is printed with
wall and process CPU seconds and the 1-minute load average (other jobs may share the cores).

    python benchmarks/gp.py --data_dir runs/rethinking/data --common_n 300 --fast_n 10000 \
        --products float32 --steps 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402
import torch  # noqa: E402

from swag import gp  # noqa: E402

PAPER_N, PAPER_STEPS = 10_000, 100


def inputs(n: int, data_dir: Path | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """n images / 5000 and binary labels: the first n of a gp_prepare_data folder, or noise."""
    if data_dir is not None:
        images = np.load(data_dir / "train_x.npy", mmap_mode="r")[:n]
        labels = np.load(data_dir / "train_y.npy")[:n] % 2
    else:
        rng = np.random.default_rng(0)
        images, labels = rng.integers(0, 256, (n, 3072)), rng.integers(0, 2, n)
    x = torch.as_tensor(np.asarray(images).reshape(n, -1)).to(dtype) / 5000.0
    return x, torch.as_tensor(labels, dtype=torch.long)


def timed(step, count: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call of `step`, over `count` calls after one warm-up."""
    step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        step()
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def fast_step(n: int, args, dtype: torch.dtype, products: torch.dtype):
    x, y = inputs(n, args.data_dir, dtype)
    model = gp.DenseVariationalGP(x, torch.Generator().manual_seed(0), products)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)  # as `gp.fit`

    def step():
        optimizer.zero_grad(set_to_none=True)
        model.negative_elbo(y)
        optimizer.step()

    return step


def gpytorch_step(n: int, args):
    x, y = inputs(n, args.data_dir, torch.float32)
    model, likelihood = gp.gpytorch_classifier(x)
    optimizer = torch.optim.Adam([*model.parameters(), *likelihood.parameters()], lr=0.1)
    return lambda: gp.gpytorch_step(model, likelihood, optimizer, x, y)


def report(label: str, n: int, seconds: tuple[float, float], setup: float | None = None) -> None:
    load = os.getloadavg()[0]
    before = "" if setup is None else f"setup {setup:6.1f} s, "
    print(
        f"{label:<28} N={n:>6}: {before}{seconds[0]:8.3f} s/step wall, {seconds[1]:8.3f} s CPU, "
        f"load {load:.2f}"
    )


def timed_setup(n: int, args, dtype: torch.dtype, products: torch.dtype):
    """(step, setup seconds): the model's construction (D², the first Cholesky) is timed."""
    start = time.perf_counter()
    step = fast_step(n, args, dtype, products)
    return step, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=None, help="gp_prepare_data.py --dir")
    parser.add_argument("--common_n", type=int, default=1000, help="N timed on both paths")
    parser.add_argument("--fast_n", type=int, nargs="*", default=[2000, 4000])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument(
        "--products",
        nargs="+",
        default=["float64", "float32"],
        choices=["float64", "float32"],
        help="product dtypes of the dense path to time",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"{args.threads} threads, fast path in {args.dtype}, gpytorch in float32 (the original)")
    reference = timed(gpytorch_step(args.common_n, args), args.steps)
    report("gpytorch default (CG)", args.common_n, reference)
    for products in [getattr(torch, name) for name in args.products]:
        label = f"dense, {str(products)[6:]} products"
        fast = timed(fast_step(args.common_n, args, dtype, products), args.steps)
        report(label, args.common_n, fast)
        print(
            f"speed-up at N={args.common_n}: {reference[0] / fast[0]:.1f}x wall, "
            f"{reference[1] / fast[1]:.1f}x CPU"
        )
        n, (wall, cpu), setup = args.common_n, fast, 0.0
        for n in args.fast_n:
            step, setup = timed_setup(n, args, dtype, products)
            wall, cpu = timed(step, args.steps)
            del step
            report(label, n, (wall, cpu), setup)
        factor = (PAPER_N / n) ** 3
        hours = (setup * (PAPER_N / n) ** 2 + wall * factor * PAPER_STEPS) / 3600
        how = "measured" if n == PAPER_N else f"N^3 from N={n}"
        print(
            f"{label}: N={PAPER_N} x {PAPER_STEPS} steps ({how}): {hours:.2f} h wall "
            f"(setup + steps), {cpu * factor * PAPER_STEPS / args.threads / 3600:.2f} h CPU "
            f"per thread; needs {gp.dense_memory_bytes(PAPER_N, dtype, products) / 2**30:.1f} GiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
