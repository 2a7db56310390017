"""Train a network with SGD, and collect SWA/SWAG moments after --swag_start.

The original `experiments/train/run_swag.py` with the same flags and defaults
(docs/original_code.md), plus --swa* aliases, --device, --loader, --download and exact
resumption, and data-parallel training under torchrun (`torchrun --nproc_per_node=N
experiments/train/run_swag.py ...`: --batch_size stays the global batch; rank 0 alone collects
SWAG moments, evaluates and writes, in the one-process format; swag/distributed.py). Writes
to --dir: command.sh, config.json, metrics.jsonl, checkpoint-<e>.pt, swag-<e>.pt,
sgd_ens_preds.npz.

    python experiments/train/run_swag.py --data_path=<DATAPATH> --epochs=300 --dataset=CIFAR10 \
        --save_freq=300 --model=PreResNet20 --lr_init=0.1 --wd=3e-4 --swag --swag_start=161 \
        --swag_lr=0.01 --cov_mat --use_test --dir=<DIR>
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402
from tqdm import tqdm  # noqa: E402

from swag import cli, data, distributed, metrics, models, posteriors, speed, training  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.io import (  # noqa: E402
    append_line,
    atomic_savez,
    atomic_write_text,
    locked_directory,
    output_directory,
    read_lines,
)
from swag.posteriors import SWAG, Checkpoint  # noqa: E402
from swag.seeding import derived_seed  # noqa: E402

COLUMNS = [
    "ep",
    "lr",
    "tr_loss",
    "tr_acc",
    "te_loss",
    "te_acc",
    "swa_te_loss",
    "swa_te_acc",
    "sgd_ens_nll",
    "sgd_ens_acc",
    "time",
    "mem_usage",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description="SGD/SWA/SWAG training")
    parser.add_argument("--dir", required=True, help="output directory")
    cli.add_data_arguments(parser)
    parser.add_argument(
        "--model", required=True, help="registry name, e.g. PreResNet20, VGG16, LeNet5"
    )
    parser.add_argument("--resume", default=None, help="checkpoint-<e>.pt to resume from")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="start afresh in a --dir that holds another run's files (deletes them)",
    )  # fmt: skip
    parser.add_argument("--epochs", type=cli.positive_int, default=200)
    parser.add_argument("--save_freq", type=cli.positive_int, default=25)
    parser.add_argument("--eval_freq", type=cli.positive_int, default=5)
    parser.add_argument("--lr_init", type=cli.positive_float, default=0.01)
    parser.add_argument("--momentum", type=cli.momentum_value, default=0.9)
    parser.add_argument(
        "--wd", type=cli.non_negative_float, default=1e-4, help="SGD weight decay (all parameters)"
    )
    parser.add_argument(
        "--prior_var", type=cli.positive_float, default=None, help="Gaussian prior variance"
    )
    parser.add_argument("--swag", "--swa", dest="swag", action="store_true")
    parser.add_argument(
        "--swag_start", "--swa_start", dest="swag_start", type=cli.positive_float, default=161
    )
    parser.add_argument(
        "--swag_lr", "--swa_lr", dest="swag_lr", type=cli.positive_float, default=0.02
    )
    parser.add_argument(
        "--swag_c_epochs", "--swa_c_epochs", dest="swag_c_epochs", type=cli.positive_int,
        default=1,
    )  # fmt: skip
    parser.add_argument("--cov_mat", action="store_true", help="keep the low-rank deviation matrix")
    parser.add_argument("--max_num_models", type=cli.non_negative_int, default=20)
    parser.add_argument("--swag_resume", default=None, help="swag-<e>.pt to resume from")
    parser.add_argument(
        "--loss", default="CE", choices=training.LOSSES,
        help="CE, or adv_CE: clean + FGSM cross-entropy averaged (epsilon 0.01 of the input range)",
    )  # fmt: skip
    parser.add_argument("--no_schedule", action="store_true", help="constant learning rate")
    parser.add_argument(
        "--save_iterates", action="store_true", help="save a checkpoint every epoch"
    )
    parser.add_argument("--inference", default="low_rank_gaussian")
    parser.add_argument("--subspace", default="covariance")
    speed_flags = parser.add_argument_group("speed (see benchmarks/README.md)")
    speed_flags.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None,
        help="bfloat16 autocast of forward/backward matrix products (default: on where the "
        "device has fast bf16; weights, optimiser state and SWAG moments stay full precision)",
    )  # fmt: skip
    speed_flags.add_argument(
        "--channels_last", action=argparse.BooleanOptionalAction, default=True,
        help="channels_last memory format for images and convolutions (default: on)",
    )  # fmt: skip
    speed_flags.add_argument(
        "--threads", type=cli.positive_int, default=None, help="CPU threads for torch"
    )
    cli.add_runtime_arguments(parser)
    cli.add_distributed_arguments(parser)
    parser.add_argument(
        "--sync_bn", action="store_true",
        help="under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    validate(args)
    return args


def validate(args: argparse.Namespace) -> None:
    if args.inference != "low_rank_gaussian":
        raise UserError(f"--inference {args.inference} is not supported; drop the flag")
    if args.subspace != "covariance":
        raise UserError(f"--subspace {args.subspace} is not supported; drop the flag")
    if args.swag and not 0 < args.swag_start < args.epochs:
        raise UserError(
            f"--swag_start must lie strictly between 0 and --epochs ({args.epochs}); "
            f"got {args.swag_start:g}"
        )
    models.get_model(args.model)
    distributed.check_launch(args.batch_size, args.dist_backend)
    if args.sync_bn and distributed.env_world_size() > 1 and not torch.cuda.is_available():
        raise UserError("--sync_bn needs GPUs (SyncBatchNorm runs on CUDA only); drop the flag")
    if args.dataset not in data.DATASETS:
        raise UserError(
            f"unknown --dataset {args.dataset!r}; choose one of: {', '.join(data.DATASETS)}"
        )
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite deletes it; pass only one")
    for flag, path in (("--resume", args.resume), ("--swag_resume", args.swag_resume)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{flag} {path} does not exist; pass an existing file")


def resume(args, run: dict, device: torch.device) -> int:
    """Restore training, SWAG and SGD-ensemble state; returns the number of completed epochs."""
    state = training.load_checkpoint(args.resume, map_location=device)
    try:
        kind = posteriors.detect_kind(state, args.resume)
    except UserError:
        kind = None
    if kind == "swag":
        raise UserError(
            f"{args.resume} is a SWAG file; pass it with --swag_resume, and the "
            "checkpoint-<e>.pt of the same epoch with --resume"
        )
    if kind != "checkpoint" or "epoch" not in state:
        raise UserError(f"{args.resume} is not a checkpoint-<e>.pt of run_swag.py; pass one")
    training.load_model_state(run["model"], state["state_dict"], args.resume)
    if "optimizer" in state:
        run["optimizer"].load_state_dict(state["optimizer"])
    epoch = int(state["epoch"])
    swag_model = run["swag_model"]
    swag_path = Path(args.swag_resume or Path(args.resume).with_name(f"swag-{epoch}.pt"))
    if swag_model is not None and (args.swag_resume or swag_path.exists()):
        swag_state = training.load_checkpoint(swag_path, map_location=device)
        if posteriors.detect_kind(swag_state, str(swag_path)) != "swag":
            raise UserError(f"{swag_path} is not a swag-<e>.pt; pass one with --swag_resume")
        if "epoch" in swag_state and int(swag_state["epoch"]) != epoch:
            raise UserError(
                f"{swag_path} is from epoch {int(swag_state['epoch'])} but {args.resume} from "
                f"epoch {epoch}; pass the swag-{epoch}.pt of the same epoch with --swag_resume"
            )
        training.load_model_state(swag_model, swag_state["state_dict"], str(swag_path))
        if "sgd_ensemble" in swag_state:
            run["sgd_ensemble"].load_state_dict(swag_state["sgd_ensemble"])
    elif swag_model is not None and epoch > args.swag_start:
        raise UserError(
            f"{swag_path} is missing; pass the SWAG checkpoint of epoch {epoch} with --swag_resume"
        )
    return epoch


def truncate_metrics_log(path: Path, completed_epochs: int) -> None:
    """Keep the rows of epochs up to the resumed checkpoint (later ones are about to be rerun);
    a torn last line, left by a kill during the append, is dropped."""
    kept = []
    for line in read_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("ep", completed_epochs + 1) <= completed_epochs:
            kept.append(line)
    if path.exists():
        atomic_write_text(path, "".join(line + "\n" for line in kept))


RUN_FILES = ("checkpoint-*.pt", "swag-*.pt", "metrics.jsonl", "sgd_ens_preds.npz")


def claim_directory(out: Path, args) -> None:
    """A new run refuses a folder holding another run's files, unless --overwrite clears them.

    A lone swag-0.pt (no checkpoint, no metrics) is what a run killed in its first save leaves:
    it holds no collected model, so it is cleared without asking.
    """
    found = sorted(path for pattern in RUN_FILES for path in out.glob(pattern))
    debris = [out / "swag-0.pt"] if found == [out / "swag-0.pt"] else []
    if found and not debris and not args.overwrite:
        raise UserError(
            f"{out} holds another run ({found[0].name}, ...); resume it with --resume "
            f"{out}/checkpoint-<e>.pt, choose a new --dir, or pass --overwrite to delete it"
        )
    for path in found:
        path.unlink()


def should_collect(args, epoch: int) -> bool:
    """Upstream's rule: collect at the end of epochs with epoch+1 > swag_start, every c epochs."""
    after_start = epoch + 1 - args.swag_start
    return args.swag and after_start > 0 and after_start % args.swag_c_epochs == 0


