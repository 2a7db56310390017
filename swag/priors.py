"""Priors in function space (Wilson & Izmailov 2020, §5): what a Gaussian weight prior says
about the functions a network computes.

The prior is p(w) = N(0, α²I) over *every* parameter (weights, biases, BatchNorm γ and β), as
the original notebooks' `resample` drew it. Drawing S weight vectors w_s and computing the
logits f(x_n; w_s) for N inputs gives the prior predictive `outputs [S, N, C]`, from which

- `output_correlations`: corr_s(f_c(x_n), f_c(x_m)) for every pair of inputs and logit c
  (the paper's prior correlation diagrams: within-class pairs correlate more);
- `perturbation_correlations`: corr_s(f_c(x), f_c(x̃_k)) between an input and its perturbed
  versions at levels k (translation, CIFAR-C corruptions);

and two baselines of the original notebooks:

- a random linear model f(x) = wᵀx + b with w, b ~ N(0, α²): its output correlation has the
  closed form (x·x' + 1)/√((|x|² + 1)(|x'|² + 1)), whatever α;
- the RBF kernel k(x, x') = exp(−‖x − x'‖²/l²) (no factor 2, l = 15000 on raw 0-255 pixels).

`prior_predictive` evaluates many prior draws in one call (`torch.func.functional_call` under
`vmap` over stacked weight vectors), in chunks of samples sized to a memory budget. BatchNorm:
`bn_mode="train"` normalises with the statistics of the forward batch (the original left its
ResNets in train mode), implemented by stripping the running buffers so batch statistics are
computed per sample under vmap; all N inputs then form one batch. `bn_mode="eval"` uses the
model's running statistics (0 and 1 for a fresh model).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap

from swag.errors import UserError

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes of weights + activations per chunk of samples
RBF_LENGTHSCALE = 15_000.0  # the original's l, on raw 0-255 pixel vectors


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise UserError(f"the prior std α must be positive, got {alpha}; pass e.g. α = 0.1")


def _check_samples(num_samples: int) -> None:
    if num_samples < 1:
        raise UserError(f"the number of prior samples must be at least 1, got {num_samples}")


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prior_draws(
    model: nn.Module, alpha: float, num_samples: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Flat weight vectors w_s ~ N(0, α²I_D), one `[D]` tensor per draw, in order.

    Each draw is one `randn(D)` call on `generator`, so the s-th draw does not depend on how
    draws are later grouped (chunk sizes), and equals the s-th `resample_` with that generator.
    """
    _check_alpha(alpha)
    _check_samples(num_samples)
    reference = next(model.parameters())
    dimension = num_parameters(model)
    device = generator.device if generator is not None else reference.device

    def draws() -> Iterator[torch.Tensor]:
        for _ in range(num_samples):
            draw = torch.randn(dimension, generator=generator, device=device, dtype=reference.dtype)
            yield (alpha * draw).to(reference.device)

    return draws()


@torch.no_grad()
def resample_(model: nn.Module, alpha: float, generator: torch.Generator | None = None) -> None:
    """Set every parameter of `model` (biases and BN affine included) to i.i.d. N(0, α²)."""
    draw = next(prior_draws(model, alpha, 1, generator))
    offset = 0
    for parameter in model.parameters():
        parameter.copy_(draw[offset : offset + parameter.numel()].view_as(parameter))
        offset += parameter.numel()


def functional_model(model: nn.Module, bn_mode: str = "train") -> nn.Module:
    """A copy of `model` for `functional_call`: BN on batch statistics ("train") or running
    statistics ("eval"); dropout is off in both (prior functions are deterministic)."""
    if bn_mode not in ("train", "eval"):
        raise UserError(f"bn_mode must be 'train' or 'eval', got {bn_mode!r}")
    copied = copy.deepcopy(model).eval()
    if bn_mode == "train":
        replace_all_batch_norm_modules_(copied)  # no running buffers: batch statistics always
    return copied


