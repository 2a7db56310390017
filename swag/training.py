"""Training and evaluation loops, BatchNorm updates, the learning-rate schedule, checkpoints.

Loaders yield `(inputs, targets)` batches; `inputs` may already live on `device` (the
tensor-resident loader of `swag.data`), in which case moving them is free.
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from swag import distributed
from swag.errors import UserError


class DivergenceError(UserError):
    """The training loss became NaN or infinite."""


def learning_rate_factor(
    epoch: int,
    epochs: int,
    swag: bool = False,
    swag_start: float = 161,
    swag_lr_ratio: float = 0.01,
) -> float:
    """The original piecewise-linear schedule (docs/original_code.md), a factor of `--lr_init`.

    With t = epoch / (swag_start if swag else epochs) and r = swag_lr/lr_init (SWAG) or 0.01:
    factor = 1 for t ≤ 0.5;  1 − (1 − r)(t − 0.5)/0.4 for 0.5 < t ≤ 0.9;  r afterwards.
    `epoch` is 0-indexed and the factor applies to the whole epoch.
    """
    t = epoch / (swag_start if swag else epochs)
    ratio = swag_lr_ratio if swag else 0.01
    if t <= 0.5:
        return 1.0
    if t <= 0.9:
        return 1.0 - (1.0 - ratio) * (t - 0.5) / 0.4
    return ratio


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def gaussian_prior_penalty(model: nn.Module, prior_var: float, num_train: int) -> torch.Tensor:
    """Σ_p ‖p‖² / (2·prior_var·N): the negative log N(0, prior_var·I) prior per training example.

    Added to the mean cross-entropy it makes the minibatch loss an unbiased estimate of the
    negative log posterior divided by N (over all parameters, BN and biases included, as upstream).
    """
    squared_norm = sum(p.pow(2).sum() for p in model.parameters())
    return squared_norm / (2.0 * prior_var * num_train)


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def cross_entropy(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy in float32, logits [B, C]); the forward pass under bf16 autocast."""
    with _autocast(inputs.device, bf16):
        logits = model(inputs)
    return F.cross_entropy(logits.float(), targets), logits


LOSSES = ("CE", "adv_CE")  # the original's --loss choices


