"""Training throughput (images/s) and peak memory of LeNet5, PreResNet20 and VGG16.

Batch 128, SGD (momentum 0.9, weight decay 1e-4), each model preset's training augmentation
through the fast tensor loader (`swag.data.TensorLoader` + `swag.training.train_epoch`), or
`--loader torchvision` (PIL transforms, num_workers 0) for comparison. LeNet5 reads the real
Fashion-MNIST from `--data_path` when `make data` prepared it, else random uint8 images of the
same shape; PreResNet20 and VGG16 train on random CIFAR-shaped uint8 images. Warm-up batches
(and compilation) are excluded from the timing. Each model runs in its own process so that its
peak RSS is its own.

    python benchmarks/train_throughput.py                      # recommended setup, 3 models
    python benchmarks/train_throughput.py --models LeNet5 --no-channels_last --no-bf16 \
        --sgd for-loop --loader torchvision                     # upstream-like eager float32

Defaults are the recommended setup: channels_last, bf16 autocast where the device supports it,
fused SGD, no compilation. On a CPU shared with other jobs, run with OMP_WAIT_POLICY=PASSIVE
(or --threads 1): spinning OpenMP threads are descheduled and every parallel op then waits.

Columns: img/s = median over --repeats rounds of --batches batches (max in brackets);
img/cpu-s = images per second of process CPU time (less sensitive to other load on the machine);
warm-up = seconds of the warm-up batches (compile time included); peak RSS of the process (GiB);
load = 1-minute load average when the measurement ended.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import torch  # noqa: E402

from swag import cli, data, models, speed, training  # noqa: E402
from swag.errors import UserError  # noqa: E402

SHAPES = {"LeNet5": (1, 28, 28)}  # every other model: CIFAR-shaped (3, 32, 32)
TRAIN_SIZE = {"LeNet5": 60_000}  # random-data training-set sizes (Fashion-MNIST / CIFAR-10)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="LeNet5,PreResNet20,VGG16", help="comma-separated")
    parser.add_argument("--data_path", default="data", help="holds fashionmnist/ (`make data`)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=None, help="timed batches per round")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches first")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--loader", choices=("fast", "torchvision"), default="fast")
    # Defaults are the recommended setup; --no-channels_last --no-bf16 --sgd for-loop is eager
    # float32 as upstream trained.
    knob = argparse.BooleanOptionalAction
    parser.add_argument("--channels_last", action=knob, default=True)
    parser.add_argument("--bf16", action=knob, default=None, help="default: if the device has it")
    parser.add_argument("--compile", choices=speed.COMPILE_MODES, default="none")
    parser.add_argument("--sgd", choices=speed.SGD_IMPLEMENTATIONS, default="fused")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.models = [name for name in args.models.split(",") if name]
    for name in args.models:
        models.get_model(name)
    if min(args.batch_size, args.repeats, args.batches or 1) < 1:
        raise UserError("--batch_size, --batches and --repeats must be positive")
    return args


def default_batches(name: str, device: torch.device) -> tuple[int, int]:
    """(timed batches per round, warm-up batches): rounds of roughly 5-15 s on 2 CPU cores."""
    if device.type == "cuda":
        return 100, 20
    return {"LeNet5": (100, 10), "PreResNet20": (20, 3), "VGG16": (8, 2)}.get(name, (10, 2))


def training_data(name: str, data_path: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images [N, C, H, W] uint8, targets [N] long, description of the source)."""
    if name == "LeNet5":
        try:
            images, targets = data.load_split("FashionMNIST", data_path, train=True)
            return images, targets, "Fashion-MNIST"
        except UserError:
            pass
    generator = torch.Generator().manual_seed(0)
    size, shape = TRAIN_SIZE.get(name, 50_000), SHAPES.get(name, (3, 32, 32))
    images = torch.randint(0, 256, (size, *shape), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (size,), generator=generator), "random uint8"


def endless_batches(loader):
    """Batches of successive epochs, forever (set_epoch re-seeds the augmentation)."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def measure(args: argparse.Namespace, name: str) -> dict:
    device = cli.resolve_device(args.device)
    speed.set_threads(args.threads)
    if args.bf16 is None:
        args.bf16 = speed.bf16_supported(device)
    spec = models.get_model(name)
    images, targets, source = training_data(name, args.data_path)
    if args.loader == "fast":
        loader = data.TensorLoader(
            images, targets, spec.preset, args.batch_size, train=True, shuffle=True,
            device=device, seed=args.seed, memory_format=speed.memory_format(args.channels_last),
        )  # fmt: skip
    else:
        loader = data.TorchvisionLoader(
            images, targets, spec.preset, args.batch_size, train=True, shuffle=True,
            num_workers=0, seed=args.seed,
        )  # fmt: skip
    torch.manual_seed(args.seed)
    model = speed.prepare_model(spec.build(10), device,
                                args.channels_last, args.compile)  # fmt: skip
    optimizer = speed.make_sgd(model.parameters(), 0.01, 0.9, 1e-4, args.sgd)
    batches, warmup = default_batches(name, device)
    batches, warmup = args.batches or batches, args.warmup if args.warmup is not None else warmup
    stream = endless_batches(loader)

    def run(count: int) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        # train_epoch ends with a host sync (float of the loss sum), so the timing is complete.
        training.train_epoch(itertools.islice(stream, count), model, optimizer, device,
                             bf16=args.bf16)  # fmt: skip
        return time.perf_counter() - wall, time.process_time() - cpu

    warmup_seconds = run(warmup)[0] if warmup else 0.0
    rounds = [run(batches) for _ in range(args.repeats)]
    images_per_round = batches * args.batch_size
    rates = [images_per_round / wall for wall, _ in rounds]
    cpu_seconds = sum(cpu for _, cpu in rounds)
    return {
        "model": name,
        "data": source,
        "config": config_label(args, device),
        "img/s": f"{statistics.median(rates):,.0f} ({max(rates):,.0f})",
        "img/cpu-s": f"{images_per_round * len(rounds) / cpu_seconds:,.0f}",
        "warm-up s": f"{warmup_seconds:.1f}",
        "peak GiB": f"{speed.peak_memory_gib(device):.2f}",
        "load": f"{speed.load_average():.2f}",
    }


def config_label(args: argparse.Namespace, device: torch.device) -> str:
    knobs = [args.loader, device.type, f"threads={torch.get_num_threads()}"]
    if "OMP_WAIT_POLICY" in os.environ:
        knobs.append(f"omp={os.environ['OMP_WAIT_POLICY']}")
    knobs += ["channels_last"] * args.channels_last + ["bf16"] * args.bf16
    knobs += [f"compile={args.compile}"] * (args.compile != "none")
    knobs += [f"sgd={args.sgd}"]
    return " ".join(knobs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if len(args.models) > 1:  # one process per model: separate peak RSS, no shared warm state
        for name in args.models:
            command = [sys.executable, str(Path(__file__).resolve()), *argv, "--models", name]
            status = subprocess.run(command, check=False).returncode
            if status:
                return status
        return 0
    result = measure(args, args.models[0])
    print("  ".join(f"{key}: {value}" for key, value in result.items()), flush=True)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
