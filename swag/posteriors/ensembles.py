"""Deep ensembles trained all at once: M members as one `[M, D]` stack of flat parameters.

Lakshminarayanan et al. (2017); Wilson & Izmailov (2020) read a deep ensemble as a
Bayesian model average over M basins: `p(y | x, D) ≈ (1/M) Σ_m p(y | x, θ_m)`, each θ_m a MAP
estimate from its own random initialisation. Here every member takes the same full-batch SGD
steps as it would alone (the members never interact), but all of them in one batched
computation (`torch.func.functional_call` under `vmap`, see `flat.FlatModel`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from swag.errors import UserError
from swag.posteriors.base import Posterior, register_posterior
from swag.posteriors.flat import FlatModel
from swag.posteriors.hmc import value_and_grad


def initial_members(model: nn.Module, seeds: Sequence[int]) -> Tensor:
    """Fresh default initialisations of `model`, one per seed: `thetas [M, D]`.

    Member m is what `torch.manual_seed(seeds[m])` followed by constructing the model would
    give: every submodule with `reset_parameters` is reset in `model.modules()` order. The
    global RNG state is restored afterwards.
    """
    if len(seeds) == 0:
        raise UserError("pass at least one seed (one per ensemble member)")
    member = copy.deepcopy(model)
    flat = FlatModel(member)
    thetas = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in member.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        thetas.append(flat.flatten())
    return torch.stack(thetas)


def map_loss(
    flat_model: FlatModel,
    thetas: Tensor,
    inputs: Tensor,
    targets: Tensor,
    noise_var: float,
    prior_var: float | None = None,
) -> Tensor:
    """Per-datapoint MAP objective of each member, the original notebooks' loss: `[M, D] -> [M]`.

    `L(θ) = mean_n ||y_n - f_θ(x_n)||² / (2σ²) + ||θ||² / (2 s² N)`, i.e. the negative log
    posterior divided by N (up to constants); without `prior_var` the prior term is dropped
    (the maximum-likelihood pre-training of the HMC and VI notebooks). The mean is over all
    `N × out` target entries, as `F.mse_loss`.
    """
    residuals = flat_model(thetas, inputs) - targets
    loss = residuals.pow(2).flatten(1).mean(1) / (2 * noise_var)
    if prior_var is not None:
        loss = loss + thetas.pow(2).sum(1) / (2 * prior_var * inputs.shape[0])
    return loss


def train_members(
    flat_model: FlatModel,
    thetas: Tensor,
    inputs: Tensor,
    targets: Tensor,
    *,
    noise_var: float,
    prior_var: float | None = None,
    num_steps: int,
    lr: float,
    progress: bool = False,
    compile: bool = False,
) -> Tensor:
    """Full-batch SGD (no momentum) on `map_loss`, all members at once: `θ_m ← θ_m - η ∇L(θ_m)`.

    Args:
        flat_model: the network, evaluated at flat parameter vectors.
        thetas: `[M, D]` initial members.
        inputs: `[N, ...]`; targets: `[N, out]`.
        noise_var, prior_var: σ² and s² of `map_loss` (`prior_var=None`: no prior term).
        num_steps: SGD steps; lr: step size η.
        progress: show a tqdm bar.
        compile: compile the gradient with `torch.compile` (see `hmc.value_and_grad`).

    Returns:
        `[M, D]` trained members (equal to training each member alone with `torch.optim.SGD`).
    """
    if num_steps < 0 or lr <= 0 or noise_var <= 0:
        raise UserError("pass num_steps >= 0, lr > 0 and noise_var > 0")
    grad_fn = value_and_grad(
        lambda t: map_loss(flat_model, t, inputs, targets, noise_var, prior_var), compile
    )
    thetas = thetas.detach().clone()
    steps = range(num_steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="ensemble")
    for _ in steps:
        thetas = thetas - lr * grad_fn(thetas)[1]
    return thetas


@register_posterior
class DeepEnsemble(Posterior):
    """M members of one architecture, stored as the buffer `members [M, D]` (kind "deep_ensemble").

    As a posterior it is the uniform mixture of M point masses: `sample(generator)` writes a
    uniformly drawn member into `model`. `forward` evaluates all members at once.

    Args:
        model: the architecture, kept as a submodule so `.to()` moves its buffers; `sample`
            writes members into its parameters.
        seeds: one initialisation seed per member (see `initial_members`).
        prior_var: s² of the Gaussian prior of the MAP objective (None: maximum likelihood).
    """

    kind = "deep_ensemble"

    def __init__(self, model: nn.Module, seeds: Sequence[int], prior_var: float | None = None):
        super().__init__(model)
        self.seeds, self.prior_var = [int(s) for s in seeds], prior_var
        self.flat = FlatModel(model)
        self.register_buffer("members", initial_members(model, self.seeds))

    def config(self) -> dict:
        return {"seeds": self.seeds, "prior_var": self.prior_var}

    def fit(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        noise_var: float,
        num_steps: int,
        lr: float,
        progress: bool = False,
        compile: bool = False,
    ) -> DeepEnsemble:
        """Trains all members with `train_members`; returns self."""
        self.members = train_members(
            self.flat, self.members, inputs, targets, noise_var=noise_var,
            prior_var=self.prior_var, num_steps=num_steps, lr=lr, progress=progress,
            compile=compile,
        )  # fmt: skip
        return self

    def sample(self, generator: torch.Generator | None = None) -> None:
        """Write one member, drawn uniformly, into `model`."""
        index = torch.randint(len(self.members), (), generator=generator, device=self.device)
        self.flat.load(self.members[index])

    def forward(self, inputs: Tensor) -> Tensor:
        """Every member's output: `inputs [N, ...] -> [M, N, out]`."""
        return self.flat(self.members, inputs)
