"""Stochastic gradient Langevin dynamics (Welling & Teh, 2011) as a torch optimizer.

With a loss U(θ) and step size lr, one SGLD step is

    θ ← θ − lr·(∇U(θ) + wd·θ) + noise_factor·√(2·lr)·ξ,    ξ ~ N(0, I),

the update of the original repository's `SGLD` (which drew ξ through `add_` overloads that
torch has since removed); here ξ comes from an explicit `torch.Generator`.

Temperature. For small lr the chain samples exp(−U(θ)/noise_factor²). Training code uses the
*mean* loss over N training points, U = −(1/N)·log p(θ|D) (mean cross-entropy plus
‖θ‖²/(2·α²·N), `swag.training.gaussian_prior_penalty`), so

- noise_factor = 1/√N samples the posterior p(θ|D) (temperature T = 1); in units of the sum
  loss this is ordinary SGLD with step ε = lr/N (what the original priors notebook did);
- noise_factor = √(T/N) samples the tempered posterior p(θ|D)^(1/T);
- noise_factor = 0 is plain gradient descent.

`SampleBank` (swag/posteriors/sample_bank.py) keeps the draws of a chain as a posterior.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from swag.errors import UserError


def sgld_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    noise: torch.Tensor,
    lr: float,
    noise_factor: float,
    weight_decay: float = 0.0,
) -> torch.Tensor:
    """One SGLD step: θ − lr·(g + wd·θ) + noise_factor·√(2·lr)·ξ (all tensors of θ's shape)."""
    drift = grad + weight_decay * param if weight_decay else grad
    return param - lr * drift + noise_factor * math.sqrt(2.0 * lr) * noise


def noise_factor_for(num_train: int, temperature: float = 1.0) -> float:
    """√(T/N): the noise factor that samples the posterior at temperature T under a mean loss."""
    if num_train < 1 or temperature < 0:
        raise UserError(
            f"the SGLD noise factor needs N ≥ 1 and T ≥ 0, got N={num_train}, T={temperature}"
        )
    return math.sqrt(temperature / num_train)


class SGLD(torch.optim.Optimizer):
    """SGLD with the original's signature, plus an explicit noise generator.

    Args:
        params: parameters or parameter groups.
        lr: step size (> 0); set per epoch by a scheduler as with SGD.
        noise_factor: scale of the injected noise (see the module docstring for temperature).
        weight_decay: extra drift wd·θ (a Gaussian prior of variance 1/(wd·N) under a mean
            loss); 0 when the prior is in the loss.
        generator: source of ξ (default: torch's global generator).

    Raises:
        UserError: lr ≤ 0, or a negative noise factor or weight decay.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        noise_factor: float = 1.0,
        weight_decay: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        if not lr > 0:
            raise UserError(f"the SGLD learning rate must be positive, got {lr}; pass lr > 0")
        if noise_factor < 0 or weight_decay < 0:
            raise UserError(
                f"the SGLD noise factor and weight decay must be ≥ 0, got {noise_factor} and "
                f"{weight_decay}"
            )
        defaults = dict(lr=lr, noise_factor=noise_factor, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.generator = generator

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Apply one update to every parameter that has a gradient; returns closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                noise = torch.randn(
                    param.shape, generator=self.generator, device=param.device, dtype=param.dtype
                )
                param.copy_(
                    sgld_update(
                        param,
                        param.grad,
                        noise,
                        group["lr"],
                        group["noise_factor"],
                        group["weight_decay"],
                    )  # fmt: skip
                )
        return loss


def full_batch_sgld(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    prior_var: float,
    num_steps: int,
    lr: float = 1e-3,
    temperature: float = 1.0,
    cosine: bool = True,
    generator: torch.Generator | None = None,
    progress=None,
) -> dict[str, float]:
    """Run SGLD with full-batch gradients on (inputs, targets), the model in train mode.

    The loss is U(θ)/N = mean cross-entropy + ‖θ‖²/(2·prior_var·N), the noise factor
    √(T/N), and the step lr is cosine-annealed to 0 over `num_steps` (the original priors
    notebook: lr 1e-3, 5000 steps, N = 1000). The final state is a draw from (approximately)
    the posterior at temperature T; `model` is left holding it.

    Returns:
        {"loss": final loss U/N (prior term included), "accuracy": final training accuracy}.
    """
    if num_steps < 1 or not prior_var > 0:
        raise UserError(
            f"full-batch SGLD needs at least one step and a positive prior variance, got "
            f"{num_steps} steps and variance {prior_var}"
        )
    num_train = targets.shape[0]
    optimizer = SGLD(
        model.parameters(), lr, noise_factor_for(num_train, temperature), 0.0, generator
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, num_steps) if cosine else None
    model.train()
    for _ in range(num_steps):
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        squared_norm = sum(p.pow(2).sum() for p in model.parameters())
        loss = F.cross_entropy(logits, targets) + squared_norm / (2 * prior_var * num_train)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if progress is not None:
            progress.update(1)
    accuracy = float((logits.argmax(1) == targets).float().mean())
    return {"loss": float(loss.detach()), "accuracy": accuracy}