def bytes_per_sample(model: nn.Module, inputs: torch.Tensor) -> int:
    """Estimated peak bytes one prior sample adds to a no-grad forward of `inputs`.

    The weights (D floats) plus four times the largest activation (a layer's input, output and
    the residual branch alive together, with slack); shapes come from a forward on the `meta`
    device, so nothing is computed.
    """
    largest = [inputs.numel() * inputs.element_size()]

    def record(module, args, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    meta = copy.deepcopy(model).to("meta")
    hooks = [m.register_forward_hook(record) for m in meta.modules() if not list(m.children())]
    with torch.no_grad():
        meta(inputs.to("meta"))
    for hook in hooks:
        hook.remove()
    reference = next(model.parameters())
    return num_parameters(model) * reference.element_size() + 4 * largest[0]


def chunk_size(model: nn.Module, inputs: torch.Tensor, memory_budget: int) -> int:
    """Prior samples evaluated at once within `memory_budget` bytes (at least 1).

    Raises:
        UserError: the budget does not fit one sample; the message gives the smallest that does.
    """
    per_sample = bytes_per_sample(model, inputs)
    if memory_budget < per_sample:
        raise UserError(
            f"a memory budget of {memory_budget:,} bytes is too small for one prior sample over "
            f"{inputs.shape[0]} inputs; pass at least {per_sample:,} bytes"
        )
    return memory_budget // per_sample


@torch.no_grad()
def prior_predictive(
    model: nn.Module,
    inputs: torch.Tensor,
    alpha: float,
    num_samples: int,
    generator: torch.Generator | None = None,
    bn_mode: str = "train",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """Outputs of `num_samples` prior draws of `model` on `inputs`, chunked over samples.

    Args:
        model: the architecture (its current weights are not used, nor changed).
        inputs: `[N, ...]` on the model's device; one forward batch (BN statistics, train mode).
        alpha: prior std α of p(w) = N(0, α²I).
        generator: source of the draws (`prior_draws`); results do not depend on the budget.
        bn_mode: "train" (batch statistics of `inputs`, as the original) or "eval".
        memory_budget: bytes for one chunk of samples (`chunk_size`).

    Returns:
        outputs [S, N, C] (float32 for a float32 model).
    """
    draws = prior_draws(model, alpha, num_samples, generator)
    size = chunk_size(model, inputs, memory_budget)
    functional = functional_model(model, bn_mode)
    names = [name for name, _ in functional.named_parameters()]
    shapes = [parameter.shape for _, parameter in functional.named_parameters()]
    sizes = [math.prod(shape) for shape in shapes]
    buffers = dict(functional.named_buffers())

    def forward(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, sizes)
        weights = {n: p.view(s) for n, p, s in zip(names, pieces, shapes, strict=True)}
        return functional_call(functional, {**weights, **buffers}, (inputs,))

    batched = vmap(forward)
    outputs = []
    for start in range(0, num_samples, size):
        count = min(size, num_samples - start)
        outputs.append(batched(torch.stack([next(draws) for _ in range(count)])))
    return torch.cat(outputs)


def _pearson(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """corr over dim 0 between matching columns: first, second [S, ...] -> [...] (float64)."""
    first = first.double() - first.double().mean(0)
    second = second.double() - second.double().mean(0)
    return (first * second).sum(0) / (first.norm(dim=0) * second.norm(dim=0))


def output_correlations(outputs: torch.Tensor) -> torch.Tensor:
    """Correlation across samples between every pair of inputs, per logit.

    Args:
        outputs: [S, N, C] (S ≥ 2).

    Returns:
        corr [C, N, N] float64: corr[c, n, m] = corr_s(f_c(x_n; w_s), f_c(x_m; w_s)).
    """
    if outputs.shape[0] < 2:
        raise UserError("correlations need at least 2 prior samples; draw more")
    centred = outputs.double() - outputs.double().mean(0)
    covariance = torch.einsum("snc,smc->cnm", centred, centred)
    scale = covariance.diagonal(dim1=1, dim2=2).sqrt()
    return covariance / (scale[:, :, None] * scale[:, None, :])


def perturbation_correlations(outputs: torch.Tensor, logit: int = 0) -> torch.Tensor:
    """Correlation across samples between each clean input (level 0) and its perturbed versions.

    Args:
        outputs: [S, N, L, C], level 0 the clean input.

    Returns:
        corr [N, L] float64; corr[:, 0] = 1.
    """
    chosen = outputs[..., logit]
    return _pearson(chosen[:, :, :1].expand_as(chosen), chosen)


def linear_prior_outputs(
    inputs: torch.Tensor, alpha: float, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The random linear model f(x) = wᵀx + b, w ~ N(0, α²I_P), b ~ N(0, α²).

    Args:
        inputs: [N, ...], flattened to [N, P].

    Returns:
        outputs [S, N, 1] in the inputs' dtype.
    """
    _check_alpha(alpha)
    _check_samples(num_samples)
    flat = inputs.reshape(inputs.shape[0], -1)
    device = generator.device if generator is not None else flat.device
    draws = alpha * torch.randn(
        num_samples, flat.shape[1] + 1, generator=generator, device=device, dtype=flat.dtype
    ).to(flat.device)
    return (draws[:, None, :-1] @ flat.T[None]).transpose(1, 2) + draws[:, None, -1:]


def linear_correlation(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Closed-form prior correlation of the linear model: (x·x' + 1)/√((|x|²+1)(|x'|²+1)).

    Args:
        first: [N, ...], second: [M, ...] (flattened).

    Returns:
        corr [N, M] float64.
    """
    x = first.reshape(first.shape[0], -1).double()
    y = second.reshape(second.shape[0], -1).double()
    norms = (x.pow(2).sum(1) + 1)[:, None] * (y.pow(2).sum(1) + 1)[None]
    return (x @ y.T + 1) / norms.sqrt()


def rbf_kernel(
    first: torch.Tensor, second: torch.Tensor, lengthscale: float = RBF_LENGTHSCALE
) -> torch.Tensor:
    """k(x, x') = exp(−‖x − x'‖²/l²) between rows: first [N, ...], second [M, ...] -> [N, M].

    The original's convention (no factor 2); l = 15000 suits raw 0-255 CIFAR pixels.
    """
    x = first.reshape(first.shape[0], -1).double()
    y = second.reshape(second.shape[0], -1).double()
    return torch.exp(-torch.cdist(x, y).pow(2) / lengthscale**2)


def rbf_perturbation_kernel(
    levels: torch.Tensor, lengthscale: float = RBF_LENGTHSCALE
) -> torch.Tensor:
    """RBF kernel between each clean input and its perturbed versions.

    Args:
        levels: [N, L, ...], level 0 the clean input.

    Returns:
        k [N, L] float64: k[n, l] = exp(−‖x_n0 − x_nl‖²/l²); k[:, 0] = 1.
    """
    flat = levels.reshape(*levels.shape[:2], -1).double()
    return torch.exp(-(flat - flat[:, :1]).pow(2).sum(-1) / lengthscale**2)


def mean_offdiagonal(matrix: torch.Tensor) -> float:
    """Mean over pairs n ≠ m of a square matrix (the "mean clean-image correlation")."""
    size = matrix.shape[-1]
    mask = ~torch.eye(size, dtype=torch.bool, device=matrix.device)
    return float(matrix[..., mask].mean())


def class_block_means(corr: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean over same-class pairs n ≠ m, mean over different-class pairs) of `corr [N, N]`."""
    same = labels[:, None] == labels[None]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=corr.device)
    return float(corr[same & off_diagonal].mean()), float(corr[~same].mean())


def mean_class_probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """Softmax of each sample's logits averaged over inputs: outputs [S, N, C] -> [S, C]."""
    return torch.softmax(outputs.double(), dim=-1).mean(1)
