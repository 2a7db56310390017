"""Variational GP classification with every training point as an inducing point, by dense
Cholesky factorisations in plain torch, with hand-written gradients.

This is the model of the paper's GP label-corruption study (§6), which the original built with
gpytorch (an `ApproximateGP` with `CholeskyVariationalDistribution`,
`UnwhitenedVariationalStrategy(inducing_points=X, learn_inducing_locations=False)`,
`ConstantMean`, `ScaleKernel(RBFKernel())`, `BernoulliLikelihood`, `VariationalELBO`). The same
parameters, with gpytorch's names and initial values (`gpytorch_state_dict` converts):

    f ~ GP(c, σ² R),  R_ij = exp(−‖x_i − x_j‖² / (2ℓ²)),  y_i ~ Bernoulli(Φ(f_i)),
    q(u) = N(m, L Lᵀ), u = f(X) [n], L lower-triangular [n, n],
    p(u) = N(c·1, P), P = σ² R + 10⁻³ I   (gpytorch's default jitter on the prior covariance),
    ELBO/n = (1/n) [Σ_i E_{f ~ N(m_i, S_ii)} log Φ((2y_i − 1) f) − KL(q ‖ p)],
    KL = ½ [tr(P⁻¹S) + δᵀP⁻¹δ − n + log|P| − log|S|],  δ = m − c·1,  S = L Lᵀ.

At the inducing points q(f) = q(u) exactly, so the expected log likelihood (20-point
Gauss–Hermite quadrature, as gpytorch) needs only m and diag(S). The KL's gradients are

    ∂/∂δ = P⁻¹δ,  ∂/∂L = tril(P⁻¹L) − diag(1/L_ii),  ∂/∂P = G = ½ (P⁻¹ − P⁻¹(S + δδᵀ)P⁻¹),
    ∂/∂σ² = Σ_ij G_ij R_ij,  ∂/∂ℓ = (σ²/ℓ³) Σ_ij G_ij R_ij D²_ij,

computed from P⁻¹ (Cholesky n³/3 + inverse 2n³/3 flops), A = P⁻¹L using the zeros of L (n³)
and the lower half of AAᵀ (n³): about 3n³ flops per step, all exact. gpytorch's default path
(conjugate gradients and stochastic Lanczos log-determinants for n > 800) is slower and noisy.

Test predictions follow gpytorch's eval path, with K̃ = σ²R + 10⁻⁴ I (its float32 jitter):
μ_* = c + K_*X K̃⁻¹ δ, v_* = σ² − diag(K_*X K̃⁻¹ K_X*) + ‖Lᵀ K̃⁻¹ K_X*‖², p(y=1) = Φ(μ_*/√(1+v_*)).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PRIOR_JITTER = 1e-3  # added to the prior covariance (gpytorch's `add_jitter()` default)
PREDICTIVE_JITTER = 1e-4  # gpytorch's variational Cholesky jitter for float32 models
QUADRATURE_POINTS = 20  # gpytorch's Gauss–Hermite default
MATRICES_HELD = 9  # n×n matrices alive in a step: D², R, C, P⁻¹, A, L, its grad, Adam's two
BLOCK = 512  # columns per block of the triangular products

GPYTORCH_NAMES = {
    "variational_mean": "variational_strategy._variational_distribution.variational_mean",
    "chol_variational_covar": (
        "variational_strategy._variational_distribution.chol_variational_covar"
    ),
    "raw_constant": "mean_module.raw_constant",
    "raw_outputscale": "covar_module.raw_outputscale",
    "raw_lengthscale": "covar_module.base_kernel.raw_lengthscale",
}


def dense_memory_bytes(n: int, dtype: torch.dtype = torch.float64) -> int:
    """Bytes of the n×n matrices a training step of `DenseVariationalGP` holds at once."""
    return MATRICES_HELD * n * n * torch.empty((), dtype=dtype).element_size()


def largest_n(memory_bytes: float, dtype: torch.dtype = torch.float64) -> int:
    """The largest n whose `dense_memory_bytes` fits in `memory_bytes`."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(math.sqrt(memory_bytes / (MATRICES_HELD * itemsize)))


