"""Seconds per SWAG sample of the BMA evaluation and the cost of --bn_subset.

Reference figures, measured on these 2-core machines with the original eval_multiswag.py:
LeNet5 / Fashion-MNIST, predict over 10,000 test images (no BN): 1.60 s per sample;
PreResNet20, 5,000 train / 1,000 test CIFAR-shaped images: 6.1 s per sample (5.3 s BN update).
Targets: >= 3x faster on both with the same semantics; >= 10x for PreResNet20 with --bn_subset.

Rows:
  torchvision-pipeline  this project's BMA with the original data pipeline (DataLoader, PIL
                        transforms, batch 128 for BN and prediction, BN not folded): the
                        same-machine baseline;
  fast                  tensor-resident loaders, BN batch 128 (same semantics), scoring batch 256;
  fast+channels_last    the same with channels-last memory format;
  +bn_subset N          BN statistics from a fixed random subset of N training images;
  k test sets           k copies of the test set scored per sample (BN time must not grow).

With Fashion-MNIST at hand (`python -m swag.prepare_data`), PreResNet20 is also trained for a
few epochs on 5,000 Fashion-MNIST images padded to 3x32x32 so that the NLL difference between
the full BN pass and --bn_subset is measured on a real model.

    python benchmarks/bma.py [--samples 3] [--bn_subset 512] [--data_path data] [--skip_nll]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from swag import bma, data, metrics, models, training  # noqa: E402
from swag.bma import bayesian_model_average  # noqa: E402
from swag.posteriors import SWAG  # noqa: E402

CHANNELS_LAST = torch.channels_last
SCORING_BATCH = bma.SCORING_BATCH_SIZE  # eval_multiswag.py's --eval_batch_size default


def random_swag(model: torch.nn.Module, rank: int = 20, seed: int = 0) -> SWAG:
    """A SWAG with `rank` deviation columns from random perturbations (timing only)."""
    generator = torch.Generator().manual_seed(seed)
    swag = SWAG(model)
    reference = [p.detach().clone() for p in model.parameters()]
    for _ in range(rank):
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), reference, strict=True):
                p.copy_(p0 + 0.01 * torch.randn(p.shape, generator=generator))
        swag.collect_model(model)
    return swag


def make_loader(images, targets, preset, batch_size, train, kind, memory_format, workers):
    if kind == "torchvision":
        return data.TorchvisionLoader(images, targets, preset, batch_size, train, train, workers)
    return data.TensorLoader(
        images, targets, preset, batch_size, train, train, "cpu", 0, memory_format
    )


def seconds_per_sample(
    swag, test_sets, bn_loader, bn_subset, samples, bf16=False, fold_bn=True
) -> dict[str, float]:
    with torch.no_grad():  # warm-up: one batch of each loader (allocator, oneDNN kernels)
        for loader in [*test_sets.values(), *([bn_loader] if bn_loader is not None else [])]:
            swag.base_model(next(iter(loader))[0])
    result = bayesian_model_average(
        [swag], test_sets, samples, "cpu", bn_loader, bn_subset, bf16=bf16, fold_bn=fold_bn
    )
    return {k: v / samples for k, v in result.seconds.items()}


def lenet_rows(args) -> list[list]:
    spec = models.get_model("LeNet5")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10_000, 1, 28, 28), generator=g, dtype=torch.uint8)
    targets = torch.randint(0, 10, (10_000,), generator=g)
    rows = []
    for kind, fmt, batch, bf16 in (("torchvision", torch.contiguous_format, 128, False),
                                   ("fast", torch.contiguous_format, SCORING_BATCH, False),
                                   ("fast", CHANNELS_LAST, SCORING_BATCH, False),
                                   ("fast", CHANNELS_LAST, SCORING_BATCH, True)):  # fmt: skip
        swag = random_swag(spec.build(10).to(memory_format=fmt))
        test = make_loader(images, targets, spec.preset, batch, False, kind, fmt, args.workers)
        s = seconds_per_sample(
            swag, {"clean": test}, None, None, args.samples, bf16, kind != "torchvision"
        )
        name = {"torchvision": "torchvision-pipeline", "fast": "fast"}[kind]
        name += "+channels_last" if fmt == CHANNELS_LAST else ""
        name += "+bf16" if bf16 else ""
        rows.append(["LeNet5", name, s["bn_update"], s["predict"], sum(s.values()), 1.60])
        print(f"  {rows[-1][:2]}: {rows[-1][4]:.3f} s per sample", flush=True)
    return rows


def preresnet_rows(args, train_images, train_targets, test_images, test_targets, swag_factory):
    spec = models.get_model("PreResNet20")
    rows = []
    configs = [("torchvision", torch.contiguous_format, 128, None, 1, False),
               ("fast", torch.contiguous_format, SCORING_BATCH, None, 1, False),
               ("fast", CHANNELS_LAST, SCORING_BATCH, None, 1, False),
               ("fast", CHANNELS_LAST, SCORING_BATCH, None, 1, True),
               ("fast", CHANNELS_LAST, SCORING_BATCH, args.bn_subset, 1, False),
               ("fast", CHANNELS_LAST, SCORING_BATCH, args.bn_subset, 1, True),
               ("fast", CHANNELS_LAST, SCORING_BATCH, None, 4, False)]  # fmt: skip
    for kind, fmt, batch, subset, k, bf16 in configs:
        swag = swag_factory(fmt)
        bn = make_loader(
            train_images, train_targets, spec.preset, 128, True, kind, fmt, args.workers
        )
        test = make_loader(test_images, test_targets, spec.preset, batch, False, kind, fmt,
                           args.workers)  # fmt: skip
        sets = {f"copy{i}": test for i in range(k)}
        s = seconds_per_sample(swag, sets, bn, subset, args.samples, bf16, kind != "torchvision")
        name = {"torchvision": "torchvision-pipeline", "fast": "fast"}[kind]
        name += "+channels_last" if fmt == CHANNELS_LAST else ""
        name += "+bf16" if bf16 else ""
        name += f"+bn_subset {subset}" if subset else ""
        name += f", {k} test sets" if k > 1 else ""
        rows.append(["PreResNet20", name, s["bn_update"], s["predict"], sum(s.values()), 6.1])
        print(f"  {rows[-1][:2]}: {rows[-1][4]:.3f} s per sample", flush=True)
    return rows


def fashion_as_cifar(data_path: str, n: int, train: bool):
    """Fashion-MNIST images zero-padded to 32x32 and repeated over 3 channels."""
    images, targets = data.load_split("FashionMNIST", data_path, train=train)
    images = torch.nn.functional.pad(images[:n], (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    return images.contiguous(), targets[:n]


def trained_swag(args, train_images, train_targets) -> SWAG:
    """PreResNet20 trained briefly with SGD, then SWAG moments over a few more epochs."""
    torch.manual_seed(0)
    spec = models.get_model("PreResNet20")
    model = spec.build(10).to(memory_format=CHANNELS_LAST)
    loader = data.TensorLoader(train_images, train_targets, spec.preset, 128, True, True, "cpu",
                               0, CHANNELS_LAST)  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    swag = SWAG(spec.build(10).to(memory_format=CHANNELS_LAST))
    for epoch in range(2 * args.train_epochs):
        training.set_learning_rate(optimizer, 0.05 if epoch < args.train_epochs else 0.01)
        loader.set_epoch(epoch)
        result = training.train_epoch(loader, model, optimizer, "cpu")
        print(f"  training epoch {epoch + 1}: loss {result['loss']:.3f}", flush=True)
        if epoch >= args.train_epochs:
            swag.collect_model(model)
    return swag


def bn_subset_nll(args, swag, train, test) -> list[list]:
    """NLL and accuracy of an S-sample SWAG average with the full BN pass and with a subset."""
    spec = models.get_model("PreResNet20")
    bn = data.TensorLoader(*train, spec.preset, 128, True, True, "cpu", 0, CHANNELS_LAST)
    test_loader = data.TensorLoader(*test, spec.preset, SCORING_BATCH, False, False, "cpu", 0,
                                    CHANNELS_LAST)  # fmt: skip
    rows = []
    for subset, bf16 in ((None, False), (args.bn_subset, False), (None, True)):
        result = bayesian_model_average([swag], {"clean": test_loader},
                                        args.nll_samples, "cpu", bn, subset, seed=0,
                                        bf16=bf16)  # fmt: skip
        probs, targets = result.member_probs["clean"][0], result.targets["clean"]
        label = (str(subset) if subset else "full (5000)") + (", bf16" if bf16 else "")
        rows.append([label, metrics.nll(probs, targets), metrics.accuracy(probs, targets)])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3, help="timed samples per row")
    parser.add_argument("--bn_subset", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (baseline)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data_path", default="data", help="Fashion-MNIST for the NLL check")
    parser.add_argument("--train_epochs", type=int, default=3)
    parser.add_argument("--nll_samples", type=int, default=8)
    parser.add_argument("--skip_nll", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU", flush=True)

    rows = lenet_rows(args)
    g = torch.Generator().manual_seed(1)
    synthetic = [torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
                 for n in (5000, 1000)]  # fmt: skip
    labels = [torch.randint(0, 10, (n,), generator=g) for n in (5000, 1000)]
    spec = models.get_model("PreResNet20")
    factory = lambda fmt: random_swag(spec.build(10).to(memory_format=fmt))  # noqa: E731
    rows += preresnet_rows(args, synthetic[0], labels[0], synthetic[1], labels[1], factory)
    for row in rows:
        row.append(row[-1] / row[-2])
    headers = ["model", "pipeline", "BN s/sample", "predict s/sample", "total s/sample",
               "original s/sample", "speed-up vs original"]  # fmt: skip
    print(tabulate(rows, headers, floatfmt=".3f"), flush=True)

    if args.skip_nll:
        return 0
    try:
        train = fashion_as_cifar(args.data_path, 5000, True)
        test = fashion_as_cifar(args.data_path, 1000, False)
    except Exception as error:  # noqa: BLE001  (a benchmark reports and moves on)
        print(f"NLL check skipped: {error}")
        return 0
    print("training PreResNet20 on 5,000 Fashion-MNIST images (3x32x32) for the NLL check")
    swag = trained_swag(args, *train)
    nll_rows = bn_subset_nll(args, swag, train, test)
    print(tabulate(nll_rows, ["BN update over", "NLL", "accuracy"], floatfmt=".4f"))
    print(f"NLL difference (subset - full): {nll_rows[1][1] - nll_rows[0][1]:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
