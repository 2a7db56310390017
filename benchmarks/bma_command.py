"""Seconds per SWAG sample of `experiments/train/eval_multiswag.py`, timed as a user runs it.

The real command (`main(argv)` in this process) evaluates one SWAG member file on data files in
the real on-disk formats; the per-sample cost removes every fixed cost (imports, data loading,
file checks, writing results) by differencing two sample counts:

    LeNet5 / Fashion-MNIST (10,000 test images, no BN):  (t(S=8) − t(S=2)) / 6
    PreResNet20 / CIFAR-10 format (5,000 train, 1,000 test, full BN pass): (t(S=4) − t(S=1)) / 3

Configurations (all rows of one workload are run interleaved, round after round, so that the
load of a shared machine hits them alike; ratios are taken within a round):

    original-like   `--loader torchvision --num_workers 0 --no-channels_last --no-fold_bn
                    --eval_batch_size 128`: this project's code with the original's data
                    pipeline (PIL transforms), NCHW float32, batch 128, unfolded BN. A
                    same-machine proxy for the original repository, not the original itself.
                    Without `--num_workers 0` (default 4) each pass forks four workers onto the
                    2 shared cores: LeNet5 measured 50 s per sample at load 10 that way;
    default         no speed flag: what a user gets;
    bf16, bf16+bn_subset 512   the opt-in knobs that change results.

`--original PATH` (a checkout of the original repository) also times the original
eval_multiswag.py in a subprocess on the same files.

    python benchmarks/bma_command.py [--rounds 2] [--data_path data] [--workloads lenet preresnet]
        [--configs default bf16 ...]
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/bma.py's random_swag

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bma import random_swag  # noqa: E402
from tabulate import tabulate  # noqa: E402

from swag import models  # noqa: E402

ORIGINAL_LIKE = ["--loader", "torchvision", "--num_workers", "0", "--no-channels_last",
                 "--no-fold_bn", "--eval_batch_size", "128"]  # fmt: skip
WORKLOADS = {  # name: (model, dataset, (S_low, S_high), configurations)
    "lenet": ("LeNet5", "FashionMNIST", (2, 8),
              {"original-like": ORIGINAL_LIKE, "default": [], "bf16": ["--bf16"]}),
    "preresnet": ("PreResNet20", "CIFAR10", (1, 4),
                  {"original-like": ORIGINAL_LIKE, "default": [], "bf16": ["--bf16"],
                   "bf16+bn_subset 512": ["--bf16", "--bn_subset", "512"]}),
}  # fmt: skip


def write_swag(model_name: str, path: Path, rank: int = 20, seed: int = 0) -> Path:
    """A SWAG file with `rank` deviation columns around a freshly initialised network."""
    torch.manual_seed(seed)
    return random_swag(models.get_model(model_name).build(10), rank, seed).save(path)


def write_cifar10(root: Path, n_train: int = 5000, n_test: int = 1000) -> None:
    """Random uint8 images as CIFAR-10 python pickles (five training batches and test_batch)."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)

    def dump(name: str, count: int) -> None:
        entry = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, count)]}  # fmt: skip
        with open(folder / name, "wb") as stream:
            pickle.dump(entry, stream, protocol=2)

    for index in range(5):
        dump(f"data_batch_{index + 1}", n_train // 5)
    dump("test_batch", n_test)
    with open(folder / "batches.meta", "wb") as stream:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, stream)


def accept_synthetic_cifar() -> None:
    """torchvision checks the md5 of the real CIFAR files; accept the synthetic ones."""
    import torchvision.datasets.cifar as cifar

    cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)


def run_command(argv: list[str], original: str | None) -> float:
    """Wall-clock seconds of one eval_multiswag.py run (in this process, or the original's)."""
    start = time.perf_counter()
    if original is None:
        from experiments.train import eval_multiswag

        eval_multiswag.main(argv)
    else:
        script = Path(original) / "experiments" / "train" / "eval_multiswag.py"
        subprocess.run([sys.executable, str(script), *argv], check=True,
                       stdout=subprocess.DEVNULL, cwd=original)  # fmt: skip
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data_path", default="data", help="holds fashionmnist/ (make data)")
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--configs", nargs="*", default=None,
                        help="only these configurations (the baseline always runs)")  # fmt: skip
    parser.add_argument("--original", default=None, metavar="PATH",
                        help="checkout of the original repository, timed alongside")  # fmt: skip
    args = parser.parse_args(argv)
    accept_synthetic_cifar()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bma_command_"))
    write_cifar10(work)
    table = []
    for workload in args.workloads:
        model, dataset, (low, high), configs = WORKLOADS[workload]
        if args.configs is not None:
            keep = {"original-like", *args.configs}
            configs = {name: flags for name, flags in configs.items() if name in keep}
        if args.original:
            configs = {"original": [], **configs}
        swag_file = write_swag(model, work / f"{model}-swag.pt")
        data_path = args.data_path if dataset == "FashionMNIST" else str(work)
        per_sample: dict[str, list[float]] = {name: [] for name in configs}
        for round_ in range(args.rounds):
            for name, flags in configs.items():
                times = []
                for samples in (low, high):
                    command = ["--dataset", dataset, "--data_path", data_path, "--model", model,
                               "--use_test", "--method", "multiswag", "--swag_ckpts",
                               str(swag_file), "--swag_samples", str(samples), "--savedir",
                               str(work / "out"), "--device", "cpu", *flags]  # fmt: skip
                    original = args.original if name == "original" else None
                    times.append(run_command(command, original))
                per_sample[name].append((times[1] - times[0]) / (high - low))
                print(f"  {model} round {round_ + 1} {name}: t(S={low}) {times[0]:.2f} s, "
                      f"t(S={high}) {times[1]:.2f} s -> {per_sample[name][-1]:.3f} s/sample, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        base = per_sample["original" if args.original else "original-like"]
        for name, values in per_sample.items():
            ratios = [b / v for b, v in zip(base, values, strict=True)]
            table.append([model, name, f"{min(values):.3f}-{max(values):.3f}",
                          f"{min(ratios):.2f}-{max(ratios):.2f}x"])  # fmt: skip
    headers = ["model", "configuration", "s/sample (range over rounds)",
               "speed-up vs baseline, same round"]  # fmt: skip
    print(tabulate(table, headers), flush=True)
    print(f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
