"""Evaluate MultiSWAG, MultiSWA or a deep ensemble on the clean and shifted test sets.

The original `experiments/train/eval_multiswag.py` (docs/original_code.md) with its flags, its
bugs fixed (each checkpoint is sampled with its own deviation matrix, sampling is seeded, NLL is
a mean over examples), plus --method (any method registered in swag.posteriors.methods),
--corrupted_path, BN-update and calibration options. Every sample is drawn once, BN-updated
once, and scored on every test set. Writes to --savedir: eval_command.sh,
eval_command_config.json, <method>.json / .csv (metrics for m = 1..M members, per test set),
<method>_probs.npz (clean-set predictions of all M members) and, with --cache_probs,
probs_<method>/ (float16 per-sample probabilities). Under torchrun (`torchrun
--nproc_per_node=N experiments/train/eval_multiswag.py ...`) the M x S draws are split over
the processes and rank 0 writes the same files (swag/distributed.py; not with --cache_probs).

    python experiments/train/eval_multiswag.py --dataset FashionMNIST --data_path data \
        --model LeNet5 --use_test --method multiswag --swag_samples 20 \
        --swag_ckpts runs/swag_{1..5}/swag-20.pt --corrupted_path data/fashionmnist_c \
        --savedir runs/multiswag
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from swag import bma, bma_results, cli, data, distributed, models, posteriors  # noqa: E402
from swag.bma_results import METRICS  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.io import (  # noqa: E402
    atomic_savez,
    locked_directory,
    output_directory,
    remove_partial_files,
)
from swag.posteriors.methods import SamplingOptions  # noqa: E402
from swag.shift import load_shifted  # noqa: E402


def import_plugins(argv: list[str] | None) -> None:
    """Import the modules named by --import (they register posteriors and methods)."""
    pre = cli.ArgumentParser(add_help=False)
    pre.add_argument("--import", dest="imports", action="append", default=[])
    for name in pre.parse_known_args(argv)[0].imports:
        posteriors.import_module_or_file(name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import_plugins(argv)
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="a module (dotted name or .py path) that registers more posteriors and methods",
    )  # fmt: skip
    parser.add_argument("--savedir", required=True, help="output directory")
    parser.add_argument(
        "--swag_ckpts", nargs="*", required=True, metavar="PT",
        help="one file per member: swag-<e>.pt (multiswag, multiswa), checkpoint-<e>.pt "
        "(ensemble), or the posterior file of another method",
    )  # fmt: skip
    parser.add_argument("--method", default="multiswag", choices=posteriors.method_names())
    parser.add_argument(
        "--swag_samples", type=cli.positive_int, default=20,
        help="samples per member (one for deterministic members: SWA means, checkpoints)",
    )  # fmt: skip
    parser.add_argument(
        "--max_num_models",
        type=cli.non_negative_int,
        default=20,
        help="use at most this many deviation columns",
    )
    parser.add_argument(
        "--scale", type=cli.positive_float, default=0.5,
        help="SWAG covariance scale: posterior tempering, not calibration (--temperature_scale)",
    )  # fmt: skip
    parser.add_argument(
        "--legacy_variance", action="store_true",
        help="paper-era SWAG sampling bug: variance instead of std on the diagonal term",
    )  # fmt: skip
    parser.add_argument("--model", required=True, help="registry name, e.g. PreResNet20, LeNet5")
    cli.add_data_arguments(parser)
    parser.add_argument(
        "--corrupted_path", default=None, metavar="DIR",
        help="folder of shifted test sets: <corruption>_<severity>.npz, or <corruption>.npy "
        "with labels.npy (published CIFAR-10-C)",
    )  # fmt: skip
    parser.add_argument("--corruptions", nargs="*", default=None, help="subset of corruptions")
    parser.add_argument(
        "--severities", nargs="*", type=cli.severity, default=None, help="subset, 1..5"
    )
    parser.add_argument(
        "--bn_subset", type=cli.positive_int, default=None, metavar="N",
        help="update BN on a fixed random subset of N training images (default: full pass)",
    )  # fmt: skip
    parser.add_argument(
        "--eval_batch_size", type=cli.positive_int, default=bma.SCORING_BATCH_SIZE,
        help="batch size of scoring (eval mode: changes no result)",
    )  # fmt: skip
    parser.add_argument("--cache_probs", action="store_true", help="cache float16 probabilities")
    parser.add_argument(
        "--channels_last", action=argparse.BooleanOptionalAction, default=True,
        help="channels-last memory format (faster convolutions on CPUs; same results; default on)",
    )  # fmt: skip
    parser.add_argument(
        "--fold_bn", action=argparse.BooleanOptionalAction, default=True,
        help="predict with BatchNorm folded into convolutions and ReLU after max-pooling "
        "(same results up to float32 rounding; default on)",
    )  # fmt: skip
    parser.add_argument(
        "--bf16", action="store_true",
        help="bfloat16 autocast for BN updates and predictions (faster; probabilities change "
        "slightly: NLL differences are in benchmarks/bma.py)",
    )  # fmt: skip
    parser.add_argument(
        "--temperature_scale", action="store_true",
        help="also report calibration temperature scaling fitted on half of the clean set",
    )  # fmt: skip
    cli.add_runtime_arguments(parser)
    cli.add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    models.get_model(args.model)  # an unknown name raises UserError listing the choices
    distributed.check_launch(None, args.dist_backend)
    if args.cache_probs and distributed.env_world_size() > 1:
        raise UserError("--cache_probs is written by one process; run without torchrun")
    for path in args.swag_ckpts:
        if not Path(path).is_file():
            raise UserError(
                f"checkpoint {path} does not exist; pass existing files to --swag_ckpts"
            )
    return args


def test_sets(args, spec, loaders) -> dict:
    """The clean test loader, then one loader per shifted test set."""
    clean = loaders["test"]
    if hasattr(clean, "batch_size"):  # scoring runs in eval mode: batch size changes no result
        clean.batch_size = max(clean.batch_size, args.eval_batch_size)
    sets = {"clean": clean}
    if args.corrupted_path:
        images = getattr(clean, "images", None)  # [N, C, H, W] in the fast loader
        image_shape = None if images is None else (*images.shape[2:], images.shape[1])
        shifted = load_shifted(args.corrupted_path, args.corruptions, args.severities, image_shape)
        for s in shifted:
            sets[s.name] = data.array_loader(
                s.images, s.labels, spec.preset, args.eval_batch_size, args.device
            )
    return sets


def summary(curves: dict, shifted: list[str]) -> str:
    """Clean-set metrics, and the mean over shifted sets, for every number of members."""
    rows = []
    for m, clean in enumerate(curves["clean"]):
        row = [m + 1, *(clean[k] for k in METRICS)]
        if shifted:
            row += [float(np.mean([curves[n][m][k] for n in shifted])) for k in METRICS]
        rows.append(row)
    headers = ["models", *METRICS] + [f"shift_{k}" for k in METRICS] * bool(shifted)
    return tabulate(rows, headers, floatfmt=".4f")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.resolve_device(args.device)
    args.device = str(device)
    backend = args.dist_backend or distributed.default_backend(device)
    with distributed.process_group(backend, args.dist_timeout, device):
        if not distributed.is_main():  # the other ranks draw their share; rank 0 writes
            return evaluate(args, None, None, argv)
        return evaluate_and_write(args, argv)


def evaluate_and_write(args, argv: list[str] | None) -> int:
    out = output_directory(args.savedir, "--savedir")
    cache = (
        output_directory(out / f"probs_{args.method}", "--savedir") if args.cache_probs else None
    )
    with locked_directory(out):
        try:
            return evaluate(args, out, cache, argv)
        finally:
            if cache is not None:
                remove_partial_files(cache)


def evaluate(args, out: Path | None, cache: Path | None, argv: list[str] | None) -> int:
    """Check every input, then score; records the command only once the inputs proved good.

    Every rank scores its share of the draws; rank 0 (whose `out` is set) writes the results.
    """
    spec = models.get_model(args.model)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    loaders, num_classes = data.loaders(
        args.dataset, args.data_path, args.batch_size, args.num_workers, spec.preset,
        use_validation=not args.use_test, split_classes=args.split_classes,
        download=args.download, label_arr=args.label_arr, loader=args.loader,
        device=args.device, seed=args.seed, memory_format=memory_format,
    )  # fmt: skip
    sets = test_sets(args, spec, loaders)
    options = SamplingOptions(scale=args.scale, legacy_variance=args.legacy_variance,
                              max_num_models=args.max_num_models)  # fmt: skip
    members = bma.CheckpointMembers(
        args.swag_ckpts, args.method,
        lambda: spec.build(num_classes).to(args.device, memory_format=memory_format), options,
    )  # fmt: skip
    num_samples = 1 if members.check() else args.swag_samples
    if out is not None:
        cli.record_invocation(out, args, __file__, argv, name="eval_command")
    result = bma.bayesian_model_average(
        members, sets, num_samples, args.device, bn_loader=loaders["train"],
        bn_subset=args.bn_subset, seed=args.seed, bf16=args.bf16, fold_bn=args.fold_bn,
        cache_dir=cache, log=print if out is not None else None,
    )  # fmt: skip
    if out is None:
        return 0
    curves = result.curves()
    draws = len(members) * num_samples
    payload = {
        "method": args.method, "model": args.model, "dataset": args.dataset,
        "checkpoints": args.swag_ckpts, "num_samples": num_samples, "scale": args.scale,
        "bn_subset": args.bn_subset, "seed": args.seed, "curves": curves,
        "seconds_per_sample": {k: v / draws for k, v in result.seconds.items()},
    }  # fmt: skip
    rows = bma_results.curve_rows(curves, method=args.method, temperature_scaled=False)
    if args.temperature_scale:
        temperatures, before, after = bma_results.temperature_scaled_curves(
            result.member_probs, result.targets, seed=args.seed
        )
        payload["temperature_scaling"] = {"temperature": temperatures, "before": before,
                                          "after": after}  # fmt: skip
        rows += bma_results.curve_rows(after, method=args.method, temperature_scaled=True)
    bma_results.write_results(out, args.method, payload, rows)
    atomic_savez(
        out / f"{args.method}_probs.npz",
        predictions=result.member_probs["clean"].astype(np.float64).mean(0),
        targets=result.targets["clean"],
    )
    shifted = [name for name in sets if name != "clean"]
    print(f"{args.method}: {len(members)} members x {num_samples} samples")
    print(summary(curves, shifted))
    if args.temperature_scale:
        b, a = before["clean_heldout"][-1], after["clean_heldout"][-1]
        print(f"temperature scaling (T = {temperatures[-1]:.3f}, fitted on half of clean): "
              f"held-out NLL {b['nll']:.4f} -> {a['nll']:.4f}, ECE {b['ece']:.4f} -> "
              f"{a['ece']:.4f}, accuracy {b['accuracy']:.4f} -> {a['accuracy']:.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    cli.run_main(main)
