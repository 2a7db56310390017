"""Scaling from 1 to 2 processes: training images/s (data parallel) and BMA seconds per sample.

Each configuration runs as its own command, interleaved round by round so that both sides of
a comparison see the same load on a shared machine:

- `1 proc x 1 thread` and `1 proc x 2 threads`: one process, as `run_swag.py` without torchrun;
- `2 procs x 1 thread`: `torchrun --standalone --nproc_per_node 2` over Gloo on the CPU (on a
  GPU machine, `--device cuda` gives one GPU per process over NCCL).

Training: SGD steps of the global batch (--batch_size, split over the processes exactly as in
run_swag.py: `swag.data.TensorLoader.shard` + DistributedDataParallel + `swag.training
.train_epoch`) on random uint8 images of the model's input shape, with the recommended setup
(channels_last, bf16 where supported, fused SGD); warm-up batches excluded. img/s counts global
images per wall second; img/cpu-s divides by the CPU seconds of all processes together.

BMA: `swag.bma.bayesian_model_average` of 2 SWAG members (rank 5, random moments) x
--samples draws, scored on --test random images; models with BatchNorm update it on a fixed
subset of 512 training images per draw. s/sample is wall seconds / (M x S).

    python benchmarks/distributed.py                                   # LeNet5 and PreResNet20
    python benchmarks/distributed.py --models LeNet5 --rounds 1

Columns: median over --rounds (range in brackets); load = 1-minute load average at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import torch  # noqa: E402

from swag import bma, data, distributed, models, speed, training  # noqa: E402
from swag.posteriors import SWAG  # noqa: E402

CONFIGS = {"1 proc x 1 thread": (1, 1), "1 proc x 2 threads": (1, 2), "2 procs x 1 thread": (2, 1)}
SHAPES = {"LeNet5": (1, 28, 28)}  # every other model: CIFAR-shaped (3, 32, 32)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="LeNet5,PreResNet20", help="comma-separated")
    parser.add_argument("--batch_size", type=int, default=128, help="global batch")
    parser.add_argument("--batches", type=int, default=None, help="timed batches")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="draws per member (2 members)")
    parser.add_argument("--test", type=int, default=1000, help="test images scored per draw")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", choices=("train", "bma"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="LeNet5", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def random_images(model: str, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = SHAPES.get(model, (3, 32, 32))
    images = torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (count,), generator=generator)


def train_worker(args, device: torch.device) -> dict:
    spec = models.get_model(args.model)
    batches = args.batches or (40 if args.model == "LeNet5" else 6)
    bf16 = speed.bf16_supported(device)
    loaders = []
    for count, seed in ((args.warmup, 1), (batches, 2)):
        images, targets = random_images(args.model, count * args.batch_size, seed)
        loader = data.TensorLoader(images, targets, spec.preset, args.batch_size, True, True,
                                   device, seed, speed.memory_format(True))  # fmt: skip
        loaders.append(loader.shard(distributed.rank(), distributed.world_size()))
    torch.manual_seed(0)
    model = speed.prepare_model(spec.build(10), device, True)
    optimizer = speed.make_sgd(model.parameters(), 0.01, 0.9, 1e-4, "fused")
    train_model = distributed.data_parallel(model, device, False)
    training.train_epoch(loaders[0], train_model, optimizer, device, bf16=bf16)
    distributed.barrier()
    wall, cpu = time.perf_counter(), time.process_time()
    training.train_epoch(loaders[1], train_model, optimizer, device, bf16=bf16)
    distributed.barrier()
    wall = time.perf_counter() - wall
    cpu = float(distributed.all_reduce_sum(torch.tensor([time.process_time() - cpu]))[0])
    images = batches * args.batch_size
    return {"img/s": images / wall, "img/cpu-s": images / cpu}


def bma_worker(args, device: torch.device) -> dict:
    spec = models.get_model(args.model)
    members = []
    for member in range(2):
        torch.manual_seed(10 + member)
        swag = SWAG(spec.build(10).to(device), max_num_models=5, cov_mat=True)
        for _ in range(6):  # six random snapshots: rank-5 deviations
            swag.collect_model(spec.build(10).to(device))
        members.append(swag)
    images, targets = random_images(args.model, args.test, 3)
    test = {"clean": data.TensorLoader(images, targets, spec.preset, bma.SCORING_BATCH_SIZE,
                                       False, False, device)}  # fmt: skip
    images, targets = random_images(args.model, 2048, 4)
    bn_loader = data.TensorLoader(images, targets, spec.preset, 128, True, True, device)
    distributed.barrier()
    wall = time.perf_counter()
    bma.bayesian_model_average(members, test, args.samples, device, bn_loader, bn_subset=512)
    distributed.barrier()
    return {"s/sample": (time.perf_counter() - wall) / (2 * args.samples)}


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    cpu = args.device == "cpu"
    device = torch.device("cpu") if cpu else torch.device("cuda", distributed.local_rank())
    with distributed.process_group(distributed.default_backend(device), 600, device):
        result = (train_worker if args.worker == "train" else bma_worker)(args, device)
        if distributed.is_main():
            print(json.dumps(result))


def measure(kind: str, model: str, procs: int, threads: int, args) -> dict:
    values = dict(worker=kind, model=model, threads=threads, batch_size=args.batch_size,
                  warmup=args.warmup, samples=args.samples, test=args.test, device=args.device,
                  batches=args.batches)  # fmt: skip
    flags = [f"--{name}={value}" for name, value in values.items() if value is not None]
    launcher = [sys.executable]
    if procs > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([*launcher, __file__, *flags], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"error: {kind} {model} x{procs} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    from tabulate import tabulate

    cells: dict[tuple, list[dict]] = {}
    for _ in range(args.rounds):  # interleaved: every configuration once per round
        for model in args.models.split(","):
            for kind in ("train", "bma"):
                for name, (procs, threads) in CONFIGS.items():
                    result = measure(kind, model, procs, threads, args)
                    cells.setdefault((model, kind, name), []).append(result)
    rows = []
    for (model, kind, name), results in cells.items():
        for key in results[0]:
            values = [r[key] for r in results]
            spread = (
                f"{_number(statistics.median(values))} ({_number(min(values))}-"
                f"{_number(max(values))})"
            )
            rows.append([model, kind, name, key, spread])
    print(tabulate(rows, ["model", "what", "configuration", "unit", "median (range)"]))
    print(f"load {speed.load_average():.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
