"""The 1-D regression of "deep ensembles as Bayesian model averaging" (docs/original_code.md).

Wilson & Izmailov (2020), "deep ensembles as BMA": on 60 points in three clusters, a deep ensemble's
predictive distribution is closer to HMC's than a mean-field VI's. This module holds what the
scripts and notebooks of `experiments/deep_ensembles/` share: the data (features `[x, x²]`,
targets ×10), the named settings of the original notebooks, and one runner per method. The
1-D Wasserstein-2 table that compares their predictive distributions is `wasserstein.py` here.

Every method here uses the Gaussian likelihood `y | x, θ ~ N(f_θ(x), σ²)` and a Gaussian prior
`θ ~ N(0, s² I)` on all 261 weights; HMC samples `p(θ | D)^(1/T)`
(`swag.posteriors.hmc.gaussian_log_posterior`). The priors differ between methods exactly as
in the original notebooks (see `CONFIGS`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from swag.errors import UserError
from swag.io import atomic_savez, load_npz
from swag.models.regression_net import RegressionNet
from swag.posteriors.ensembles import initial_members, train_members
from swag.posteriors.flat import FlatModel
from swag.posteriors.hmc import HMCResult, gaussian_log_posterior, hmc, split_rhat
from swag.posteriors.vi import MeanFieldVI

TARGET_SCALE = 10.0  # every notebook multiplies y and y_ by 10
DATA_KEYS = ("x", "y", "x_", "y_")
# Offsets of the initialisation seeds, so HMC chains, ensemble members and VI never share one.
SEED_OFFSETS = {"ensemble": 0, "hmc": 100_000, "vi": 200_000}


@dataclass
class Regression1DData:
    """Training data `inputs [N, 2] = [x, x²]`, `targets [N, 1]` (×10) and the test grid."""

    x: Tensor
    inputs: Tensor
    targets: Tensor
    x_grid: Tensor
    grid_inputs: Tensor
    grid_targets: Tensor


def features(x: Tensor) -> Tensor:
    """`x [N] -> [N, 2]` with columns `[x, x²]`, the input of every model of the experiment."""
    return torch.stack([x, x.pow(2)], dim=1)


def load_data(path: str | Path, device: str | torch.device = "cpu") -> Regression1DData:
    """Reads a `data.npz` with keys x (N,), y (N, 1), x_ (M,), y_ (M, 1) (docs/original_code.md)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: run experiments/deep_ensembles/make_data.py")
    arrays = load_npz(path)
    missing = [k for k in DATA_KEYS if k not in arrays]
    if missing:
        raise UserError(f"{path} lacks keys {missing}: pass a file written by make_data.py")

    def tensor(key: str) -> Tensor:
        return torch.as_tensor(arrays[key], dtype=torch.float32, device=device)

    x, x_grid = tensor("x"), tensor("x_")
    return Regression1DData(
        x=x,
        inputs=features(x),
        targets=tensor("y").reshape(-1, 1) * TARGET_SCALE,
        x_grid=x_grid,
        grid_inputs=features(x_grid),
        grid_targets=tensor("y_").reshape(-1, 1) * TARGET_SCALE,
    )


def make_data(seed: int = 0, noise_std: float = 0.04, weight_std: float = 0.1) -> dict:
    """Data of the original's kind and layout (docs/original_code.md), before the ×10 scaling.

    x: three clusters of 20 equally spaced points on [-10, -6], [-2, 2], [6, 10]; x_: 100
    points on [-12, 12]. The function is a `RegressionNet` (2→10→10→10→1) with every weight
    and bias drawn from N(0, weight_std²), applied to `[x, x²]`; y adds N(0, noise_std²) noise
    (the original file's residual std is ≈ 0.044), y_ is noiseless. All draws come from
    `torch.Generator().manual_seed(seed)`.

    Returns:
        float32 numpy arrays `{"x": (60,), "y": (60, 1), "x_": (100,), "y_": (100, 1)}`.
    """
    generator = torch.Generator().manual_seed(seed)
    net = RegressionNet()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * weight_std)
        x = torch.cat([torch.linspace(lo, lo + 4.0, 20) for lo in (-10.0, -2.0, 6.0)])
        x_grid = torch.linspace(-12.0, 12.0, 100)
        y = net(features(x)) + noise_std * torch.randn((x.numel(), 1), generator=generator)
        y_grid = net(features(x_grid))
    values = (x, y, x_grid, y_grid)
    return {k: v.numpy().astype(np.float32) for k, v in zip(DATA_KEYS, values, strict=True)}


