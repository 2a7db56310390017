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

computed from P = CCᵀ (Cholesky, n³/3 flops), V = C⁻¹ (n³/3), P⁻¹ = VᵀV (n³/3), A = P⁻¹L
using the zeros of L (n³) and the lower half of AAᵀ (n³): about 3n³ flops per step, all exact,
as blocked matrix products (`swag.triangular`; LAPACK's `potri` runs at a fraction of their
speed). The Cholesky factorisation stays in the parameters' dtype; the rest (V, P⁻¹, A, AAᵀ)
may run in float32 (`product_dtype`), about twice as fast on CPUs. gpytorch's default path
(conjugate gradients and stochastic Lanczos log-determinants for n > 800) is slower and noisy.

Test predictions follow gpytorch's eval path, with K̃ = σ²R + 10⁻⁴ I (its float32 jitter):
μ_* = c + K_*X K̃⁻¹ δ, v_* = σ² − diag(K_*X K̃⁻¹ K_X*) + ‖Lᵀ K̃⁻¹ K_X*‖², p(y=1) = Φ(μ_*/√(1+v_*)).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from swag import triangular

PRIOR_JITTER = 1e-3  # added to the prior covariance (gpytorch's `add_jitter()` default)
PREDICTIVE_JITTER = 1e-4  # gpytorch's variational Cholesky jitter for float32 models
QUADRATURE_POINTS = 20  # gpytorch's Gauss–Hermite default
# n×n matrices at the peak of a training step: in the parameters' dtype D², C, L, its
# gradient, Adam's two moments and one transient (the Cholesky's copy, or the inverse's two
# quarter-size blocks); in the product dtype L's copy, P⁻¹ and A, plus V and D² if the dtypes
# differ (V overwrites C when they do not).
MODEL_MATRICES, PRODUCT_MATRICES = 7, 3

GPYTORCH_NAMES = {
    "variational_mean": "variational_strategy._variational_distribution.variational_mean",
    "chol_variational_covar": (
        "variational_strategy._variational_distribution.chol_variational_covar"
    ),
    "raw_constant": "mean_module.raw_constant",
    "raw_outputscale": "covar_module.raw_outputscale",
    "raw_lengthscale": "covar_module.base_kernel.raw_lengthscale",
}


def dense_memory_bytes(
    n: int, dtype: torch.dtype = torch.float64, product_dtype: torch.dtype | None = None
) -> int:
    """Bytes of the n×n matrices a training step of `DenseVariationalGP` holds at its peak."""
    return n * n * _bytes_per_entry(dtype, product_dtype)