def setup(args: argparse.Namespace, device: torch.device) -> dict:
    """Data, model, optimiser and (with --swag) the SWAG posterior of a run."""
    spec = models.get_model(args.model)
    loaders, num_classes = data.loaders(
        args.dataset, args.data_path, args.batch_size, args.num_workers, spec.preset,
        use_validation=not args.use_test, split_classes=args.split_classes,
        download=args.download, label_arr=args.label_arr, loader=args.loader, device=device,
        seed=args.seed, memory_format=speed.memory_format(args.channels_last),
    )  # fmt: skip
    model = speed.prepare_model(spec.build(num_classes), device, args.channels_last)
    optimizer = speed.make_sgd(model.parameters(), args.lr_init, args.momentum, args.wd, "fused")
    train_model = distributed.data_parallel(model, device, args.sync_bn)
    model = getattr(train_model, "module", model)  # saved and evaluated without `module.`
    train_loader = loaders["train"].shard(distributed.rank(), distributed.world_size())
    swag_model = None
    if args.swag and distributed.is_main():
        swag_base = speed.prepare_model(spec.build(num_classes), device, args.channels_last)
        swag_model = SWAG(swag_base, args.max_num_models, cov_mat=args.cov_mat)
    ensemble = metrics.RunningEnsemble(loaders["test"].num_examples, num_classes)
    config = {"model": args.model, "num_classes": num_classes, "args": vars(args)}
    return dict(loaders=loaders, model=model, optimizer=optimizer, swag_model=swag_model,
                sgd_ensemble=ensemble, config=config, train_model=train_model,
                train_loader=train_loader)  # fmt: skip


