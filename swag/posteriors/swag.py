"""SWA-Gaussian (Maddox et al., 2019, arXiv:1902.02476), as used by Wilson & Izmailov (2020).

SWAG fits a Gaussian to the SGD iterates θ_1..θ_n collected at a constant or cyclical learning
rate after `swag_start`:

    θ_SWA = mean_i θ_i,            Σ_diag = mean_i θ_i² − θ_SWA²,
    D = [θ_i − θ̄_i] for the last K iterates (θ̄_i: the running mean after adding θ_i),

and samples θ̃ = θ_SWA + √scale · (Σ_diag^{1/2} ⊙ z₁ + D z₂ / √(K−1)),  z₁ ~ N(0, I_D),
z₂ ~ N(0, I_K). With scale = 0.5 this is the SWAG paper's
θ̃ = θ_SWA + (1/√2) Σ_diag^{1/2} z₁ + (1/√(2(K−1))) D z₂.

Differences from the original repository (docs/original_code.md, "SWAG"):
- the moments are accumulated with Welford's update in float64, so tiny variances of large
  weights survive (the original subtracted two float32 running means);
- `cov_mat=False` gives SWAG-diagonal (the original flag was a no-op);
- the low-rank term divides by √(K−1) with K the number of columns actually collected, and is
  skipped for K < 2 (the original divided by zero at K = 1);
- `sample(..., legacy_variance=True)` reproduces the paper-era bug (fixed upstream in 2022) that
  multiplied z₁ by the variance instead of the standard deviation;
- sampling takes an explicit `torch.Generator`; loading a state resets everything derived from
  the previous one (the original cached the first checkpoint's low-rank factor).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from swag.errors import UserError
from swag.posteriors.base import Posterior, register_legacy_reader, register_posterior
from swag.posteriors.flat import assign_parameters, flatten_parameters, num_parameters
from swag.posteriors.methods import Method, SamplingOptions, register_method


def welford_update(
    mean: torch.Tensor, m2: torch.Tensor, count: int, sample: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Welford's algorithm, in place; `count` includes `sample`.

    mean_n = mean_{n−1} + (x − mean_{n−1}) / n,   M2_n = M2_{n−1} + (x − mean_{n−1})(x − mean_n).
    The population variance is M2_n / n.
    """
    delta = sample - mean
    mean.add_(delta / count)
    m2.add_(delta * (sample - mean))
    return mean, m2


def low_rank_scale(num_columns: int) -> float:
    """1/√(K−1), the factor of D z₂ in the SWAG sample; 0 when fewer than 2 columns exist."""
    return 1.0 / math.sqrt(num_columns - 1) if num_columns >= 2 else 0.0