def squared_distances(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """‖x_i − z_j‖² [n, m] for x [n, d], z [m, d], clamped at 0."""
    sq = (x * x).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2.0 * x @ z.T
    return sq.clamp_min_(0.0)


def lower_product(pinv: torch.Tensor, chol: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """A = P⁻¹ L [n, n] for lower-triangular L, skipping L's zero rows block by block."""
    product = torch.empty_like(pinv)
    for start in range(0, chol.shape[0], block):
        stop = min(start + block, chol.shape[0])
        product[:, start:stop] = pinv[:, start:] @ chol[start:, start:stop]
    return product


def expected_log_likelihood(mean: torch.Tensor, var: torch.Tensor, signs: torch.Tensor):
    """Σ_i E_{f ~ N(mean_i, var_i)} log Φ(signs_i f) by Gauss–Hermite quadrature (a scalar)."""
    nodes, weights = np.polynomial.hermite.hermgauss(QUADRATURE_POINTS)
    nodes = torch.as_tensor(nodes, dtype=mean.dtype, device=mean.device)
    weights = torch.as_tensor(weights / math.sqrt(math.pi), dtype=mean.dtype, device=mean.device)
    f = mean[:, None] + torch.sqrt(2.0 * var)[:, None] * nodes[None, :]
    return (torch.special.log_ndtr(signs[:, None] * f) @ weights).sum()


class DenseVariationalGP(torch.nn.Module):
    """q(u) = N(m, LLᵀ) over f at all n training inputs, with a constant mean and a scaled RBF
    kernel; parameters named and initialised as gpytorch's (softplus-constrained σ², ℓ).

    Args:
        train_x: [n, d] inputs (already scaled), in the dtype of the parameters and of the
            Cholesky factorisations.
        generator: draws the initial m = c + 10⁻³ ε, as gpytorch's initialisation.
        product_dtype: dtype of the two n³ products A = P⁻¹L and AAᵀ (default: train_x's).
            float32 halves their cost; with float64 factorisations the gradients of a trained
            N = 1,000 model moved by under 4·10⁻⁶ of their largest entry.
    """

    def __init__(
        self,
        train_x: torch.Tensor,
        generator: torch.Generator | None = None,
        product_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        n, dtype = train_x.shape[0], train_x.dtype
        self.product_dtype = product_dtype or dtype
        self.register_buffer("train_x", train_x)
        self.register_buffer("sq_dist", squared_distances(train_x, train_x).fill_diagonal_(0.0))
        like = {"dtype": dtype, "device": train_x.device}
        self.raw_constant = torch.nn.Parameter(torch.zeros((), **like))
        self.raw_outputscale = torch.nn.Parameter(torch.zeros((), **like))
        self.raw_lengthscale = torch.nn.Parameter(torch.zeros(1, 1, **like))
        noise = torch.randn(n, generator=generator, dtype=dtype)  # a CPU generator
        self.variational_mean = torch.nn.Parameter(1e-3 * noise.to(train_x.device))
        with torch.no_grad():
            chol = torch.linalg.cholesky(self.prior_covariance(self.correlation()))
        self.chol_variational_covar = torch.nn.Parameter(chol)

    @property
    def outputscale(self) -> torch.Tensor:
        return F.softplus(self.raw_outputscale)

    @property
    def lengthscale(self) -> torch.Tensor:
        return F.softplus(self.raw_lengthscale).reshape(())

    def correlation(self) -> torch.Tensor:
        """R = exp(−D²/(2ℓ²)) [n, n] between the training inputs."""
        return torch.exp(self.sq_dist * (-0.5 / self.lengthscale.detach() ** 2))

    def prior_covariance(self, correlation: torch.Tensor) -> torch.Tensor:
        covariance = correlation * self.outputscale.detach()
        covariance.diagonal().add_(PRIOR_JITTER)
        return covariance

    def negative_elbo(self, labels: torch.Tensor, backward: bool = True) -> float:
        """−ELBO/n at the current parameters; with `backward`, its gradients go to `.grad`.

        Args:
            labels: [n] in {0, 1}.
        """
        n = labels.shape[0]
        chol_var = self.chol_variational_covar.detach().tril()
        delta = self.variational_mean.detach() - self.raw_constant.detach()
        correlation = self.correlation()
        chol_prior = torch.linalg.cholesky(self.prior_covariance(correlation))
        logdet_prior = 2.0 * chol_prior.diagonal().log().sum()
        logdet_var = chol_var.diagonal().square().log().sum()
        solved_delta = torch.cholesky_solve(delta[:, None], chol_prior)[:, 0]  # P⁻¹δ
        if backward:
            pinv = torch.cholesky_inverse(chol_prior)
            del chol_prior
            low = chol_var.to(self.product_dtype)
            product = lower_product(pinv.to(self.product_dtype), low)  # A = P⁻¹L
            trace = (product * low).sum(dtype=pinv.dtype)
            del low
        else:
            whitened = torch.linalg.solve_triangular(chol_prior, chol_var, upper=False)
            trace = whitened.square().sum()
        kl = 0.5 * (trace + delta @ solved_delta - n + logdet_prior - logdet_var)

        mean = self.variational_mean.detach().clone().requires_grad_(backward)
        var = chol_var.square().sum(1).requires_grad_(backward)
        ell = expected_log_likelihood(mean, var, 2.0 * labels.to(mean.dtype) - 1.0)
        loss = (kl - ell.detach()) / n
        if not backward:
            return float(loss)
        grad_mean, grad_var = torch.autograd.grad(ell, (mean, var))

        grad_scale, grad_length = self._hyper_gradients(pinv, product, solved_delta, correlation)
        del pinv, correlation
        grad_chol = product.tril_().to(chol_var.dtype)  # tril(P⁻¹L)
        del product
        grad_chol.diagonal().sub_(1.0 / chol_var.diagonal())
        grad_chol.sub_(2.0 * grad_var[:, None] * chol_var).div_(n)
        self.chol_variational_covar.grad = grad_chol
        self.variational_mean.grad = (solved_delta - grad_mean) / n
        self.raw_constant.grad = -solved_delta.sum() / n
        self.raw_outputscale.grad = grad_scale * torch.sigmoid(self.raw_outputscale.detach()) / n
        sigmoid_length = torch.sigmoid(self.raw_lengthscale.detach())
        self.raw_lengthscale.grad = grad_length * sigmoid_length / n
        return float(loss)

    def _hyper_gradients(self, pinv, product, solved_delta, correlation):
        """(∂KL/∂σ², ∂KL/∂ℓ) from G = ½(P⁻¹ − AAᵀ − bbᵀ), b = P⁻¹δ, over G's lower blocks."""
        n = pinv.shape[0]
        grad_r = grad_rd = 0.0
        for start in range(0, n, BLOCK):
            rows = slice(start, min(start + BLOCK, n))
            stop = rows.stop
            block = pinv[rows, :stop] - torch.outer(solved_delta[rows], solved_delta[:stop])
            block -= (product[rows] @ product[:stop].T).to(block.dtype)
            block *= correlation[rows, :stop]
            weights = torch.full((stop,), 2.0, dtype=pinv.dtype, device=pinv.device)
            weights[start:] = 1.0  # a block left of the diagonal also stands for its transpose
            grad_r += float((block @ weights).sum())
            grad_rd += float(((block * self.sq_dist[rows, :stop]) @ weights).sum())
        scale, length = self.outputscale.detach(), self.lengthscale.detach()
        return 0.5 * grad_r, 0.5 * grad_rd * scale / length**3

    @torch.no_grad()
    def predict(self, test_x: torch.Tensor, batch_size: int = 2048):
        """Predictive mean and variance of f at `test_x` [m, d] (gpytorch's eval path).

        Returns:
            mean [m], var [m].
        """
        scale, length = self.outputscale, self.lengthscale
        covariance = self.correlation() * scale
        covariance.diagonal().add_(PREDICTIVE_JITTER)
        chol = torch.linalg.cholesky(covariance)
        del covariance
        delta = self.variational_mean - self.raw_constant
        chol_var = self.chol_variational_covar.tril()
        means, variances = [], []
        for batch in test_x.split(batch_size):
            cross = torch.exp(squared_distances(self.train_x, batch) * (-0.5 / length**2)) * scale
            solved = torch.cholesky_solve(cross, chol)  # K̃⁻¹ K_X* [n, b]
            means.append(self.raw_constant + solved.T @ delta)
            reduction = (cross * solved).sum(0) - (chol_var.T @ solved).square().sum(0)
            variances.append((scale - reduction).clamp_min(0.0))
        return torch.cat(means), torch.cat(variances)

    def probabilities(self, test_x: torch.Tensor) -> torch.Tensor:
        """p(y = 1 | x) = Φ(μ / √(1 + v)) [m] (the Bernoulli-probit marginal)."""
        mean, var = self.predict(test_x)
        return torch.special.ndtr(mean / torch.sqrt(1.0 + var))

    def train_probabilities(self) -> torch.Tensor:
        """p(y = 1) at the training inputs, where q(f) = N(m, diag(S)) exactly [n]."""
        var = self.chol_variational_covar.detach().tril().square().sum(1)
        return torch.special.ndtr(self.variational_mean.detach() / torch.sqrt(1.0 + var))

    def gpytorch_state_dict(self) -> dict[str, torch.Tensor]:
        """This model's parameters under gpytorch's names (loads into the original's model)."""
        state = {GPYTORCH_NAMES[name]: value.detach() for name, value in self.named_parameters()}
        state["variational_strategy.inducing_points"] = self.train_x
        state["variational_strategy.variational_params_initialized"] = torch.tensor(1)
        return state

    def load_gpytorch_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy parameters from a gpytorch model's `state_dict()` (same n)."""
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                parameter.copy_(state[GPYTORCH_NAMES[name]].reshape(parameter.shape))


def fit(
    model: DenseVariationalGP,
    labels: torch.Tensor,
    iterations: int,
    lr: float = 0.1,
    progress: bool = True,
) -> list[float]:
    """Adam(lr) on −ELBO/n, full batch, as the original; returns −ELBO/n before each step."""
    from tqdm import tqdm

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    steps = tqdm(range(iterations), desc="GP", disable=not progress)
    for _ in steps:
        optimizer.zero_grad(set_to_none=True)
        history.append(model.negative_elbo(labels))
        optimizer.step()
        steps.set_postfix(loss=f"{history[-1]:.4f}")
    return history


def gpytorch_classifier(train_x: torch.Tensor):
    """The original's gpytorch model over `train_x` [n, d] (every point inducing), and its
    Bernoulli likelihood: the reference `DenseVariationalGP` is checked and timed against.

    Its variational jitter is fixed at `PREDICTIVE_JITTER` whatever the dtype, as the
    original's float32 model had it.
    """
    import gpytorch

    class GPClassificationModel(gpytorch.models.ApproximateGP):
        def __init__(self, inducing_points: torch.Tensor):
            distribution = gpytorch.variational.CholeskyVariationalDistribution(
                inducing_points.size(0)
            )
            strategy = gpytorch.variational.UnwhitenedVariationalStrategy(
                self,
                inducing_points,
                distribution,
                learn_inducing_locations=False,
                jitter_val=PREDICTIVE_JITTER,
            )
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x)
            )

    model = GPClassificationModel(train_x).to(train_x.dtype)
    return model, gpytorch.likelihoods.BernoulliLikelihood()


def gpytorch_step(model, likelihood, optimizer, train_x, labels) -> float:
    """One Adam step of the gpytorch model on −ELBO/n (the original's loop body)."""
    import gpytorch

    model.train()
    likelihood.train()
    mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=labels.shape[0])
    optimizer.zero_grad(set_to_none=True)
    loss = -mll(model(train_x), labels.to(train_x.dtype))
    loss.backward()
    optimizer.step()
    return float(loss.detach())