def save_npz(path: str | Path, arrays: dict) -> None:
    """Writes `arrays` to `path` atomically."""
    atomic_savez(path, **arrays)


@dataclass(frozen=True)
class HMCConfig:
    """HMC on `p(θ | D)^(1/T)`, chains started from maximum-likelihood SGD pre-training."""

    step_size: float
    num_leapfrog: int
    num_samples: int  # endpoints kept per chain
    burn: int  # trajectories discarded first
    num_chains: int
    prior_var: float
    temperature: float
    noise_var: float = 5e-4
    thin: int = 1
    pretrain_steps: int = 3000  # full-batch SGD on mean squared error / (2σ²), no prior
    pretrain_lr: float = 5e-6
    # "identity", or "ggn": diagonal M⁻¹ = 1 / (Gauss-Newton diagonal of -log p_T), taken at
    # each chain's start for the burn-in, then fixed at where the burn-in ended; step_size is
    # then in units of the local posterior std (not comparable with the originals' steps)
    mass: str = "identity"


@dataclass(frozen=True)
class EnsembleConfig:
    """Deep ensemble: MAP by full-batch SGD from independent default initialisations."""

    num_members: int = 50
    num_steps: int = 20_000
    lr: float = 5e-6
    noise_var: float = 5e-4
    prior_var: float = 100.0


@dataclass(frozen=True)
class VIConfig:
    """Mean-field VI, the Dec-2020 notebook (docs/original_code.md): means pre-trained, then SGD
    on the ELBO."""

    pretrain_steps: int = 3000
    pretrain_lr: float = 5e-6
    num_steps: int = 10_000
    lr: float = 1e-5
    noise_var: float = 5e-4
    prior_var: float = 0.1
    init_rho: float = -3.0
    num_predictive: int = 100


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    hmc: HMCConfig
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    vi: VIConfig = field(default_factory=VIConfig)


# "2020-02": the README figure. hamiltorch <= v0.3.1.dev2 used the mean log-likelihood and
# log prior / n, i.e. the posterior tempered by T = n = 60 (effective σ² = 0.03, s² = 6000).
# It also returned every intermediate leapfrog state of accepted trajectories as samples; we
# keep the T = 60 target but return trajectory endpoints only (valid MCMC). Burn-in 0, as there.
# "2020-12": the HEAD notebook: proper posterior (T = 1), prior variance 1e-3, one endpoint per
# 1000-step trajectory; 500 trajectories per chain of which the first 20 are burn-in (the
# original's diagnostics dropped 20), and 200 chains instead of the 9 that ran.
CONFIGS = {
    "2020-02": ExperimentConfig(
        "2020-02",
        HMCConfig(
            step_size=1e-3,
            num_leapfrog=10,
            num_samples=200,
            burn=0,
            num_chains=200,
            prior_var=100.0,
            temperature=60.0,
        ),
    ),
    "2020-12": ExperimentConfig(
        "2020-12",
        HMCConfig(
            step_size=2e-4,
            num_leapfrog=1000,
            num_samples=480,
            burn=20,
            num_chains=200,
            prior_var=1e-3,
            temperature=1.0,
        ),
    ),
}


def get_config(name: str) -> ExperimentConfig:
    """The named setting, "2020-02" or "2020-12"."""
    if name not in CONFIGS:
        raise UserError(f"pass a config among {sorted(CONFIGS)}, not {name!r}")
    return CONFIGS[name]