def largest_n(
    memory_bytes: float,
    dtype: torch.dtype = torch.float64,
    product_dtype: torch.dtype | None = None,
) -> int:
    """The largest n whose `dense_memory_bytes` fits in `memory_bytes`."""
    return math.isqrt(int(memory_bytes // _bytes_per_entry(dtype, product_dtype)))


def _bytes_per_entry(dtype: torch.dtype, product_dtype: torch.dtype | None) -> int:
    product_dtype = product_dtype or dtype
    products = PRODUCT_MATRICES + 2 * (product_dtype != dtype)
    return MODEL_MATRICES * dtype.itemsize + products * product_dtype.itemsize


def squared_distances(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """‖x_i − z_j‖² [n, m] for x [n, d], z [m, d], clamped at 0."""
    sq = (x * x).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2.0 * x @ z.T
    return sq.clamp_min_(0.0)


def solve_with_cholesky(factor: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """P⁻¹v [n] for P = CCᵀ, C = `factor` [n, n] lower (as `torch.cholesky_solve`, which
    copies C first: 800 MB at n = 10,000 in float64)."""
    row = torch.linalg.solve_triangular(factor.mT, vector[None, :], upper=True, left=False)
    return torch.linalg.solve_triangular(factor, row, upper=False, left=False)[0]


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
        product_dtype: dtype of V = C⁻¹ and the products P⁻¹ = VᵀV, A = P⁻¹L and AAᵀ, 8/3 of
            the 3n³ flops (default: train_x's). float32 about halves their cost; beside a float64
            Cholesky factor, 40 Adam steps on 2,000 Fashion-MNIST images kept −ELBO/n within
            1.1·10⁻⁴ of float64's (relative) at every step, σ² and ℓ to 5 digits, and
            the probabilities at the training inputs within 3·10⁻³.
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
        # Row-major like its gradient: LAPACK returns a column-major factor, and a fused Adam
        # step pairs parameter and gradient entries by memory position.
        self.chol_variational_covar = torch.nn.Parameter(chol.contiguous())
        self._workspace: dict[str, torch.Tensor] = {}

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

        After the Cholesky factorisation C of P (in the parameters' dtype) the n×n work runs
        in `product_dtype`: V = C⁻¹, P⁻¹ = VᵀV, A = P⁻¹L, then G = ½(P⁻¹ − AAᵀ − bbᵀ) row
        block by row block, overwriting P⁻¹ (see `swag.triangular`). The n×n buffers are kept
        between calls, so L's gradient is the same tensor at every step.

        Args:
            labels: [n] in {0, 1}.
        """
        n = labels.shape[0]
        chol_var = self.chol_variational_covar.detach()
        delta = self.variational_mean.detach() - self.raw_constant.detach()
        factor = self._prior_cholesky()
        logdet_prior = 2.0 * factor.diagonal().log().sum()
        logdet_var = chol_var.diagonal().square().log().sum()
        low = self._buffer("low", self.product_dtype)
        var = triangular.lower_copy_(chol_var, low)  # diag(S) = row norms of L
        solved_delta = solve_with_cholesky(factor, delta)  # b = P⁻¹δ
        inverse = factor
        if self.product_dtype != factor.dtype:
            inverse = self._buffer("inverse", self.product_dtype).copy_(factor)
        triangular.lower_inverse_(inverse)  # V = C⁻¹
        product = self._buffer("product", self.product_dtype)
        if backward:
            pinv = triangular.gram_(inverse, self._buffer("pinv", self.product_dtype))
            triangular.lower_product(pinv, low, out=product)  # A = P⁻¹L
            trace = triangular.frobenius_dot(product, low)  # tr(P⁻¹S) = Σ A∘L
        else:
            triangular.lower_product(inverse, low, out=product)  # C⁻¹L
            trace = triangular.frobenius_dot(product, product)  # tr(P⁻¹S) = ‖C⁻¹L‖²
        kl = 0.5 * (trace + delta @ solved_delta - n + logdet_prior - logdet_var)

        mean = self.variational_mean.detach().clone().requires_grad_(backward)
        var = var.requires_grad_(backward)
        ell = expected_log_likelihood(mean, var, 2.0 * labels.to(mean.dtype) - 1.0)
        loss = (kl - ell.detach()) / n
        if not backward:
            return float(loss)
        grad_mean, grad_var = torch.autograd.grad(ell, (mean, var))

        grad_scale, grad_length = self._hyper_gradients(pinv, product, solved_delta)
        grad_chol = self._buffer("grad_chol", chol_var.dtype)
        for start in range(0, n, triangular.BLOCK):  # (tril(A) − 2 diag(∂ELL/∂diag S) L) / n
            rows, stop = slice(start, start + triangular.BLOCK), min(start + triangular.BLOCK, n)
            block = torch.addcmul(
                product[rows, :stop], chol_var[rows, :stop], grad_var[rows, None], value=-2.0
            )
            grad_chol[rows, :stop] = block.tril_(start).div_(n)
        grad_chol.diagonal().sub_(1.0 / (n * chol_var.diagonal()))
        self.chol_variational_covar.grad = grad_chol
        self.variational_mean.grad = (solved_delta - grad_mean) / n
        self.raw_constant.grad = -solved_delta.sum() / n
        self.raw_outputscale.grad = grad_scale * torch.sigmoid(self.raw_outputscale.detach()) / n
        sigmoid_length = torch.sigmoid(self.raw_lengthscale.detach())
        self.raw_lengthscale.grad = grad_length * sigmoid_length / n
        return float(loss)

    def _buffer(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """An n×n work matrix kept between steps (fresh n×n allocations page-fault every time),
        zero when first made: entries above the diagonal that no step writes stay zero."""
        buffer = self._workspace.get(name)
        like = self.sq_dist
        if buffer is None or buffer.dtype != dtype or buffer.device != like.device:
            buffer = self._workspace[name] = torch.zeros(
                like.shape, dtype=dtype, device=like.device
            )
        return buffer

    def _prior_cholesky(self) -> torch.Tensor:
        """C = chol(σ² R + 10⁻³ I) [n, n], lower, in the parameters' dtype, in a kept buffer."""
        factor = self._buffer("factor", self.sq_dist.dtype)
        torch.mul(self.sq_dist, -0.5 / self.lengthscale.detach() ** 2, out=factor).exp_()
        factor.mul_(self.outputscale.detach()).diagonal().add_(PRIOR_JITTER)
        info = torch.empty((), dtype=torch.int32, device=factor.device)
        return torch.linalg.cholesky_ex(factor, check_errors=True, out=(factor, info))[0]

    def _hyper_gradients(self, pinv, product, solved_delta):
        """(∂KL/∂σ², ∂KL/∂ℓ): Σ G∘R and Σ G∘R∘D² over row blocks of G's lower triangle,
        G = ½(P⁻¹ − AAᵀ − bbᵀ) formed in place of P⁻¹; R recomputed per block from D²."""
        n, sums = pinv.shape[0], torch.zeros(2, dtype=torch.float64)
        solved = solved_delta.to(pinv.dtype)
        distances = self.sq_dist
        if pinv.dtype != distances.dtype:  # the elementwise passes run 4x faster in float32
            distances = self._workspace.get("sq_dist")
            if distances is None or (distances.dtype, distances.device) != (
                pinv.dtype,
                pinv.device,
            ):
                distances = self._workspace["sq_dist"] = self.sq_dist.to(pinv.dtype)
        exponent = -0.5 / self.lengthscale.detach() ** 2
        for start in range(0, n, triangular.BLOCK):
            rows, stop = slice(start, start + triangular.BLOCK), min(start + triangular.BLOCK, n)
            block = pinv[rows, :stop]
            block.addmm_(product[rows], product[:stop].T, alpha=-1.0)
            block.addr_(solved[rows], solved[:stop], alpha=-1.0)
            sq_dist = distances[rows, :stop]
            block.mul_(torch.mul(sq_dist, exponent).exp_())
            for k in range(2):  # a block left of the diagonal also stands for its transpose
                sums[k] += 2.0 * block[:, :start].sum(dtype=torch.float64)
                sums[k] += block[:, start:].sum(dtype=torch.float64)
                if k == 0:
                    block.mul_(sq_dist)
        scale, length = self.outputscale.detach(), self.lengthscale.detach()
        return 0.5 * sums[0].to(scale.dtype), 0.5 * sums[1].to(scale.dtype) * scale / length**3

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

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # one pass over L
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
