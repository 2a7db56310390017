"""Full-batch Hamiltonian Monte Carlo over the parameters of any `nn.Module`, batched over chains.

Neal (2011), "MCMC using Hamiltonian dynamics". The paper (Wilson & Izmailov, 2020)
uses HMC on a 1-D regression as the reference Bayesian model average. Unlike the hamiltorch
versions the original notebooks ran (docs/original_code.md), the semantics here are explicit:

* the target is `log p_T(θ) = (1/T)·[log N(y | f_θ(x), σ²I) + log N(θ | 0, s²I)]` + const,
  i.e. the posterior raised to the power 1/T (`gaussian_log_posterior`);
* only the endpoint of each trajectory is a sample (a rejection repeats the current point);
* `burn` whole trajectories are discarded, then every `thin`-th endpoint is kept;
* the mass matrix is the identity unless a diagonal `inverse_mass` is passed.

`C` chains advance in one batched computation. For any module the network is evaluated at a
`[C, D]` stack of flat parameter vectors with `torch.func.functional_call` under `vmap`, and one
autograd pass gives all `C` gradients. For a Linear/ReLU stack (`mlp_widths`) the gradient is
written out by hand with the chains on the last axis (`swag.posteriors.mlp_gradient`), and a
whole leapfrog step is one function that `compile=True` fuses into a single CPU kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call, jacrev, vmap

from swag.errors import UserError
from swag.posteriors.flat import FlatModel
from swag.posteriors.mlp_gradient import (
    compiled_step,
    mlp_ascent_step,
    mlp_leapfrog_step,
    mlp_log_prob_and_grad,
    mlp_widths,
)

LogProbFn = Callable[[Tensor], Tensor]
GradFn = Callable[[Tensor], tuple[Tensor, Tensor]]
# (thetas, momenta, grads, step_size, num_steps, inverse_mass) -> same as `leapfrog`
TrajectoryFn = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]


class GaussianLogPosterior:
    """The tempered log posterior of a regression net, batched over chains: `[C, D] -> [C]`.

    `log p_T(θ) = -(1/T)·[Σ_n ||y_n - f_θ(x_n)||² / (2σ²) + ||θ||² / (2s²)]`, dropping
    constants. Build it with `gaussian_log_posterior`. Calling it evaluates the network with
    `FlatModel` (any module); `dynamics` gives the gradient and leapfrog integrator `hmc` uses,
    by hand-written backpropagation for Linear/ReLU stacks, by autograd otherwise.
    """

    def __init__(
        self,
        flat_model: FlatModel,
        inputs: Tensor,
        targets: Tensor,
        noise_var: float,
        prior_var: float | None,
        temperature: float = 1.0,
        hand_gradient: bool = True,
    ):
        if noise_var <= 0 or temperature <= 0 or (prior_var is not None and prior_var <= 0):
            raise UserError("pass a positive noise variance, prior variance and temperature")
        self.flat_model, self.inputs, self.targets = flat_model, inputs, targets
        self.likelihood_scale = 1.0 / (noise_var * temperature)
        self.prior_scale = 0.0 if prior_var is None else 1.0 / (prior_var * temperature)
        widths = mlp_widths(flat_model.model) if hand_gradient and inputs.dim() == 2 else None
        self.widths = widths
        if widths is not None:
            self.inputs_t = inputs.T.contiguous()[:, :, None]
            self.targets_t = targets.reshape(len(targets), -1).T.contiguous()[:, :, None]

    def __call__(self, thetas: Tensor) -> Tensor:
        residuals = self.flat_model(thetas, self.inputs) - self.targets
        squares = residuals.pow(2).flatten(1).sum(1)
        return -0.5 * (self.likelihood_scale * squares + self.prior_scale * thetas.pow(2).sum(1))

    def dynamics(self, compile: bool = False) -> tuple[GradFn, TrajectoryFn]:
        """`(grad_fn, trajectory_fn)`: `thetas [C, D] -> (log_probs [C], grads [C, D])` and a
        function with the signature of `leapfrog` without its first argument."""
        if self.widths is None:
            grad_fn = value_and_grad(self, compile)
            return grad_fn, functools.partial(leapfrog, grad_fn)
        step = compiled_step(mlp_leapfrog_step) if compile else mlp_leapfrog_step

        def grad_fn(thetas: Tensor) -> tuple[Tensor, Tensor]:
            thetas_t = thetas.detach().T.contiguous()
            args = (self.inputs_t, self.targets_t, self.widths, *self._scalars(thetas))
            log_probs, grads_t = mlp_log_prob_and_grad(thetas_t, *args)
            return log_probs, grads_t.T

        def trajectory(thetas, momenta, grads, step_size, num_steps, inverse_mass=None):
            thetas_t, grads_t = thetas.detach().T.contiguous(), grads.T.contiguous()
            momenta_t = (momenta.T + 0.5 * step_size * grads_t).contiguous()
            inverse_mass_t = _inverse_mass_t(inverse_mass, thetas)
            scalars = self._scalars(thetas, step_size)
            log_probs = None
            for _ in range(num_steps):
                thetas_t, momenta_t, log_probs, grads_t = step(
                    thetas_t, momenta_t, inverse_mass_t, self.inputs_t, self.targets_t,
                    self.widths, *scalars,
                )  # fmt: skip
            momenta_t = momenta_t - 0.5 * step_size * grads_t
            return thetas_t.T, momenta_t.T, log_probs, grads_t.T

        return grad_fn, trajectory

    def ascend(
        self, thetas: Tensor, num_steps: int, step_size: float, compile: bool = False
    ) -> Tensor:
        """Full-batch gradient ascent `θ ← θ + η ∇log p(θ)` of every chain: `[C, D] -> [C, D]`.

        With a flat prior (`prior_var=None`) and η = lr / (N·out) this is SGD at learning rate
        lr on the mean squared error / (2σ²), the original notebooks' pre-training.
        """
        if self.widths is None:
            grad_fn = value_and_grad(self, compile)
            for _ in range(num_steps):
                thetas = thetas + step_size * grad_fn(thetas)[1]
            return thetas
        step = compiled_step(mlp_ascent_step) if compile else mlp_ascent_step
        thetas_t = thetas.detach().T.contiguous()
        scalars = self._scalars(thetas, step_size)
        for _ in range(num_steps):
            thetas_t = step(thetas_t, self.inputs_t, self.targets_t, self.widths, *scalars)
        return thetas_t.T.contiguous()

    def _scalars(self, thetas: Tensor, *values: float) -> list[Tensor]:
        """`values`, λ and κ as 0-d tensors of `thetas`' dtype and device."""
        return [thetas.new_tensor(v) for v in (*values, self.likelihood_scale, self.prior_scale)]

    def curvature_diagonal(self, thetas: Tensor) -> Tensor:
        """Diagonal of the generalised Gauss-Newton matrix of `-log p_T` at each chain.

        `G_dd(θ) = λ Σ_n Σ_k (∂f_k(x_n; θ)/∂θ_d)² + κ` (λ = 1/(σ²T), κ = 1/(s²T)): the
        likelihood curvature without the network's second derivatives. Its inverse is a
        diagonal inverse mass matrix for `hmc` (preconditioning by the local posterior scales).

        Returns:
            `[C, D]`, positive where κ > 0.
        """
        flat = self.flat_model
        buffers = dict(flat.model.named_buffers())

        def outputs(theta: Tensor) -> Tensor:
            params = {**flat.unflatten(theta), **buffers}
            return functional_call(flat.model, (params,), (self.inputs,)).reshape(-1)

        jacobians = vmap(jacrev(outputs))(thetas.detach())  # [C, N·out, D]
        return self.likelihood_scale * jacobians.pow(2).sum(1) + self.prior_scale


