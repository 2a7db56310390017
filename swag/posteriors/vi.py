"""Mean-field Gaussian variational inference over all weights (Bayes by backprop).

Blundell et al. (2015). The approximate posterior is `q(θ) = N(μ, diag(σ²))` with
`σ = softplus(ρ) + eps`; a sample is the reparameterisation `θ = μ + σ ⊙ ε`, `ε ~ N(0, I)`, and
it enters the network through `torch.func.functional_call`, so the likelihood's gradient
reaches both μ and ρ. (The original's Feb-2020 `VIFFGModel` copied samples into `.data`, so
only the KL term was trained; docs/original_code.md.) The loss is the negative ELBO
per datapoint, as in the original notebooks:

    L(μ, ρ) = E_q[ mean_n ||y_n - f_θ(x_n)||² / (2σ²) ] + KL(q || N(0, s² I)) / N,

with the expectation estimated by Monte Carlo and the KL in closed form (`gaussian_kl`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swag.errors import UserError
from swag.posteriors.base import Posterior, register_posterior
from swag.posteriors.flat import FlatModel


def gaussian_kl(mean: Tensor, std: Tensor, prior_var: float) -> Tensor:
    """`KL(N(μ, diag σ²) || N(0, s² I)) = Σ_i [log(s/σ_i) + (σ_i² + μ_i²)/(2s²) - 1/2]`.

    Args:
        mean, std: `[D]` parameters of q; prior_var: s².

    Returns:
        Scalar KL in nats.
    """
    return (
        0.5 * math.log(prior_var) - std.log() + (std.pow(2) + mean.pow(2)) / (2 * prior_var) - 0.5
    ).sum()


@register_posterior
class MeanFieldVI(Posterior):
    """A fully factorised Gaussian over the flat parameters of `model` (kind "vi").

    `sample(generator)` writes one draw θ = μ + σ ⊙ ε into `model`; `draw` gives differentiable
    draws `[S, D]` for training and for batched predictions.

    Args:
        model: the architecture; its current parameters initialise the means μ. It is kept as
            a submodule so `.to()` moves its buffers; only `sample` writes its parameters.
        prior_var: variance s² of the N(0, s² I) prior.
        init_rho: initial ρ for every weight (-3 gives σ ≈ 0.0486, the Dec-2020 notebook).
        eps: floor added to softplus(ρ).
    """

    kind = "vi"
    needs_bn_update = True

    def __init__(
        self, model: nn.Module, prior_var: float, init_rho: float = -3.0, eps: float = 1e-6
    ):
        super().__init__(model)
        if prior_var <= 0:
            raise UserError(f"pass a positive prior_var for VI, got {prior_var}")
        self.init_rho = init_rho
        self.flat = FlatModel(model)
        self.prior_var = prior_var
        self.eps = eps
        self.mean = nn.Parameter(self.flat.flatten().clone())
        self.rho = nn.Parameter(torch.full_like(self.mean, init_rho))

    @property
    def std(self) -> Tensor:
        """σ = softplus(ρ) + eps, `[D]`."""
        return F.softplus(self.rho) + self.eps

    def config(self) -> dict:
        return {"prior_var": self.prior_var, "init_rho": self.init_rho, "eps": self.eps}

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None) -> None:
        """Write one draw θ = μ + σ ⊙ ε into `model`."""
        self.flat.load(self.draw(1, generator)[0])

    def draw(self, num_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draws `θ = μ + σ ⊙ ε`, differentiable in μ and ρ: `[S, D]`."""
        noise = torch.randn(
            (num_samples, self.mean.numel()), generator=generator, device=self.mean.device
        ).to(self.mean.dtype)
        return self.mean + self.std * noise

    def kl(self) -> Tensor:
        """Closed-form `KL(q || prior)` (scalar)."""
        return gaussian_kl(self.mean, self.std, self.prior_var)

    def forward(
        self, inputs: Tensor, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Network outputs at `num_samples` draws from q: `inputs [N, ...] -> [S, N, out]`."""
        return self.flat(self.draw(num_samples, generator), inputs)

    def negative_elbo(
        self,
        inputs: Tensor,
        targets: Tensor,
        noise_var: float,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The loss L(μ, ρ) of the module docstring (per datapoint; mean over `N × out`)."""
        residuals = self(inputs, num_samples, generator) - targets
        expected_nll = residuals.pow(2).flatten(1).mean(1).mean() / (2 * noise_var)
        return expected_nll + self.kl() / inputs.shape[0]

    def fit(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        noise_var: float,
        num_steps: int,
        lr: float,
        num_samples: int = 1,
        optimizer: str = "sgd",
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> MeanFieldVI:
        """Full-batch stochastic optimisation of `negative_elbo` ("sgd": no momentum, as the
        original; or "adam"); returns self."""
        optimizers = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
        if optimizer not in optimizers:
            raise UserError(f"pass optimizer as one of {sorted(optimizers)}, not {optimizer!r}")
        opt = optimizers[optimizer]([self.mean, self.rho], lr=lr)
        steps = range(num_steps)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="vi")
        for _ in steps:
            opt.zero_grad()
            with torch.enable_grad():
                self.negative_elbo(inputs, targets, noise_var, num_samples, generator).backward()
            opt.step()
        return self