def adversarial_cross_entropy(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    epsilon: float = 0.01,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's `--loss adv_CE`: clean and FGSM-perturbed cross-entropy, averaged.

    Lakshminarayanan et al. (2017), Algorithm 1, with the step scaled by the batch's range:
        x_adv = x + ε·(max x − min x)·sign(∇_x CE(f(x), y)),
        loss  = ½·[CE(f(x), y) + CE(f(x_adv), y)].
    x_adv is treated as data (no gradient flows through the attack into the weights).

    Returns:
        (loss, clean logits [B, C]).
    """
    data = inputs.detach()
    inputs = data.detach().requires_grad_(True)  # shares storage with `data`
    clean_loss, logits = cross_entropy(model, inputs, targets, bf16)
    (input_grad,) = torch.autograd.grad(clean_loss, inputs, retain_graph=True)
    step = epsilon * (data.max() - data.min())
    adversarial_loss, _ = cross_entropy(model, data + step * input_grad.sign(), targets, bf16)
    return 0.5 * (clean_loss + adversarial_loss), logits


def train_epoch(
    loader: Iterable,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    prior_var: float | None = None,
    num_train: int | None = None,
    bf16: bool = False,
    progress=None,
    loss: str = "CE",
) -> dict[str, float]:
    """One pass of SGD over `loader` with the mean cross-entropy (+ the prior penalty).

    `loss="adv_CE"` trains on `adversarial_cross_entropy` instead (the original's option).

    Under torchrun, `model` is the DistributedDataParallel wrapper and `loader` this rank's
    shard (`loader.world` > 1): the shard's loss is scaled by n_k·w/B_t so that the averaged
    gradient is that of the global batch (swag.distributed), and the returned figures are
    sums over every rank.

    Returns:
        {"loss": mean training loss including the prior penalty, "accuracy": fraction}.

    Raises:
        DivergenceError: the loss became non-finite during the epoch.
    """
    if loss not in LOSSES:
        raise UserError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    device = torch.device(device)
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    world = getattr(loader, "world", 1)
    for step, (inputs, targets) in enumerate(loader):
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        objective = adversarial_cross_entropy if loss == "adv_CE" else cross_entropy
        batch_loss, logits = objective(model, inputs, targets, bf16=bf16)
        if prior_var is not None:
            batch_loss = batch_loss + gaussian_prior_penalty(model, prior_var, num_train)
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            batch_size, count = loader.batch_size, loader.num_examples
            scale = distributed.loss_scale(targets.shape[0], step, batch_size, count)
            (batch_loss * scale).backward()
        else:
            batch_loss.backward()
        optimizer.step()
        loss_sum += batch_loss.detach() * targets.shape[0]
        correct += (logits.detach().argmax(1) == targets).sum()
        seen += targets.shape[0]
        if progress is not None:
            progress.update(1)
    seen = torch.tensor(float(seen), device=device, dtype=torch.float64)
    totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.double(), seen]))
    loss_sum, correct, seen = totals.tolist()
    mean_loss = loss_sum / max(seen, 1)
    if not torch.isfinite(torch.tensor(mean_loss)):
        raise DivergenceError("the training loss became NaN or infinite")
    return {"loss": mean_loss, "accuracy": correct / max(seen, 1)}


@torch.no_grad()
def predict(
    loader: Iterable, model: nn.Module, device: torch.device | str, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities of `model` in eval mode.

    Returns:
        probs [N, C] float32 on CPU, targets [N] long on CPU.
    """
    device = torch.device(device)
    model.eval()
    all_probs, all_targets = [], []
    for inputs, targets in loader:
        with _autocast(device, bf16):
            logits = model(inputs.to(device, non_blocking=True))
        all_probs.append(torch.softmax(logits.float(), dim=1).cpu())
        all_targets.append(targets.cpu())
    return torch.cat(all_probs), torch.cat(all_targets).long()


def evaluate(loader: Iterable, model: nn.Module, device: torch.device | str) -> dict[str, float]:
    """Mean cross-entropy and accuracy (fraction) of `model` in eval mode."""
    probs, targets = predict(loader, model, device)
    log_probs = probs.double().clamp_min(1e-12).log()
    return {
        "loss": float(F.nll_loss(log_probs, targets)),
        "accuracy": float((probs.argmax(1) == targets).double().mean()),
    }


def _batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.inference_mode()
def update_bn(
    loader: Iterable,
    model: nn.Module,
    device: torch.device | str,
    subset: int | None = None,
    generator: torch.Generator | None = None,
    bf16: bool = False,
) -> None:
    """Recompute BatchNorm running statistics as the example-weighted average over `loader`.

    As upstream's `bn_update` (docs/original_code.md): statistics are reset, then batch b of size
    B_b is folded in with momentum B_b / (n + B_b), n the examples seen so far, so the result is
    the cumulative average over examples of the per-batch mean and unbiased variance. The model
    is left in train mode. A model without BatchNorm is returned untouched.

    Args:
        subset: use only this many examples: a fixed random subset (see
            `swag.data.TensorLoader.subset`) when the loader supports it, else its first batches.
        generator: chooses the subset when the loader supports fixed subsets.
        bf16: run the convolutions under bfloat16 autocast (BatchNorm itself stays float32).
    """
    layers = _batchnorm_layers(model)
    if not layers:
        return
    if subset is not None and hasattr(loader, "subset"):
        loader = loader.subset(subset, generator=generator)
    device = torch.device(device)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
    model.train()
    seen = 0
    for inputs, _ in loader:
        if subset is not None and seen >= subset:
            break
        batch = inputs.shape[0]
        for layer in layers:
            layer.momentum = batch / (seen + batch)
        with _autocast(device, bf16):
            model(inputs.to(device, non_blocking=True))
        seen += batch
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True`; unreadable or foreign files raise UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the path of a .pt file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower():  # weights_only refused a class or function
            raise UserError(
                f"{path} contains pickled code or objects and was refused (loaded with "
                "weights_only=True); only load checkpoints written by this project or the "
                "original repository, from a source you trust"
            ) from error
        raise UserError(
            f"{path} is not a PyTorch checkpoint; pass a checkpoint-<e>.pt or swag-<e>.pt"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError) as error:
        raise UserError(
            f"{path} is truncated or not a PyTorch checkpoint; pass an intact checkpoint-<e>.pt "
            "or swag-<e>.pt (an interrupted save leaves the previous checkpoint intact)"
        ) from error
    if not isinstance(state, Mapping):
        raise UserError(
            f"{path} does not hold a checkpoint dictionary; pass a .pt written by run_swag.py"
        )
    return dict(state)


def load_model_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """`model.load_state_dict` with a one-sentence error for a checkpoint of another model."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise UserError(
            f"{source} was saved from a different model or number of classes; build the model "
            "with the architecture and number of classes it was trained with"
        ) from error