def seeds(method: str, seed: int, count: int) -> list[int]:
    """Initialisation seeds of `count` chains/members/VI nets of `method` for run seed `seed`."""
    start = SEED_OFFSETS[method] + 1000 * seed
    return list(range(start, start + count))


def pretrained_starts(
    flat: FlatModel,
    data: Regression1DData,
    seed_list: list[int],
    steps: int,
    lr: float,
    noise_var: float,
    compile: bool = False,
) -> Tensor:
    """Fresh inits trained by SGD on mean squared error / (2σ²), as every original notebook's
    pre-training: `[len(seed_list), D]`. This is gradient ascent on the flat-prior log
    likelihood at step lr / (N·out), which takes the hand-written MLP gradient."""
    starts = initial_members(flat.model, seed_list).to(data.inputs.device)
    likelihood = gaussian_log_posterior(flat, data.inputs, data.targets, noise_var, None)
    return likelihood.ascend(starts, steps, lr / data.targets.numel(), compile)


def run_hmc(
    config: HMCConfig,
    data: Regression1DData,
    num_chains: int | None = None,
    seed: int = 0,
    progress: bool = False,
    compile: bool = False,
) -> HMCResult:
    """Pre-trains `num_chains` (default `config.num_chains`) nets and runs HMC from them.

    `compile` uses `torch.compile` for the fused leapfrog steps (see `swag.posteriors.hmc`).
    """
    flat = FlatModel(RegressionNet().to(data.inputs.device))
    num_chains = num_chains or config.num_chains
    starts = pretrained_starts(
        flat,
        data,
        seeds("hmc", seed, num_chains),
        config.pretrain_steps,
        config.pretrain_lr,
        config.noise_var,
        compile,
    )
    log_prob = gaussian_log_posterior(
        flat, data.inputs, data.targets, config.noise_var, config.prior_var, config.temperature
    )
    if config.mass not in ("identity", "ggn"):
        raise UserError(f"pass mass 'identity' or 'ggn', not {config.mass!r}")
    generator = torch.Generator(data.inputs.device).manual_seed(seed)

    def sample(starts: Tensor, num_samples: int, burn: int, inverse_mass: Tensor | None):
        return hmc(
            log_prob, starts, config.step_size, config.num_leapfrog, num_samples, burn=burn,
            thin=config.thin, generator=generator, progress=progress, compile=compile,
            inverse_mass=inverse_mass,
        )  # fmt: skip

    if config.mass == "identity":
        return sample(starts, config.num_samples, config.burn, None)
    if config.burn:  # the curvature changes as the chains leave the pre-trained starts
        burn_in = sample(starts, config.burn, 0, 1 / log_prob.curvature_diagonal(starts))
        starts = burn_in.samples[:, -1]
    return sample(starts, config.num_samples, 0, 1 / log_prob.curvature_diagonal(starts))


def run_ensemble(
    config: EnsembleConfig,
    data: Regression1DData,
    num_members: int | None = None,
    seed: int = 0,
    progress: bool = False,
    compile: bool = False,
) -> Tensor:
    """Trains the deep ensemble; returns its members `[M, D]`."""
    flat = FlatModel(RegressionNet().to(data.inputs.device))
    num_members = num_members or config.num_members
    starts = initial_members(flat.model, seeds("ensemble", seed, num_members))
    return train_members(
        flat, starts.to(data.inputs.device), data.inputs, data.targets,
        noise_var=config.noise_var, prior_var=config.prior_var, num_steps=config.num_steps,
        lr=config.lr, progress=progress, compile=compile,
    )  # fmt: skip


