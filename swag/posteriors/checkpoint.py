"""A fixed set of trained weights as a posterior: the point mass of one deep-ensemble member.

Deep ensembles (Lakshminarayanan et al., 2017) read as a Bayesian model average over M basins
(Wilson & Izmailov 2020, §3.2): p(y|x, D) ≈ 1/M Σ_m p(y|x, θ_m), each θ_m a network trained
from its own initialisation. Each member is a `Checkpoint`: drawing from it changes nothing,
and its BatchNorm statistics are the ones it was trained with.

Its file is run_swag.py's `checkpoint-<epoch>.pt`: the model's own `state_dict` (keys without a
prefix, as the original repository wrote them), plus `epoch`, `optimizer` and the run `config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from swag.posteriors.base import Posterior, register_legacy_reader, register_posterior
from swag.posteriors.methods import Method, register_method


@register_posterior
class Checkpoint(Posterior):
    """The point mass at the current weights of `model` (kind "checkpoint")."""

    kind = "checkpoint"
    deterministic = True

    def sample(self, generator: torch.Generator | None = None) -> None:
        """Nothing to draw: the weights are already in `.model`."""

    def to_file(self, **extra) -> dict[str, Any]:
        # The model's own keys, so the file is also a plain model checkpoint.
        return {**super().to_file(**extra), "state_dict": self.model.state_dict()}

    def load_file_state(self, state: Mapping[str, Any], source: str) -> None:
        weights = state.get("state_dict", state)
        prefixed = {f"model.{key}": value for key, value in weights.items()}
        super().load_file_state({"state_dict": prefixed}, source)


def _is_model_checkpoint(state: Mapping[str, Any]) -> bool:
    weights = state.get("state_dict", state)
    return (
        isinstance(weights, Mapping)
        and len(weights) > 0
        and all(isinstance(v, torch.Tensor) for v in weights.values())
        and "mean" not in weights
    )


def _read_model_checkpoint(state: Mapping[str, Any], model: nn.Module, source: str) -> Checkpoint:
    posterior = Checkpoint(model)
    posterior.load_file_state(state, source)
    return posterior


register_legacy_reader("checkpoint", _is_model_checkpoint, _read_model_checkpoint)

register_method(
    Method(
        "ensemble", "Deep Ensembles", "tab:blue", kinds=("checkpoint",),
        file_hint="the final checkpoint-<epoch>.pt (SGD weights) of each run",
        member_file="checkpoint-{epoch}.pt",
    )
)  # fmt: skip
