"""Sample a network's posterior with SGLD and keep the chain as a sample bank.

The sibling of run_swag.py, with its data, model and seed flags. Each epoch is one pass of
SGLD (swag/posteriors/sgld.py) over the training set on the mean loss
CE + ‖θ‖²/(2·prior_var·N) (with --prior_var); with the default --noise_factor 1/√N the chain
targets the T = 1 posterior. After --burn_in epochs, every --thin-th epoch's weights are kept;
the kept draws are written to samples.pt (a `SampleBank`, loadable with
`swag.posteriors.base.load`) and their Bayesian model average is scored on the test split.

Writes to --dir: command.sh, config.json, metrics.jsonl (one row per epoch), samples.pt,
results.json (BMA test NLL and accuracy).

    python experiments/train/run_sgld.py --data_path data --dataset FashionMNIST --model LeNet5 \
        --epochs 30 --lr_init 1e-3 --prior_var 1 --burn_in 10 --thin 2 --cosine --use_test \
        --dir runs/sgld/lenet5
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from swag import cli, data, metrics, models, training  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.io import atomic_write_text  # noqa: E402
from swag.posteriors.sample_bank import SampleBank, Thinning  # noqa: E402
from swag.posteriors.sgld import SGLD  # noqa: E402
from swag.seeding import derived_generator  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description="SGLD posterior sampling")
    parser.add_argument("--dir", required=True, help="output directory")
    cli.add_data_arguments(parser)
    parser.add_argument(
        "--model", required=True, help="registry name, e.g. PreResNet20NoAug, LeNet5"
    )
    parser.add_argument(
        "--epochs", type=cli.positive_int, default=200, help="passes over the training set"
    )
    parser.add_argument(
        "--lr_init",
        type=cli.positive_float,
        default=1e-3,
        help="SGLD step on the mean loss (effective lr/N)",
    )
    parser.add_argument(
        "--wd", type=cli.non_negative_float, default=0.0, help="extra drift wd·θ (default: none)"
    )
    parser.add_argument(
        "--prior_var", type=cli.positive_float, default=None, help="Gaussian prior variance"
    )
    parser.add_argument(
        "--noise_factor", type=cli.positive_float, default=None,
        help="noise scale; default 1/√N (the T = 1 posterior), √(T/N) tempers at T",
    )  # fmt: skip
    parser.add_argument(
        "--burn_in", type=cli.non_negative_int, default=0, help="epochs discarded before keeping"
    )
    parser.add_argument(
        "--thin", type=cli.positive_int, default=1, help="keep every thin-th epoch after that"
    )
    parser.add_argument(
        "--cosine", action="store_true", help="cosine-anneal the step to 0 over --epochs"
    )
    cli.add_runtime_arguments(parser)
    args = parser.parse_args(argv)
    validate(args)
    return args


def validate(args: argparse.Namespace) -> None:
    models.get_model(args.model)
    if args.dataset not in data.DATASETS:
        raise UserError(
            f"unknown --dataset {args.dataset!r}; choose one of: {', '.join(data.DATASETS)}"
        )
    if args.epochs < 1 or not args.lr_init > 0:
        raise UserError("--epochs must be at least 1 and --lr_init positive")
    if args.prior_var is not None and not args.prior_var > 0:
        raise UserError(f"--prior_var must be positive, got {args.prior_var}")
    if args.noise_factor is not None and args.noise_factor < 0:
        raise UserError(f"--noise_factor must be ≥ 0, got {args.noise_factor}")
    Thinning(args.burn_in, args.thin).check(args.epochs)


def bma_scores(args, bank: SampleBank, loaders: dict, device: torch.device) -> dict:
    """Test NLL and accuracy of the average over every stored draw (BN recomputed per draw)."""
    generator = derived_generator(args.seed, 2)
    ensemble = None
    for _ in tqdm(range(bank.num_samples), desc="BMA", leave=False, disable=None):
        bank.sample(generator)
        if bank.needs_bn_update:
            training.update_bn(loaders["train"], bank.model, device)
        probs, targets = training.predict(loaders["test"], bank.model, device)
        if ensemble is None:
            ensemble = metrics.RunningEnsemble(*probs.shape)
        ensemble.update(probs)
    return {
        "num_samples": bank.num_samples,
        "bma_nll": metrics.nll(ensemble.probs, targets),
        "bma_acc": 100 * metrics.accuracy(ensemble.probs, targets),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.resolve_device(args.device)
    thinning = Thinning(args.burn_in, args.thin)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    spec = models.get_model(args.model)
    loaders, num_classes = data.loaders(
        args.dataset, args.data_path, args.batch_size, args.num_workers, spec.preset,
        use_validation=not args.use_test, split_classes=args.split_classes,
        download=args.download, label_arr=args.label_arr, loader=args.loader, device=device,
        seed=args.seed,
    )  # fmt: skip
    num_train = loaders["train"].num_examples
    noise_factor = args.noise_factor if args.noise_factor is not None else 1 / math.sqrt(num_train)
    model = spec.build(num_classes).to(device)
    optimizer = SGLD(
        model.parameters(), args.lr_init, noise_factor, args.wd, derived_generator(args.seed, 1)
    )
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs) if args.cosine else None
    )
    bank = SampleBank(model)
    cli.record_invocation(out, args, __file__, argv)
    rows: list[str] = []
    for epoch in range(args.epochs):
        loaders["train"].set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        with tqdm(total=len(loaders["train"]), desc=f"epoch {epoch + 1}/{args.epochs}",
                  leave=False, file=sys.stderr, disable=None) as bar:  # fmt: skip
            try:
                result = training.train_epoch(
                    loaders["train"], model, optimizer, device, args.prior_var, num_train,
                    progress=bar,
                )  # fmt: skip
            except training.DivergenceError:
                raise UserError(
                    f"SGLD diverged in epoch {epoch + 1} (the loss became NaN); lower --lr_init"
                ) from None
        if schedule is not None:
            schedule.step()
        kept = thinning.keeps(epoch + 1)
        if kept:
            bank.collect()
        row = {"ep": epoch + 1, "lr": lr, "tr_loss": result["loss"],
               "tr_acc": 100 * result["accuracy"], "kept": kept}  # fmt: skip
        rows.append(json.dumps(row))
        atomic_write_text(out / "metrics.jsonl", "\n".join(rows) + "\n")
        tqdm.write(f"epoch {epoch + 1}: lr {lr:.3g} loss {row['tr_loss']:.4f} "
                   f"acc {row['tr_acc']:.2f}%{' (kept)' if kept else ''}")  # fmt: skip
    config = {"model": args.model, "num_classes": num_classes, "args": vars(args),
              "noise_factor": noise_factor, "num_train": num_train}  # fmt: skip
    bank.save(out / "samples.pt", config=config)
    results = {**bma_scores(args, bank, loaders, device), "noise_factor": noise_factor}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    print(f"BMA of {results['num_samples']} SGLD samples: test NLL {results['bma_nll']:.4f}, "
          f"accuracy {results['bma_acc']:.2f}%")  # fmt: skip
    return 0


if __name__ == "__main__":
    cli.run_main(main)
