"""Runs spread over processes started by `torchrun`: the process group, ranks and collectives.

`torchrun --nproc_per_node=N script.py ...` starts N processes and tells each its place through
the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). A process started
without them (plain `python script.py`) is a world of one: every helper here is then a no-op
and the drivers do exactly what they do in one process.

Data-parallel SGD (training). A global batch of B examples is split into w shards, shard k
holding examples k, k+w, k+2w, ... of the batch (n_k of them). Rank k minimises its shard's
mean loss times n_k·w/B and DistributedDataParallel averages the gradients over the ranks:

    (1/w) Σ_k (n_k·w/B) ∇ (1/n_k) Σ_{i∈k} ℓ_i = (1/B) Σ_{i∈batch} ∇ ℓ_i,

the gradient one process computes on the same B examples, short last batch included. Every
rank draws the permutation and the augmentation of the whole epoch from the same generator and
keeps its shard, so the examples and their crops are those of the one-process run.

Sample-parallel model averaging (evaluation): draw d = m·S + s of the M×S draws runs on rank
d mod w, each seeded by (member, sample) alone, and the per-member sums of probabilities are
added over the ranks (float64), so the average does not depend on w.

A rank that stops (crash, kill, error) makes the collectives of the others fail, or time out
after `timeout_s`; `process_group` turns that into one `UserError` sentence on every survivor.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import signal
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from swag.errors import UserError

BACKENDS = ("gloo", "nccl")


def env_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), readable before init."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        raise UserError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; start the script with "
            "torchrun, or unset WORLD_SIZE"
        ) from None


def local_rank() -> int:
    """This process's index on its machine (LOCAL_RANK; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if env_world_size() > 1 else 0


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def check_launch(batch_size: int | None, backend: str | None) -> None:
    """Parse-time checks of a torchrun launch: batch divisible by the world, NCCL on GPUs."""
    world = env_world_size()
    if batch_size is not None and batch_size % world:
        raise UserError(
            f"--batch_size {batch_size} is not divisible by the {world} processes of torchrun; "
            f"pass a multiple of {world} (it is the global batch, split evenly over processes)"
        )
    if backend == "nccl" and not torch.cuda.is_available():
        raise UserError(
            "--dist_backend nccl needs CUDA GPUs and none is visible; pass --dist_backend gloo"
        )


def check_last_batch(num_examples: int, batch_size: int, world: int) -> None:
    """Every shard of the last, short global batch must hold at least one example."""
    last = num_examples % batch_size
    if world > 1 and 0 < last < world:
        raise UserError(
            f"the last batch of {last} of the {num_examples} training examples cannot be split "
            f"over {world} processes; choose a --batch_size that leaves no remainder or one "
            f"of at least {world}"
        )


def shard_view(loader, rank: int, world: int):
    """`loader` seen by process `rank` of `world`: a shallow copy (the data is shared) whose
    `rank` and `world` attributes make it yield its shard of every global batch."""
    if world == 1:
        return loader
    check_last_batch(loader.num_examples, loader.batch_size, world)
    part = copy.copy(loader)
    part.rank, part.world = rank, world
    return part


def default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _lost_contact(error: BaseException, timeout_s: float) -> UserError:
    return UserError(
        f"process {rank()} of {world_size()} lost contact with another process of the run (it "
        f"stopped, failed, or did not answer within {timeout_s:g} s: --dist_timeout); see the "
        "first error printed by the others; every checkpoint already written is intact, so "
        f"resume from the newest with --resume ({type(error).__name__})"
    )


def _terminated(signum, frame) -> None:
    raise UserError(
        "stopped by a termination signal (torchrun stops every process when one fails); "
        "every checkpoint already written is intact, so resume from the newest with --resume"
    )


@contextlib.contextmanager
def process_group(backend: str, timeout_s: float, device: torch.device) -> Iterator[None]:
    """Join torchrun's process group for the duration of the block (nothing without torchrun).

    A failed collective (a peer died or timed out) leaves the block as a `UserError`; the group
    is destroyed on the way out, after a final barrier when the block succeeded.
    """
    if env_world_size() == 1:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        dist.init_process_group(backend, timeout=timeout)
    except (RuntimeError, ValueError) as error:
        raise UserError(
            f"could not join torchrun's process group with backend {backend} ({error}); start "
            "the script with torchrun, or with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set"
        ) from error
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
        dist.barrier()
    except dist.DistError as error:
        raise _lost_contact(error, timeout_s) from None
    except RuntimeError as error:  # gloo reports a closed peer as a plain RuntimeError
        if "gloo" not in str(error).lower() and "connection" not in str(error).lower():
            raise
        raise _lost_contact(error, timeout_s) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(RuntimeError, dist.DistError):
            dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over every rank (returned; `tensor` itself is left unchanged).

    NCCL reduces on the rank's GPU, so a CPU tensor makes the round trip; float64 stays float64.
    """
    if world_size() == 1:
        return tensor
    on_gpu = dist.get_backend() == "nccl"
    work = tensor.to(f"cuda:{torch.cuda.current_device()}" if on_gpu else "cpu", copy=True)
    dist.all_reduce(work)
    return work.to(tensor.device)


def loss_scale(local_size: int, step: int, batch_size: int, num_examples: int) -> float:
    """n_k·w/B_t: the factor that turns DDP's average of shard means into the global-batch mean.

    Args:
        local_size: n_k, this rank's examples in global batch `step`.
        batch_size: the global batch size B; the batch of `step` holds
            B_t = min(B, num_examples − step·B) examples.
    """
    global_size = min(batch_size, num_examples - step * batch_size)
    return local_size * world_size() / global_size


def data_parallel(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """`model` wrapped in DistributedDataParallel (itself in one process).

    Train through the wrapper; evaluate, collect SWAG moments and save the unwrapped `model`,
    so checkpoints keep the one-process parameter names (no `module.` prefix).
    """
    if world_size() == 1:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def my_draw(draw: int) -> bool:
    """Whether draw d (= m·S + s) of a model average runs on this rank (d mod w)."""
    return draw % world_size() == rank()