def _inverse_mass_t(inverse_mass: Tensor | None, thetas: Tensor) -> Tensor:
    """The inverse mass in chain-last layout: `[D, 1]` or `[D, C]`."""
    if inverse_mass is None:
        return thetas.new_ones(thetas.shape[1], 1)
    return inverse_mass.T.contiguous() if inverse_mass.dim() == 2 else inverse_mass[:, None]


def gaussian_log_posterior(
    flat_model: FlatModel,
    inputs: Tensor,
    targets: Tensor,
    noise_var: float,
    prior_var: float | None,
    temperature: float = 1.0,
    hand_gradient: bool = True,
) -> GaussianLogPosterior:
    """The tempered log posterior of a regression net, batched over chains.

    `log p_T(θ) = -(1/T)·[Σ_n ||y_n - f_θ(x_n)||² / (2σ²) + ||θ||² / (2s²)]`, dropping constants,
    with noise variance σ² = `noise_var`, prior variance s² = `prior_var` and temperature T.
    T = 1 is the Bayesian posterior; T = n is what hamiltorch ≤ v0.3.1.dev2 sampled when its
    likelihood used a mean over the data and its prior was divided by n (docs/original_code.md).

    Args:
        flat_model: the network, evaluated at flat parameter vectors.
        inputs: `[N, ...]` training inputs.
        targets: `[N, out]` training targets, shaped like the network's output.
        noise_var, prior_var, temperature: σ², s², T (all > 0; `prior_var=None`: flat prior).
        hand_gradient: use `mlp_log_prob_and_grad` when the network is a Linear/ReLU stack
            (same values as autograd up to float rounding, 5-10x faster); False: autograd.

    Returns:
        A `GaussianLogPosterior`, callable as `thetas [C, D] -> log_probs [C]`.
    """
    return GaussianLogPosterior(
        flat_model, inputs, targets, noise_var, prior_var, temperature, hand_gradient
    )


