"""A bank of stored weight draws (an MCMC chain after burn-in and thinning) as a posterior.

A sampler such as SGLD (swag/posteriors/sgld.py) produces a chain θ_1, θ_2, ... of weights.
`Thinning(burn_in, thin)` keeps θ_t for t > burn_in with (t − burn_in) divisible by `thin`;
`SampleBank.collect(model)` appends the current weights as one row of `samples [S, D]`
(`model.parameters()` order). The bank is then an empirical posterior q(θ) = 1/S Σ_s δ(θ − θ_s):

    bank.sample(generator)   # writes a stored draw into bank.model

Draws are made without replacement: a random permutation of the S rows (from the generator)
is walked in order, and a new one is drawn when it runs out, so S consecutive draws of a
Bayesian model average use every stored sample once. BatchNorm running statistics are not
stored (they are buffers, not parameters), hence `needs_bn_update = True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from swag.errors import UserError
from swag.posteriors.base import Posterior, register_posterior
from swag.posteriors.flat import assign_parameters, flatten_parameters
from swag.posteriors.methods import Method, register_method


@dataclass(frozen=True)
class Thinning:
    """Which steps of a chain are kept: t > burn_in with (t − burn_in) % thin == 0 (t from 1).

    Raises (at construction):
        UserError: negative burn-in or thin < 1.
    """

    burn_in: int = 0
    thin: int = 1

    def __post_init__(self):
        if self.burn_in < 0 or self.thin < 1:
            raise UserError(
                f"burn-in must be ≥ 0 and thinning ≥ 1, got --burn_in {self.burn_in} "
                f"--thin {self.thin}"
            )

    def keeps(self, step: int) -> bool:
        """Whether step `step` (1-based) of the chain is stored."""
        after = step - self.burn_in
        return after > 0 and after % self.thin == 0

    def count(self, num_steps: int) -> int:
        """How many of `num_steps` steps are kept."""
        return max(num_steps - self.burn_in, 0) // self.thin

    def check(self, num_steps: int) -> int:
        """The number of kept samples; a UserError if a chain of `num_steps` keeps none."""
        kept = self.count(num_steps)
        if kept == 0:
            raise UserError(
                f"a chain of {num_steps} steps with burn-in {self.burn_in} and thinning "
                f"{self.thin} keeps no sample; lower --burn_in or --thin, or run more steps"
            )
        return kept


@register_posterior
class SampleBank(Posterior):
    """Stored weight vectors `samples [S, D]` of `model`, drawn without replacement.

    Args:
        model: the network the draws are written into.
        num_samples: rows to allocate (0 for a bank that `collect` fills; `load` passes the
            stored count so the file's buffer fits).
    """

    kind = "samples"
    needs_bn_update = True

    def __init__(self, model: nn.Module, num_samples: int = 0):
        super().__init__(model)
        dimension = sum(p.numel() for p in model.parameters())
        reference = next(model.parameters())
        self.register_buffer(
            "samples",
            torch.zeros(num_samples, dimension, dtype=reference.dtype, device=reference.device),
        )
        self._order: torch.Tensor | None = None
        self._position = 0

    @classmethod
    def from_draws(cls, model: nn.Module, draws: torch.Tensor) -> SampleBank:
        """A bank of given flat draws `[..., D]` (e.g. `hmc(...).samples [C, S, D]`)."""
        bank = cls(model)
        bank.samples = draws.detach().reshape(-1, bank.samples.shape[1]).to(bank.samples)
        return bank

    @property
    def num_samples(self) -> int:
        return self.samples.shape[0]

    def config(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples}

    @torch.no_grad()
    def collect(self, model: nn.Module | None = None) -> None:
        """Append the current weights of `model` (default: `self.model`) as a new row."""
        row = flatten_parameters(model if model is not None else self.model).to(self.samples)
        self.samples = torch.cat([self.samples, row[None]])
        self._order = None

    def sample(self, generator: torch.Generator | None = None) -> None:
        """Write the next stored draw of the current permutation into `self.model`."""
        if self.num_samples == 0:
            raise UserError("the sample bank is empty; collect at least one sample first")
        if self._order is None or self._position == len(self._order):
            device = generator.device if generator is not None else torch.device("cpu")
            self._order = torch.randperm(self.num_samples, generator=generator, device=device)
            self._position = 0
        index = int(self._order[self._position])
        self._position += 1
        assign_parameters(self.model, self.samples[index])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._order = None  # a new bank: start a fresh permutation
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


register_method(
    Method(
        "sgld", "SGLD", "tab:purple", kinds=("samples",),
        file_hint="the samples file written by run_sgld.py for each member",
    )
)  # fmt: skip
register_method(
    Method(
        "hmc", "HMC", "tab:olive", kinds=("samples",),
        file_hint="a samples file (SampleBank.from_draws of hmc(...).samples) for each member",
    )
)  # fmt: skip