def run_epoch(args, run: dict, epoch: int, device: torch.device) -> dict:
    """Train one epoch (every rank), collect SWAG, evaluate (rank 0); returns the epoch's row."""
    loaders, model, swag_model = run["loaders"], run["model"], run["swag_model"]
    factor = training.learning_rate_factor(
        epoch, args.epochs, args.swag, args.swag_start, args.swag_lr / args.lr_init
    )
    lr = args.lr_init * (1.0 if args.no_schedule else factor)
    training.set_learning_rate(run["optimizer"], lr)
    torch.manual_seed(derived_seed(args.seed, epoch))  # dropout draws, reproducible on resume
    run["train_loader"].set_epoch(epoch)
    quiet = None if distributed.is_main() else True  # one progress bar, rank 0's
    with tqdm(total=len(loaders["train"]), desc=f"epoch {epoch + 1}/{args.epochs}",
              leave=False, file=sys.stderr, disable=quiet) as bar:  # fmt: skip
        result = training.train_epoch(
            run["train_loader"], run["train_model"], run["optimizer"], device, args.prior_var,
            loaders["train"].num_examples, args.bf16, bar, args.loss,
        )  # fmt: skip
    row = {"ep": epoch + 1, "lr": lr, "tr_loss": result["loss"], "tr_acc": 100 * result["accuracy"]}
    if not distributed.is_main():
        return row
    loaders["train"].set_epoch(epoch + 1)  # the BN update's augmentation, as in one process
    evaluate_now = epoch == 0 or epoch % args.eval_freq == args.eval_freq - 1
    evaluate_now = evaluate_now or epoch == args.epochs - 1
    if evaluate_now:
        result = training.evaluate(loaders["test"], model, device)
        row.update(te_loss=result["loss"], te_acc=100 * result["accuracy"])
    if should_collect(args, epoch):
        swag_model.collect_model(model)
        probs, targets = training.predict(loaders["test"], model, device)
        ensemble = run["sgd_ensemble"]
        ensemble.update(probs)
        row.update(sgd_ens_nll=metrics.nll(ensemble.probs, targets),
                   sgd_ens_acc=metrics.accuracy(ensemble.probs, targets))  # fmt: skip
        if evaluate_now:
            swag_model.set_swa()
            training.update_bn(loaders["train"], swag_model.base_model, device)
            result = training.evaluate(loaders["test"], swag_model.base_model, device)
            row.update(swa_te_loss=result["loss"], swa_te_acc=100 * result["accuracy"])
    return row


