"""Laplace approximation over network weights (MacKay, 1992; Ritter et al., 2018).

At the MAP weights θ* of a network trained with a Gaussian prior N(0, 1/δ I), the posterior is

    q(θ) = N(θ*, H⁻¹),   H = H_ggn + δ I,

with H_ggn the generalised Gauss-Newton matrix of the training log likelihood (a sum over the
N examples, see `swag.posteriors.curvature`) in one of two structures:

- "diag": the exact diagonal of H_ggn;
- "kron": per layer G ⊗ A (KFAC-expand), decomposed once as G = Q_G Λ_G Q_Gᵀ and
  A = Q_A Λ_A Q_Aᵀ, so that H = (Q_G ⊗ Q_A)(Λ_G ⊗ Λ_A + δ I)(Q_G ⊗ Q_A)ᵀ is exact for any δ.

The Laplace log marginal likelihood (paper section 4 uses it to score corrupted-label fits) is

    log p(D) ≈ log p(D|θ*) + log p(θ*) + P/2 log 2π − ½ log det H
             = log p(D|θ*) + ½ Σ_g P_g log δ_g − ½ Σ_g δ_g ‖θ*_g‖² − ½ Σ_i log(λ_i + δ_{g(i)}),

λ_i the eigenvalues of H_ggn's blocks, g a parameter tensor (one δ for all, or one per tensor).
It is maximised over log δ without refitting, since only the eigenvalues enter.

How this differs from the original code's unexported diagonal Laplace, which had six defects:
the curvature is the exact per-example GGN computed from forward/backward passes that never
touch `.grad` (the original accumulated squared minibatch gradients of sampled labels, with no
`zero_grad` between batches); the data-fit term log p(D|θ*) uses the true training labels the
network was fitted to, corrupted or not (the original used the sampled labels); δ is a
precision everywhere, in H and in the prior density (the original mixed precision and
variance); the prior's normaliser counts all P weights (P/2 log δ, not once); and there is no
per-parameter loop (the original's was over an empty list, with broken indexing).

The network is linearised in eval mode: BatchNorm layers use their running statistics, their
parameters stay at MAP, and no statistics are recomputed after a draw (`needs_bn_update` False).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from swag.errors import UserError
from swag.posteriors import curvature
from swag.posteriors.base import Posterior, register_posterior
from swag.posteriors.ggn_sums import ggn_sums
from swag.posteriors.methods import Method, register_method

HESSIANS = ("diag", "kron")
LIKELIHOODS = ("classification", "regression")
PRIOR_MODES = ("none", "scalar", "layerwise")


@register_posterior
class Laplace(Posterior):
    """Diagonal or KFAC GGN Laplace posterior over the Linear/Conv2d weights of `model`.

    Args:
        model: the network at its MAP weights θ*; draws are written into it.
        hessian: "diag" or "kron".
        subset: "all" or "last_layer" (see `curvature.posterior_layers`).
        likelihood: "classification" (softmax cross-entropy) or "regression" (Gaussian).
        prior_precision: δ > 0 of the prior N(0, 1/δ I), before any optimisation.
        noise_var: σ² of the Gaussian likelihood (regression only).

    Usage: `Laplace(model, "kron").fit(loader)`, then `log_marginal_likelihood()`,
    `optimize_prior_precision("layerwise")`, `sample(generator)`, `predictive(x)`.
    """

    kind = "laplace"
    needs_bn_update = False
    deterministic = False

    def __init__(
        self,
        model: nn.Module,
        hessian: str = "kron",
        subset: str = "all",
        likelihood: str = "classification",
        prior_precision: float = 1.0,
        noise_var: float = 1.0,
    ):
        super().__init__(model)
        if hessian not in HESSIANS:
            raise UserError(f"unknown Laplace hessian {hessian!r}; choose diag or kron")
        if likelihood not in LIKELIHOODS:
            raise UserError(
                f"unknown likelihood {likelihood!r}; choose classification or regression"
            )
        if not prior_precision > 0 or not noise_var > 0:
            raise UserError("the prior precision and the noise variance must be positive numbers")
        self.hessian, self.subset, self.likelihood = hessian, subset, likelihood
        self.initial_prior_precision, self.noise_var = float(prior_precision), float(noise_var)
        self.layers = curvature.posterior_layers(model, subset)
        self.params = [p for layer in self.layers for p in _layer_params(layer)]
        ref = self.params[0]
        total = sum(p.numel() for p in self.params)
        self.register_buffer("mean", torch.zeros(total, dtype=ref.dtype, device=ref.device))
        groups = len(self.params)
        self.register_buffer(
            "prior_precision", torch.full((groups,), float(prior_precision), **_f64(ref.device))
        )
        self.register_buffer("log_likelihood", torch.zeros((), dtype=torch.float64))
        self.register_buffer("num_data", torch.zeros((), dtype=torch.long))
        f64 = _f64(ref.device)
        if hessian == "diag":
            self.register_buffer("ggn_diag", torch.zeros(total, **f64))
        for i, layer in enumerate(self.layers if hessian == "kron" else []):
            out, k = layer.out_features, layer.in_features
            self.register_buffer(f"g_eigvals_{i}", torch.zeros(out, **f64))
            self.register_buffer(f"g_eigvecs_{i}", torch.zeros(out, out, **f64))
            self.register_buffer(f"a_eigvals_{i}", torch.zeros(k, **f64))
            self.register_buffer(f"a_eigvecs_{i}", torch.zeros(k, k, **f64))

    def config(self) -> dict[str, Any]:
        return {
            "hessian": self.hessian,
            "subset": self.subset,
            "likelihood": self.likelihood,
            "prior_precision": self.initial_prior_precision,
            "noise_var": self.noise_var,
        }

    @property
    def num_params(self) -> int:
        """P, the number of weights in the posterior."""
        return self.mean.numel()

    def _hessian_sqrt(self, logits: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "classification":
            return curvature.softmax_hessian_sqrt(logits)
        eye = torch.eye(logits.shape[-1], dtype=logits.dtype, device=logits.device)
        return eye.expand(logits.shape[0], -1, -1) / math.sqrt(self.noise_var)

    def _batch_log_likelihood(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "classification":
            return -F.cross_entropy(logits, targets, reduction="sum")
        residual = targets.reshape(logits.shape) - logits
        return (
            -(
                residual.square().sum() / self.noise_var
                + residual.numel() * math.log(2 * math.pi * self.noise_var)
            )
            / 2
        )

    def fit(self, loader: Iterable, progress: bool = False, workers: int = 1) -> Laplace:
        """Accumulate log p(D|θ*) and the GGN over `loader` (batches (x, y)) at the current weights.

        The model is put in eval mode (BatchNorm running statistics; no dropout). `workers`:
        threads sharing the sub-batches on a CPU (`ggn_sums`; 1: the calling thread).
        """
        sums = ggn_sums(
            self.model, self.layers, self.subset, self.hessian, loader, self._hessian_sqrt,
            self._batch_log_likelihood, workers, progress,
        )  # fmt: skip
        if sums.count == 0:
            raise UserError("the Laplace fit got no training examples; pass a non-empty loader")
        with torch.no_grad():
            self.mean.copy_(torch.cat([p.detach().reshape(-1) for p in self.params]))
            self.log_likelihood.copy_(sums.log_lik)
            self.num_data.fill_(sums.count)
            index = 0
            for i, layer in enumerate(self.layers):  # patch order → the weight's order
                if self.hessian == "diag":
                    sums.diag[index] = curvature.to_weight_order(layer, sums.diag[index], (1,))
                else:
                    sums.a[i] = curvature.to_weight_order(layer, sums.a[i], (0, 1))
                index += 1 + layer.has_bias
            if self.hessian == "diag":
                self.ggn_diag.copy_(torch.cat([d.reshape(-1) for d in sums.diag]))
            for i in range(len(self.layers) if self.hessian == "kron" else 0):
                for name, factor in (("a", sums.a[i] / sums.count), ("g", sums.g[i])):
                    values, vectors = torch.linalg.eigh(factor)
                    getattr(self, f"{name}_eigvals_{i}").copy_(values.clamp(min=0))
                    getattr(self, f"{name}_eigvecs_{i}").copy_(vectors)
        return self

    def _require_fit(self) -> None:
        if int(self.num_data) == 0:
            raise UserError("this Laplace posterior is not fitted; call fit(train_loader) first")

    def blocks(self) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """Per parameter tensor: GGN eigenvalues (shaped [O, K] or [O]) and bases (left, right).

        The block's precision is (left ⊗ right) diag(eig + δ) (left ⊗ right)ᵀ; diagonal blocks
        have no bases (identity), a KFAC bias block only a left one.
        """
        out, offset = [], 0
        for i, layer in enumerate(self.layers):
            shapes = [(layer.out_features, layer.in_features)] + [(layer.out_features,)] * (
                layer.has_bias
            )
            for shape in shapes:
                if self.hessian == "diag":
                    size = math.prod(shape)
                    out.append((self.ggn_diag[offset : offset + size].reshape(shape), None, None))
                    offset += size
                    continue
                g_vals, g_vecs = getattr(self, f"g_eigvals_{i}"), getattr(self, f"g_eigvecs_{i}")
                if len(shape) == 2:
                    a_vals, a_vecs = (
                        getattr(self, f"a_eigvals_{i}"),
                        getattr(self, f"a_eigvecs_{i}"),
                    )
                    out.append((torch.outer(g_vals, a_vals), g_vecs, a_vecs))
                else:
                    out.append((g_vals, g_vecs, None))
        return out

    def _prior_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = torch.tensor([p.numel() for p in self.params], dtype=torch.float64)
        squares = torch.stack(
            [chunk.double().square().sum() for chunk in self.mean.split(sizes.long().tolist())]
        )
        return sizes.to(self.mean.device), squares

    def _log_det(self, delta: torch.Tensor) -> torch.Tensor:
        """log det H = Σ_i log(λ_i + δ_{g(i)}) for δ [groups]."""
        return sum(
            curvature.block_log_det(*b, d) for b, d in zip(self.blocks(), delta, strict=True)
        )

    def log_marginal_likelihood(self, prior_precision: torch.Tensor | None = None) -> torch.Tensor:
        """The Laplace evidence (module docstring), differentiable in `prior_precision` [groups]."""
        self._require_fit()
        delta = (self.prior_precision if prior_precision is None else prior_precision).double()
        delta = delta.expand(len(self.params))
        sizes, squares = self._prior_terms()
        prior = (sizes * delta.log() - delta * squares).sum() / 2
        return self.log_likelihood + prior - self._log_det(delta) / 2

    @torch.no_grad()
    def evidence(self) -> dict[str, Any]:
        """The terms of the log marginal likelihood at the current prior precision, as floats."""
        total = float(self.log_marginal_likelihood())
        delta = self.prior_precision
        sizes, squares = self._prior_terms()
        log_prior = ((sizes * (delta.log() - math.log(2 * math.pi)) - delta * squares) / 2).sum()
        return {
            "log_marginal_likelihood": total,
            "log_marginal_likelihood_per_example": total / int(self.num_data),
            "log_likelihood": float(self.log_likelihood),
            "log_prior": float(log_prior),
            "log_det_posterior_precision": float(self._log_det(delta)),
            "prior_precision": self.prior_precision.tolist(),
            "num_params": self.num_params,
            "num_data": int(self.num_data),
        }

    def optimize_prior_precision(self, mode: str = "scalar", max_iter: int = 100) -> torch.Tensor:
        """Maximise the log marginal likelihood over log δ (one δ, or one per parameter tensor).

        L-BFGS with a strong-Wolfe line search on log δ; the GGN eigenvalues are fixed, so no refit.
        Returns the new prior precision [groups] (also stored).
        """
        if mode not in PRIOR_MODES:
            raise UserError(f"unknown prior optimisation {mode!r}; choose {', '.join(PRIOR_MODES)}")
        self._require_fit()
        if mode == "none":
            return self.prior_precision
        start = self.prior_precision.double().log()
        log_delta = (start.mean().reshape(1) if mode == "scalar" else start).clone()
        log_delta.requires_grad_(True)
        optimiser = torch.optim.LBFGS([log_delta], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad()
            loss = -self.log_marginal_likelihood(log_delta.exp())
            loss.backward()
            return loss

        optimiser.step(closure)
        with torch.no_grad():
            self.prior_precision.copy_(log_delta.detach().exp().expand(len(self.params)))
        return self.prior_precision

    def posterior_variance(self) -> torch.Tensor:
        """diag(H⁻¹) [P], in the order of the posterior's parameters."""
        self._require_fit()
        blocks = zip(self.blocks(), self.prior_precision, strict=True)
        return torch.cat([curvature.block_variance(*b, d).reshape(-1) for b, d in blocks])

    @torch.no_grad()
    def restore_map(self) -> None:
        """Write θ* back into the model."""
        offset = 0
        for param in self.params:
            param.copy_(self.mean[offset : offset + param.numel()].view_as(param))
            offset += param.numel()

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None) -> None:
        """Write θ = θ* + H^{-1/2} z, z ~ N(0, I), into the model (BatchNorm stays at MAP).

        KFAC blocks draw a matrix normal: Q_G (Z ⊘ √(Λ_G λ_Aᵀ + δ)) Q_Aᵀ with Z [O, K] standard
        normal, whose covariance is exactly (G ⊗ A + δ I)⁻¹.
        """
        self._require_fit()
        device = generator.device if generator is not None else self.mean.device
        offset = 0
        blocks = zip(self.params, self.blocks(), self.prior_precision, strict=True)
        for param, (eig, left, right), delta in blocks:
            noise = torch.randn(eig.shape, generator=generator, device=device, dtype=torch.float64)
            draw = curvature.block_draw(eig, left, right, delta, noise.to(eig.device))
            mean = self.mean[offset : offset + param.numel()].view_as(param)
            param.copy_(mean + draw.reshape(param.shape).to(param.dtype))
            offset += param.numel()

    def to_file(self, **extra) -> dict[str, Any]:
        """The file holds θ* in the model weights (any draw in the model is replaced first)."""
        self.restore_map()
        return super().to_file(**extra)

    @torch.no_grad()
    def functional_variance(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linearised-network (GLM) outputs and their variances diag(J H⁻¹ Jᵀ): both [N, C]."""
        self._require_fit()
        self.restore_map()
        self.model.eval()

        def identity(logits: torch.Tensor) -> torch.Tensor:
            eye = torch.eye(logits.shape[-1], dtype=logits.dtype, device=logits.device)
            return eye.expand(logits.shape[0], -1, -1)

        logits, rows_a, rows_g = curvature.backpropagate(self.model, self.layers, inputs, identity)
        variance = curvature.glm_variance(
            self.layers, self.blocks(), self.prior_precision, rows_a, rows_g
        )
        return logits, variance

    def predictive(self, inputs: torch.Tensor, link: str = "probit") -> torch.Tensor:
        """GLM predictive class probabilities [N, C] with the probit approximation.

        p(y|x, D) ≈ softmax(κ ⊙ f(x; θ*)),  κ_c = 1 / √(1 + π/8 σ_c²),  σ_c² = (J H⁻¹ Jᵀ)_cc
        (MacKay, 1992; the per-class diagonal of the function-space covariance).
        """
        if link != "probit" or self.likelihood != "classification":
            raise UserError("the Laplace predictive supports link='probit' for classification only")
        logits, variance = self.functional_variance(inputs)
        return torch.softmax(logits / torch.sqrt(1 + math.pi / 8 * variance), dim=-1)


def _f64(device: torch.device) -> dict[str, Any]:
    return {"dtype": torch.float64, "device": device}


def _layer_params(layer: curvature.Layer) -> list[nn.Parameter]:
    return [layer.module.weight] + ([layer.module.bias] if layer.has_bias else [])


register_method(
    Method(
        "laplace",
        "Laplace",
        "tab:brown",
        kinds=("laplace",),
        file_hint="the laplace file written by fit_laplace.py for each member",
    )
)