@register_posterior
class SWAG(Posterior):
    """SWAG posterior over the parameters of a model instance (kind "swag").

    The model is held as `base_model` (also `model`); `sample` and `set_swa` write weights into
    it. BatchNorm running statistics are not part of the posterior (`needs_bn_update`):
    recompute them with `swag.training.update_bn` after every `sample` / `set_swa`.

    Buffers (all move with `.to()` and are saved by `state_dict()`):
        n_models []: number of collected iterates n.
        mean [D] float64: θ_SWA.
        m2 [D] float64: Σ_i (θ_i − θ_SWA)², so the diagonal variance is m2 / n.
        deviations [K, D] float32: the last K ≤ max_num_models deviation columns of D, oldest
            first (empty when `cov_mat=False`).

    Args:
        model: the network whose parameters the posterior is over.
        max_num_models: maximum rank K of the low-rank part (`--max_num_models`).
        var_clamp: lower bound of the diagonal variance.
        cov_mat: keep the low-rank deviation matrix (SWAG); False gives SWAG-diagonal.

    Attributes read by `sample(generator)` (evaluation options, not saved):
        scale: covariance scale (0.5 in the paper), cov: include the low-rank term,
        legacy_variance: the paper-era bug (see `sample`).
    """

    kind = "swag"
    needs_bn_update = True

    def __init__(
        self,
        model: nn.Module,
        max_num_models: int = 20,
        var_clamp: float = 1e-6,
        cov_mat: bool = True,
    ):
        nn.Module.__init__(self)  # the model is `base_model`, the original's name and key prefix
        self.base_model = model
        self.max_num_models = int(max_num_models)
        self.var_clamp = float(var_clamp)
        self.cov_mat = bool(cov_mat)
        self.scale, self.cov, self.legacy_variance = 0.5, True, False
        size = num_parameters(model)
        device = next(model.parameters()).device
        self.register_buffer("n_models", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64, device=device))
        self.register_buffer("m2", torch.zeros(size, dtype=torch.float64, device=device))
        self.register_buffer("deviations", torch.zeros(0, size, device=device))

    @property
    def model(self) -> nn.Module:
        return self.base_model

    def config(self) -> dict[str, Any]:
        return {
            "max_num_models": self.max_num_models,
            "var_clamp": self.var_clamp,
            "cov_mat": self.cov_mat,
        }

    @property
    def num_parameters(self) -> int:
        return self.mean.numel()

    @property
    def rank(self) -> int:
        """K, the number of deviation columns currently held."""
        return self.deviations.shape[0]

    @torch.no_grad()
    def collect_model(self, model: nn.Module) -> None:
        """Add the current parameters of `model` (same architecture) as one SWAG iterate."""
        sample = flatten_parameters(model, torch.float64).to(self.mean.device)
        if sample.numel() != self.num_parameters:
            raise UserError(
                f"cannot collect a model with {sample.numel()} parameters into a SWAG posterior "
                f"over {self.num_parameters}; collect the same architecture the SWAG was built on"
            )
        self.n_models += 1
        welford_update(self.mean, self.m2, int(self.n_models), sample)
        if self.cov_mat and self.max_num_models > 0:
            column = (sample - self.mean).to(self.deviations.dtype).unsqueeze(0)
            kept = (
                self.deviations[-(self.max_num_models - 1) :] if self.max_num_models > 1 else None
            )
            self.deviations = column if kept is None else torch.cat([kept, column])

    def variance(self) -> torch.Tensor:
        """Diagonal variance Σ_diag [D] (float64), clamped below at `var_clamp`."""
        count = max(int(self.n_models), 1)
        return (self.m2 / count).clamp_min(self.var_clamp)

    def _require_models(self) -> None:
        if int(self.n_models) == 0:
            raise UserError(
                "the SWAG posterior has no collected models; collect_model some iterates (or load "
                "a swag-<epoch>.pt checkpoint) before sampling"
            )

    @torch.no_grad()
    def set_swa(self) -> torch.Tensor:
        """Write θ_SWA into `base_model` and return it [D]."""
        self._require_models()
        assign_parameters(self.base_model, self.mean)
        return self.mean.clone()

    @torch.no_grad()
    def sample(
        self,
        generator: torch.Generator | None = None,
        *,
        scale: float | None = None,
        cov: bool | None = None,
        legacy_variance: bool | None = None,
    ) -> torch.Tensor:
        """Draw θ̃ = θ_SWA + √scale·(Σ_diag^{1/2} ⊙ z₁ + D z₂/√(K−1)), write it into `base_model`.

        Args:
            generator: source of z₁ and z₂; its device must be the posterior's device.
            scale: posterior tempering of the covariance (default `self.scale`, 0.5 as in the
                paper's MultiSWAG); not calibration temperature scaling of logits.
            cov: include the low-rank term (default `self.cov`; False samples SWAG-diagonal
                from a full SWAG).
            legacy_variance: multiply z₁ by Σ_diag instead of Σ_diag^{1/2}, as all paper-era
                code did (docs/original_code.md). Only for reproducing the paper's numbers.

        Returns:
            theta [D], float64.
        """
        scale = self.scale if scale is None else scale
        cov = self.cov if cov is None else cov
        legacy_variance = self.legacy_variance if legacy_variance is None else legacy_variance
        self._require_models()
        variance = self.variance()
        diagonal_factor = variance if legacy_variance else variance.sqrt()
        z1 = torch.randn(
            self.num_parameters, generator=generator, device=self.mean.device, dtype=torch.float64
        )
        perturbation = diagonal_factor * z1
        if cov and self.cov_mat and self.rank >= 2:
            z2 = torch.randn(
                self.rank, generator=generator, device=self.mean.device, dtype=torch.float64
            )
            low_rank = self.deviations.to(torch.float64).T @ z2
            perturbation += low_rank * low_rank_scale(self.rank)
        theta = self.mean + math.sqrt(scale) * perturbation
        assign_parameters(self.base_model, theta)
        return theta

    def keep_last_columns(self, max_num_models: int | None) -> None:
        """Use only the most recent `max_num_models` deviation columns (None: all)."""
        if max_num_models is not None and self.rank > max_num_models:
            self.deviations = self.deviations[self.rank - max_num_models :]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, *args):
        stored = state_dict.get(prefix + "mean")
        if stored is not None and stored.numel() != self.num_parameters:
            raise UserError(
                f"this SWAG checkpoint holds {stored.numel()} parameters but the model has "
                f"{self.num_parameters}; build the model with the architecture and number of "
                "classes it was trained with"
            )
        deviations = state_dict.get(prefix + "deviations")
        if deviations is not None:
            # The number of columns K varies between checkpoints: resize before copying.
            self.deviations = torch.zeros_like(deviations, device=self.mean.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, *args)

    @classmethod
    def load_upstream(
        cls,
        source: str | Path | Mapping[str, torch.Tensor],
        model: nn.Module,
        var_clamp: float = 1e-6,
    ) -> SWAG:
        """Build a SWAG from the original repository's `swag-<epoch>.pt` (docs/original_code.md).

        The original stores float32 running moments `mean` and `sq_mean`, `n_models`, and the
        deviation matrix as `subspace.cov_mat_sqrt` [K, D]. Its parameter order is
        `model.parameters()` order of the same architecture, which the registry keeps.
        """
        from swag.training import load_checkpoint

        state = (
            load_checkpoint(source, next(model.parameters()).device)
            if isinstance(source, str | Path)
            else dict(source)
        )
        state = state.get("state_dict", state)
        required = ("mean", "sq_mean", "n_models", "subspace.cov_mat_sqrt")
        if any(key not in state for key in required):
            raise UserError(
                "this file is not a swag-<epoch>.pt of the original repository (it lacks "
                "mean, sq_mean, n_models or subspace.cov_mat_sqrt); load this project's own "
                "SWAG checkpoints with load_state_dict instead"
            )
        deviations = state["subspace.cov_mat_sqrt"].float()
        posterior = cls(model, max_num_models=max(deviations.shape[0], 1), var_clamp=var_clamp)
        mean = state["mean"].reshape(-1).double()
        if mean.numel() != posterior.num_parameters:
            raise UserError(
                f"the original checkpoint holds {mean.numel()} parameters but the model has "
                f"{posterior.num_parameters}; build the model it was trained with"
            )
        count = int(state["n_models"])
        device = posterior.mean.device
        posterior.n_models.fill_(count)
        posterior.mean.copy_(mean)
        second_moment = state["sq_mean"].reshape(-1).double()
        posterior.m2.copy_(((second_moment - mean**2) * count).clamp_min(0))
        posterior.deviations = deviations.to(device)
        posterior.set_swa()
        return posterior