def save(out: Path, run: dict, epoch: int) -> None:
    """swag-<e>.pt (with the SGD ensemble), then checkpoint-<e>.pt, each atomically.

    The checkpoint is written last: a checkpoint-<e>.pt on disk means every file of epoch e is
    complete, so `--resume` of the newest checkpoint always finds its SWAG partner.
    """
    extra = dict(epoch=epoch, config=run["config"])
    if run["swag_model"] is not None:
        ensemble = run["sgd_ensemble"].state_dict()
        run["swag_model"].save(out / f"swag-{epoch}.pt", sgd_ensemble=ensemble, **extra)
    optimizer = run["optimizer"].state_dict()
    Checkpoint(run["model"]).save(out / f"checkpoint-{epoch}.pt", optimizer=optimizer, **extra)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.resolve_device(args.device)
    speed.set_threads(args.threads)
    if args.bf16 is None:
        args.bf16 = speed.bf16_supported(device)
    backend = args.dist_backend or distributed.default_backend(device)
    with distributed.process_group(backend, args.dist_timeout, device):
        if not distributed.is_main():  # the other ranks train and wait; rank 0 writes
            train(args, None, device, argv)
            return 0
        out = output_directory(args.dir, "--dir")
        with locked_directory(out):
            train(args, out, device, argv)
    return 0


def train(args, out: Path | None, device: torch.device, argv: list[str] | None) -> None:
    """The epochs; every rank trains, rank 0 (whose `out` is set) collects, evaluates, writes."""
    torch.manual_seed(args.seed)
    run = setup(args, device)
    main = distributed.is_main()
    start_epoch = 0
    if args.resume:
        start_epoch = resume(args, run, device)
        if main:
            truncate_metrics_log(out / "metrics.jsonl", start_epoch)
    elif main:
        claim_directory(out, args)
        save(out, run, 0)
    # Only once the inputs proved good: a failed start clobbers nothing.
    if main:
        cli.record_invocation(out, args, __file__, argv)
    distributed.barrier()  # the other ranks start once rank 0 has claimed --dir
    last_good = start_epoch
    for epoch in range(start_epoch, args.epochs):
        started = time.time()
        try:
            row = run_epoch(args, run, epoch, device)
        except training.DivergenceError:
            raise UserError(
                f"training diverged in epoch {epoch + 1} (the loss became NaN); "
                f"{Path(args.dir) / f'checkpoint-{last_good}.pt'} is the last good state: "
                "resume from it "
                f"with a lower {'--swag_lr' if in_swag_phase(args, epoch) else '--lr_init'}"
            ) from None
        row.update(time=time.time() - started, mem_usage=speed.peak_memory_gib(device))
        if not main:
            distributed.barrier()  # while rank 0 evaluates and saves
            continue
        print_row(row, header=epoch == start_epoch or epoch % 40 == 0)
        # The row before the checkpoint: a resume truncates rows after its checkpoint.
        append_line(out / "metrics.jsonl", json.dumps(row))
        if (epoch + 1) % args.save_freq == 0 or epoch == args.epochs - 1 or args.save_iterates:
            save(out, run, epoch + 1)
            last_good = epoch + 1
        distributed.barrier()
    if main and args.swag and run["sgd_ensemble"].num_members:
        targets = torch.cat([y.cpu() for _, y in run["loaders"]["test"]]).numpy()
        predictions = run["sgd_ensemble"].probs.numpy()
        atomic_savez(out / "sgd_ens_preds.npz", predictions=predictions, targets=targets)


def in_swag_phase(args, epoch: int) -> bool:
    """Whether the learning rate of `epoch` is already moving toward --swag_lr (t > 0.5)."""
    return args.swag and not args.no_schedule and epoch / args.swag_start > 0.5


def print_row(row: dict, header: bool) -> None:
    values = [[row.get(column) for column in COLUMNS]]
    table = tabulate(values, COLUMNS, tablefmt="simple", floatfmt="8.4f")
    lines = table.split("\n")
    tqdm.write("\n".join(lines if header else lines[2:]))


if __name__ == "__main__":
    cli.run_main(main)