def value_and_grad(fn: LogProbFn, compile: bool = False) -> GradFn:
    """Wraps a batched `fn: thetas [C, D] -> [C]` as `thetas -> (fn(thetas) [C], grads [C, D])`.

    The chains do not interact, so the gradient of `fn(thetas).sum()` holds every chain's own
    gradient. Eager mode runs one autograd backward pass; `compile=True` runs
    `torch.func.grad` under `torch.compile` (2-3x faster for small networks on CPU, after a
    compilation of 10-30 s).
    """
    if compile:
        grad_fn = torch.compile(torch.func.grad(lambda t: _sum_and_values(fn, t), has_aux=True))

        def compiled(thetas: Tensor) -> tuple[Tensor, Tensor]:
            grads, values = grad_fn(thetas.detach())
            return values.detach(), grads

        return compiled

    def eager(thetas: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            thetas = thetas.detach().requires_grad_(True)
            values = fn(thetas)
            (grads,) = torch.autograd.grad(values.sum(), thetas)
        return values.detach(), grads

    return eager


def _sum_and_values(fn: LogProbFn, thetas: Tensor) -> tuple[Tensor, Tensor]:
    values = fn(thetas)
    return values.sum(), values


def leapfrog(
    grad_fn: GradFn,
    thetas: Tensor,
    momenta: Tensor,
    grads: Tensor,
    step_size: float,
    num_steps: int,
    inverse_mass: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`num_steps` leapfrog steps of Hamiltonian dynamics with H(θ, p) = -log p(θ) + pᵀM⁻¹p/2.

    `p ← p + (ε/2)∇log p(θ);  θ ← θ + ε M⁻¹p;  p ← p + (ε/2)∇log p(θ)`, reusing each gradient
    for the next half step (num_steps + 1 gradient evaluations per trajectory, counting the
    one passed in). `grad_fn` is `value_and_grad(log_prob_fn)`; `inverse_mass` is a diagonal
    M⁻¹, `[D]` or `[C, D]` (None: identity).

    Returns:
        `(thetas [C, D], momenta [C, D], log_probs [C], grads [C, D])` at the trajectory's end.
    """
    inverse_mass = 1.0 if inverse_mass is None else inverse_mass
    log_probs = None
    momenta = momenta + 0.5 * step_size * grads
    for _ in range(num_steps):
        thetas = thetas + step_size * inverse_mass * momenta
        log_probs, grads = grad_fn(thetas)
        momenta = momenta + step_size * grads
    return thetas, momenta - 0.5 * step_size * grads, log_probs, grads


@dataclass
class HMCResult:
    """Samples of `hmc`: `samples [C, S, D]`, `log_probs [C, S]` (the tempered target) and
    `acceptance [C]`, the fraction of accepted proposals after burn-in per chain."""

    samples: Tensor
    log_probs: Tensor
    acceptance: Tensor


def _check_inverse_mass(inverse_mass: Tensor | None, thetas: Tensor) -> None:
    if inverse_mass is None:
        return
    shapes = (thetas.shape[1:], thetas.shape)
    if inverse_mass.shape not in shapes or not (inverse_mass > 0).all():
        raise UserError(f"pass a positive inverse_mass of shape [D] or [C, D] = {tuple(shapes[1])}")


def hmc(
    log_prob_fn: LogProbFn,
    initial: Tensor,
    step_size: float,
    num_leapfrog: int,
    num_samples: int,
    burn: int = 0,
    thin: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = False,
    compile: bool = False,
    inverse_mass: Tensor | None = None,
) -> HMCResult:
    """Runs `C` independent HMC chains in lockstep.

    Each iteration draws `p ~ N(0, M)`, integrates `num_leapfrog` leapfrog steps of size ε and
    accepts the endpoint with probability `min(1, exp(H(θ, p) - H(θ', p')))` (energies in
    float64); otherwise the chain stays where it is. Iterations: `burn + num_samples · thin`.

    Args:
        log_prob_fn: batched log density `thetas [C, D] -> [C]`; a `gaussian_log_posterior` of
            a Linear/ReLU stack uses the hand-written gradient and fused leapfrog steps.
        initial: `[C, D]` starting points, one per chain, with finite log density.
        step_size: leapfrog step ε.
        num_leapfrog: leapfrog steps L per trajectory (trajectory length ε·L).
        num_samples: endpoints kept per chain, S.
        burn: trajectories discarded before keeping any.
        thin: keep every `thin`-th endpoint after burn-in.
        generator: source of the momenta and accept/reject draws (on `initial`'s device).
        progress: show a tqdm bar over iterations.
        compile: compile the gradient (or the fused leapfrog step) with `torch.compile`.
        inverse_mass: diagonal M⁻¹, `[D]` or `[C, D]` (one per chain), fixed during sampling,
            e.g. `1 / GaussianLogPosterior.curvature_diagonal(initial)`; None: identity.

    Returns:
        `HMCResult` with `samples [C, S, D]`.
    """
    if initial.dim() != 2:
        raise UserError(f"pass initial points of shape [chains, D], not {tuple(initial.shape)}")
    if step_size <= 0 or num_leapfrog < 1 or num_samples < 1 or burn < 0 or thin < 1:
        raise UserError(
            "pass step_size > 0, num_leapfrog >= 1, num_samples >= 1, burn >= 0, thin >= 1"
        )
    _check_inverse_mass(inverse_mass, initial)
    thetas = initial.detach().clone()
    if isinstance(log_prob_fn, GaussianLogPosterior):
        grad_fn, trajectory = log_prob_fn.dynamics(compile)
    else:
        grad_fn = value_and_grad(log_prob_fn, compile)
        trajectory = functools.partial(leapfrog, grad_fn)
    log_probs, grads = grad_fn(thetas)
    if not torch.isfinite(log_probs).all():
        raise UserError("start every chain at a point of finite log density (check the inputs)")
    num_chains = thetas.shape[0]
    samples = thetas.new_empty(num_chains, num_samples, thetas.shape[1])
    kept_log_probs = log_probs.new_empty(num_chains, num_samples)
    accepted = torch.zeros(num_chains, device=thetas.device)
    momentum_std = 1.0 if inverse_mass is None else inverse_mass.rsqrt()
    iterations = range(burn + num_samples * thin)
    if progress:
        from tqdm import tqdm

        iterations = tqdm(iterations, desc="hmc")
    for it in iterations:
        momenta = torch.randn(thetas.shape, generator=generator, device=thetas.device)
        momenta = momenta.to(thetas.dtype) * momentum_std
        energy = _energy(log_probs, momenta, inverse_mass)
        new = trajectory(thetas, momenta, grads, step_size, num_leapfrog, inverse_mass)
        new_thetas, new_momenta, new_log_probs, new_grads = new
        new_energy = _energy(new_log_probs, new_momenta, inverse_mass)
        log_u = torch.rand(num_chains, generator=generator, device=thetas.device).log()
        # NaN energies (diverged trajectories) compare False: rejected.
        accept = log_u < (energy - new_energy).to(log_u.dtype)
        thetas = torch.where(accept[:, None], new_thetas, thetas)
        grads = torch.where(accept[:, None], new_grads, grads)
        log_probs = torch.where(accept, new_log_probs, log_probs)
        if it >= burn:
            accepted += accept
            if (it - burn) % thin == thin - 1:
                index = (it - burn) // thin
                samples[:, index] = thetas
                kept_log_probs[:, index] = log_probs
    acceptance = accepted / (num_samples * thin)
    return HMCResult(samples, kept_log_probs, acceptance)


def _energy(log_probs: Tensor, momenta: Tensor, inverse_mass: Tensor | None) -> Tensor:
    """`H = -log p(θ) + pᵀM⁻¹p/2` in float64: `[C]`."""
    squares = momenta.double().pow(2)
    if inverse_mass is not None:
        squares = squares * inverse_mass.double()
    return 0.5 * squares.sum(1) - log_probs.double()


def split_rhat(values: Tensor) -> Tensor:
    """Split-R̂ (Gelman et al., BDA3 §11.4) of any scalar quantity, elementwise.

    Each chain is cut into halves (the middle draw of an odd length is dropped), giving 2C
    chains of n draws; with W the mean within-chain variance and B/n the variance of the
    chain means, `var⁺ = (n-1)/n · W + B/n` and `R̂ = sqrt(var⁺ / W)`.

    Args:
        values: `[C, S, ...]` draws of the quantity (e.g. predictions at each test input).

    Returns:
        `[...]` R̂ per quantity, float64; values near 1 (< 1.01) indicate mixed chains.
    """
    if values.dim() < 2 or values.shape[1] < 4:
        raise UserError("pass at least 4 draws per chain, shaped [chains, draws, ...]")
    values = values.double()
    n = values.shape[1] // 2
    halves = torch.cat([values[:, :n], values[:, -n:]])
    within = halves.var(1).mean(0)
    between_over_n = halves.mean(1).var(0)
    var_plus = (n - 1) / n * within + between_over_n
    return torch.sqrt(var_plus / within)