def run_vi(
    config: VIConfig, data: Regression1DData, seed: int = 0, progress: bool = False
) -> MeanFieldVI:
    """Pre-trains the means, then fits mean-field VI by full-batch SGD on the ELBO."""
    net = RegressionNet().to(data.inputs.device)
    flat = FlatModel(net)
    start = pretrained_starts(
        flat,
        data,
        seeds("vi", seed, 1),
        config.pretrain_steps,
        config.pretrain_lr,
        config.noise_var,
    )
    flat.load(start[0])
    vi = MeanFieldVI(net, config.prior_var, init_rho=config.init_rho)
    generator = torch.Generator(data.inputs.device).manual_seed(seed)
    return vi.fit(
        data.inputs, data.targets, noise_var=config.noise_var, num_steps=config.num_steps,
        lr=config.lr, generator=generator, progress=progress,
    )  # fmt: skip


@torch.no_grad()
def predict(thetas: Tensor, inputs: Tensor, chunk: int = 4096) -> Tensor:
    """Network outputs at many parameter vectors: `thetas [..., D], inputs [M, 2] -> [K, M]`,
    with `K` the product of the leading dimensions (e.g. chains × samples)."""
    flat = FlatModel(RegressionNet().to(inputs.device))
    thetas = thetas.reshape(-1, flat.dim)
    return torch.cat([flat(t, inputs)[..., 0] for t in thetas.split(chunk)])


def vi_predictions(vi: MeanFieldVI, inputs: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """Outputs at `num_samples` draws from the VI posterior: `[S, M]`."""
    generator = torch.Generator(inputs.device).manual_seed(seed)
    with torch.no_grad():
        return predict(vi.draw(num_samples, generator), inputs)


def hmc_diagnostics(result: HMCResult, grid_predictions: Tensor) -> dict:
    """Acceptance per chain and split-R̂ of the prediction at every grid input.

    Args:
        result: the HMC run; grid_predictions: `[C, S, M]` outputs at the grid.

    Returns:
        `{"acceptance_mean", "acceptance_min", "acceptance_max", "rhat_median", "rhat_max"}`.
    """
    rhat = split_rhat(grid_predictions)
    acceptance = result.acceptance
    return {
        "acceptance_mean": acceptance.mean().item(),
        "acceptance_min": acceptance.min().item(),
        "acceptance_max": acceptance.max().item(),
        "rhat_median": rhat.median().item(),
        "rhat_max": rhat.max().item(),
    }


def run_experiment(
    config: ExperimentConfig,
    data: Regression1DData,
    num_chains: int | None = None,
    num_members: int | None = None,
    seed: int = 0,
    compile: bool = False,
    progress: bool = False,
) -> dict:
    """Runs HMC, the deep ensemble and VI of `config` and predicts on the grid.

    Returns:
        `{"hmc": [C, S, M], "ensemble": [members, M], "vi": [num_predictive, M]}` float32 numpy
        outputs at the M grid inputs (targets ×10, no observation noise), plus "diagnostics"
        (`hmc_diagnostics`) and "seconds" (wall time per method).
    """
    seconds = {}
    start = time.perf_counter()
    result = run_hmc(config.hmc, data, num_chains, seed, progress, compile)
    hmc_preds = predict(result.samples, data.grid_inputs).view(*result.samples.shape[:2], -1)
    seconds["hmc"] = time.perf_counter() - start
    start = time.perf_counter()
    members = run_ensemble(config.ensemble, data, num_members, seed, progress, compile)
    ensemble_preds = predict(members, data.grid_inputs)
    seconds["ensemble"] = time.perf_counter() - start
    start = time.perf_counter()
    vi = run_vi(config.vi, data, seed, progress)
    vi_preds = vi_predictions(vi, data.grid_inputs, config.vi.num_predictive, seed)
    seconds["vi"] = time.perf_counter() - start
    return {
        "hmc": hmc_preds.cpu().numpy(),
        "ensemble": ensemble_preds.cpu().numpy(),
        "vi": vi_preds.cpu().numpy(),
        "diagnostics": hmc_diagnostics(result, hmc_preds),
        "seconds": seconds,
    }