@register_posterior
class SWA(Posterior):
    """The point mass at θ_SWA of a SWAG posterior (kind "swa"; MultiSWA's members).

    Deterministic, but BatchNorm statistics must still be recomputed for the averaged weights.
    """

    kind = "swa"
    needs_bn_update = True
    deterministic = True

    def __init__(self, model: nn.Module | SWAG, **swag_config):
        nn.Module.__init__(self)
        self.swag = model if isinstance(model, SWAG) else SWAG(model, **swag_config)

    @property
    def model(self) -> nn.Module:
        return self.swag.base_model

    def config(self) -> dict[str, Any]:
        return self.swag.config()

    def sample(self, generator: torch.Generator | None = None) -> None:
        self.swag.set_swa()


def _is_upstream_swag(state: Mapping[str, Any]) -> bool:
    weights = state.get("state_dict", state)
    return "sq_mean" in weights and "subspace.cov_mat_sqrt" in weights


def _is_unversioned_swag(state: Mapping[str, Any]) -> bool:
    weights = state.get("state_dict", state)
    return "mean" in weights and "m2" in weights and "deviations" in weights


def _read_legacy_swag(state: Mapping[str, Any], model: nn.Module, source: str) -> SWAG:
    """SWAG files without `kind`: the original repository's, or this project's before it."""
    weights = state.get("state_dict", state)
    if _is_upstream_swag(state):
        return SWAG.load_upstream(weights, model)
    posterior = SWAG(model, max_num_models=max(int(weights["deviations"].shape[0]), 20))
    posterior.load_file_state({"state_dict": weights}, source)
    return posterior


register_legacy_reader(
    "swag", lambda state: _is_upstream_swag(state) or _is_unversioned_swag(state), _read_legacy_swag
)


def _as_swag_sampler(posterior: Posterior, options: SamplingOptions) -> Posterior:
    posterior.scale, posterior.cov = options.scale, options.cov
    posterior.legacy_variance = options.legacy_variance
    posterior.keep_last_columns(options.max_num_models)
    return posterior


register_method(
    Method(
        "multiswag", "MultiSWAG", "tab:green", kinds=("swag",), adapt=_as_swag_sampler,
        file_hint="the swag-<epoch>.pt of each run trained with --swag",
        member_file="swag-{epoch}.pt",
    )
)  # fmt: skip
register_method(
    Method(
        "multiswa", "MultiSWA", "tab:orange", kinds=("swag",),
        adapt=lambda posterior, options: SWA(posterior),
        file_hint="the swag-<epoch>.pt of each run trained with --swag",
        member_file="swag-{epoch}.pt",
    )
)  # fmt: skip
