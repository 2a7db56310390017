"""Flat parameter vectors: the one layout every posterior of this library uses.

A network's parameters, in `model.parameters()` order (the order of `named_parameters()` and of
`torch.nn.utils.parameters_to_vector`; the original repository used the same order, so its
SWAG files load here), concatenated into one vector `theta [D]`. BatchNorm running statistics
are buffers, not parameters, and are never part of it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from swag.errors import UserError


def flatten_parameters(model: nn.Module, dtype: torch.dtype | None = None) -> Tensor:
    """All parameters of `model` as one detached vector `theta [D]`."""
    return torch.cat([p.detach().reshape(-1).to(dtype or p.dtype) for p in model.parameters()])


@torch.no_grad()
def assign_parameters(model: nn.Module, theta: Tensor) -> None:
    """Copy `theta [D]` into the parameters of `model` (the inverse of `flatten_parameters`)."""
    offset = 0
    for parameter in model.parameters():
        numel = parameter.numel()
        parameter.copy_(theta[offset : offset + numel].view_as(parameter))
        offset += numel


def num_parameters(model: nn.Module) -> int:
    """D, the length of the flat vector of `model`."""
    return sum(p.numel() for p in model.parameters())


class FlatModel:
    """A module at flat parameter vectors: `thetas [C, D], inputs [N, ...] -> [C, N, ...]`.

    The module's own parameters are left untouched; its buffers are shared by all `C` vectors.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.names = [name for name, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.sizes = [p.numel() for _, p in model.named_parameters()]
        self.dim = sum(self.sizes)

    def flatten(self) -> Tensor:
        """The module's current parameters as one detached vector `theta [D]`."""
        return flatten_parameters(self.model)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Views of `theta [D]` shaped like the module's parameters, keyed by name."""
        chunks = torch.split(theta, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def load(self, theta: Tensor) -> None:
        """Writes `theta [D]` into the module's parameters (for plain, unbatched use)."""
        assign_parameters(self.model, theta)

    def __call__(self, thetas: Tensor, inputs: Tensor) -> Tensor:
        if thetas.dim() != 2 or thetas.shape[1] != self.dim:
            raise UserError(f"pass parameter vectors of shape [C, {self.dim}], not {thetas.shape}")
        buffers = dict(self.model.named_buffers())

        def one(theta: Tensor) -> Tensor:
            return functional_call(self.model, ({**self.unflatten(theta), **buffers},), (inputs,))

        return vmap(one)(thetas)
