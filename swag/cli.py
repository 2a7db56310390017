"""Flag groups shared by the experiment scripts (the upstream flag vocabulary), and the wrapper
that turns a `UserError` into one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from swag import distributed
from swag.errors import UserError
from swag.io import atomic_write_text


def _number(kind: type, low: float | None, low_open: bool, high: float | None, what: str):
    """An argparse `type` that parses `kind` and checks its range at parse time."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high) or value != value:  # NaN
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, False, None, "a positive integer")
non_negative_int = _number(int, 0, False, None, "an integer >= 0")
positive_float = _number(float, 0, True, float("inf"), "a positive number")
non_negative_float = _number(float, 0, False, float("inf"), "a number >= 0")
momentum_value = _number(float, 0, False, 0.999999, "a momentum in [0, 1)")


def severity(text: str) -> int:
    """A corruption severity, 1..5."""
    return _number(int, 1, False, 5, "a severity from 1 to 5")(text)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `error: ...`, and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset", default="CIFAR10", help="CIFAR10, CIFAR100, MNIST, FashionMNIST or SVHN"
    )
    group.add_argument(
        "--data_path", required=True, metavar="PATH", help="datasets live in PATH/<dataset lower>"
    )
    group.add_argument(
        "--use_test",
        action="store_true",
        help="evaluate on the test set (default: last 5000 training images)",
    )
    group.add_argument(
        "--split_classes", type=int, choices=(0, 1), default=None,
        help="CIFAR10 only: train on classes half 0 or 1",
    )  # fmt: skip
    group.add_argument("--batch_size", type=positive_int, default=128, metavar="N")
    group.add_argument(
        "--num_workers", type=non_negative_int, default=4, metavar="N",
        help="workers of --loader torchvision",
    )  # fmt: skip
    group.add_argument(
        "--label_arr", default=None, metavar="PATH", help=".npy of replacement training labels"
    )
    group.add_argument(
        "--download", action="store_true", help="let torchvision download the dataset"
    )
    group.add_argument(
        "--loader",
        default="fast",
        choices=["fast", "torchvision"],
        help="fast: device-resident tensors with batched augmentation; torchvision: DataLoader",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    group.add_argument(
        "--seed", type=non_negative_int, default=1, metavar="S", help="random seed (default: 1)"
    )


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("torchrun (several processes; see swag/distributed.py)")
    group.add_argument(
        "--dist_backend", choices=distributed.BACKENDS, default=None,
        help="process-group backend under torchrun (default: nccl on GPUs, gloo on CPUs)",
    )  # fmt: skip
    group.add_argument(
        "--dist_timeout", type=positive_float, default=1800.0, metavar="SECONDS",
        help="how long a process waits for the others before it stops (default: 1800)",
    )  # fmt: skip


def resolve_device(name: str | None) -> torch.device:
    """The device of this process: under torchrun, GPU LOCAL_RANK for `cuda` (or the default)."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"unknown --device {name!r}; pass cpu, cuda or cuda:<index>") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is visible; pass --device cpu")
    if device.type != "cuda" or distributed.env_world_size() == 1:
        return device
    if device.index is not None:
        raise UserError(
            f"--device {name} names one GPU but torchrun gives each process its own; pass "
            "--device cuda (process LOCAL_RANK takes GPU LOCAL_RANK)"
        )
    index = distributed.local_rank()
    if index >= torch.cuda.device_count():
        raise UserError(
            f"process LOCAL_RANK={index} has no GPU of its own ({torch.cuda.device_count()} "
            "visible); start at most one process per GPU (--nproc_per_node)"
        )
    return torch.device("cuda", index)


def record_invocation(
    directory: str | Path,
    args: argparse.Namespace,
    script: str | Path,
    argv: list[str] | None = None,
    name: str = "command",
) -> None:
    """Write `<name>.sh`, the command that reproduces the run, and its flag values as JSON.

    `argv` is what `main(argv)` received (None: the process's own arguments), so a run started
    from Python records the equivalent shell command. The JSON is `config.json` for the
    training command and `<name>_config.json` otherwise, so an evaluation in a training
    directory does not overwrite the training configuration.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    parts = ["python", os.path.relpath(Path(script).resolve()), *arguments]
    atomic_write_text(Path(directory) / f"{name}.sh", shlex.join(parts) + "\n")
    config_name = "config.json" if name == "command" else f"{name}_config.json"
    text = json.dumps(vars(args), indent=2, default=str) + "\n"
    atomic_write_text(Path(directory) / config_name, text)


def run_main(main: Callable[[list[str] | None], int | None]) -> None:
    """Run a script's `main`, turning a `UserError` into `error: ...` and exit status 2."""
    try:
        status = main(None)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "interrupted: completed checkpoints are intact; resume with --resume", file=sys.stderr
        )
        sys.exit(130)
    sys.exit(status or 0)
