"""Fit a Laplace posterior to a run_swag.py checkpoint and report its log marginal likelihood.

The network is linearised at the checkpoint's weights in eval mode (BatchNorm at MAP), the
generalised Gauss-Newton curvature is summed over the unaugmented training set with the labels
the network was trained on (`--label_arr` for corrupted labels), and the prior precision δ of
N(0, 1/δ I) is optimised on the evidence (`--optimize_prior`). Writes to --out:

    laplace-<e>.pt    the posterior (swag.posteriors.base.load; eval_multiswag --method laplace)
    laplace-<e>.json  evidence: log marginal likelihood (total and per example), log likelihood,
                      log prior, log det of the posterior precision, δ, train accuracy, P, N
    fit_laplace.sh, fit_laplace_config.json

    python experiments/train/fit_laplace.py --checkpoint runs/lenet/checkpoint-20.pt \
        --model LeNet5 --dataset FashionMNIST --data_path /work/main/data --use_test \
        --hessian kron --subset all --optimize_prior layerwise --out runs/lenet/laplace
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

from swag import cli, data, io, models, training  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.posteriors import curvature  # noqa: E402
from swag.posteriors.laplace import HESSIANS, PRIOR_MODES, Laplace  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint-<e>.pt of run_swag.py")
    parser.add_argument("--model", required=True, help="registry name it was trained with")
    cli.add_data_arguments(parser)
    cli.add_runtime_arguments(parser)
    parser.add_argument("--hessian", default="kron", help="diag or kron (default: kron)")
    parser.add_argument("--subset", default="all", help="all or last_layer (default: all)")
    parser.add_argument(
        "--prior_precision", type=float, default=1.0, help="δ of N(0, 1/δ I), or its start"
    )
    parser.add_argument(
        "--optimize_prior", default="layerwise", help="none, scalar or layerwise (default)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    validate(args)
    return args


def validate(args: argparse.Namespace) -> None:
    """Flag checks that need no data (nothing is written before they pass)."""
    if args.hessian not in HESSIANS:
        raise UserError(f"unknown --hessian {args.hessian!r}; choose diag or kron")
    if args.subset not in curvature.SUBSETS:
        raise UserError(f"unknown --subset {args.subset!r}; choose all or last_layer")
    if args.optimize_prior not in PRIOR_MODES:
        raise UserError(f"unknown --optimize_prior {args.optimize_prior!r}; choose none, scalar "
                        "or layerwise")  # fmt: skip
    if not args.prior_precision > 0:
        raise UserError(f"--prior_precision must be positive; got {args.prior_precision:g}")
    if args.dataset not in data.DATASETS:
        raise UserError(
            f"unknown --dataset {args.dataset!r}; choose one of {', '.join(data.DATASETS)}"
        )
    models.get_model(args.model)


def load_weights(path: str, device) -> tuple[Mapping, int]:
    """The model weights and epoch of a run_swag.py checkpoint."""
    state = training.load_checkpoint(path, map_location=device)
    weights = state.get("state_dict")
    # run_swag.py tags its checkpoints with kind "checkpoint"; older ones carry no kind
    if (
        state.get("kind", "checkpoint") != "checkpoint"
        or not isinstance(weights, Mapping)
        or "epoch" not in state
    ):
        raise UserError(
            f"{path} is not a model checkpoint; pass a checkpoint-<e>.pt written by run_swag.py"
        )
    return weights, int(state["epoch"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.resolve_device(args.device)
    weights, epoch = load_weights(args.checkpoint, device)
    spec = models.get_model(args.model)
    loaders, num_classes = data.loaders(
        args.dataset, args.data_path, args.batch_size, args.num_workers, spec.preset,
        use_validation=not args.use_test, split_classes=args.split_classes,
        download=args.download, label_arr=args.label_arr, seed=args.seed,
    )  # fmt: skip
    images, targets = loaders["train"].images, loaders["train"].targets
    # unaugmented and in order: the training data the evidence is about
    if args.loader == "fast":
        train = data.TensorLoader(
            images, targets, spec.preset, args.batch_size, False, False, device
        )
    else:
        train = data.TorchvisionLoader(
            images, targets, spec.preset, args.batch_size, False, False, args.num_workers
        )
    model = spec.build(num_classes).to(device)
    training.load_model_state(model, weights, args.checkpoint)
    posterior = Laplace(model, args.hessian, args.subset, prior_precision=args.prior_precision)
    out = Path(args.out)
    cli.record_invocation(out, args, __file__, argv, name="fit_laplace")
    start = time.perf_counter()
    posterior.fit(train, progress=True)
    posterior.optimize_prior_precision(args.optimize_prior)
    seconds = time.perf_counter() - start
    evidence = posterior.evidence()
    evidence.update(
        train_accuracy=training.evaluate(train, model, device)["accuracy"],
        hessian=args.hessian, subset=args.subset, optimize_prior=args.optimize_prior,
        checkpoint=str(args.checkpoint), epoch=epoch, fit_seconds=seconds,
    )  # fmt: skip
    posterior.save(out / f"laplace-{epoch}.pt", epoch=epoch, config={"model": args.model,
                   "num_classes": num_classes, "args": vars(args)})  # fmt: skip
    io.atomic_write_text(out / f"laplace-{epoch}.json", json.dumps(evidence, indent=2) + "\n")
    delta = ", ".join(f"{value:.4g}" for value in evidence["prior_precision"][:4])
    print(
        f"log marginal likelihood {evidence['log_marginal_likelihood']:.2f} "
        f"({evidence['log_marginal_likelihood_per_example']:.4f} per example; log likelihood "
        f"{evidence['log_likelihood']:.2f}, log prior {evidence['log_prior']:.2f}, log det "
        f"{evidence['log_det_posterior_precision']:.2f}); δ = {delta}"
        f"{' ...' if len(evidence['prior_precision']) > 4 else ''}; train accuracy "
        f"{evidence['train_accuracy']:.4f}; P = {evidence['num_params']}, "
        f"N = {evidence['num_data']}; {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    cli.run_main(main)
