"""One cell of the double-descent grid: M members of one width trained on one label-noise level,
scored as SGD, SWAG, MultiSWAG and a deep ensemble of the SGD solutions.

Each member m trains from its own initialisation and data order with SGD (momentum) under the
original piecewise-linear schedule decaying to `swag_lr`, and adds its weights to a SWAG
posterior at the end of every epoch e with e > swag_start (Maddox et al., 2019). Then, on the
test set,

- SGD: the final iterate θ_m;
- SWAG: p_m = (1/S) Σ_s p(y | x, θ_ms), θ_ms ~ SWAG_m (scale 0.5, BatchNorm recomputed);
- MultiSWAG: (1/M) Σ_m p_m, the paper's Eq. (2) over a mixture of SWAG posteriors;
- ensemble: (1/M) Σ_m p(y | x, θ_m), the deep ensemble of the SGD members.

SGD and SWAG report the mean over members of each member's error and NLL. Member m's streams
(initialisation, data order, SWAG draws) depend on (seed, m) only, never on the width or noise,
so a cell gives the same numbers whether it runs alone or inside a sweep.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from swag import metrics, training
from swag.data import TensorLoader
from swag.models.registry import ModelSpec
from swag.posteriors import SWAG
from swag.seeding import derived_generator, derived_seed
from swag.transforms import InputPreset

# Stream indices of `swag.seeding.derived_seed`: data streams first, then per member m the
# streams 100 + 3m (initialisation), 100 + 3m + 1 (data order), 100 + 3m + 2 (SWAG draws).
SUBSET_STREAM, NOISE_STREAM, TEST_SUBSET_STREAM, MEMBER_STREAMS = 0, 1, 2, 100


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a cell's numbers except its width and noise level."""

    model: str
    epochs: int
    swag_start: float  # collect after epochs e (1-based) with e > swag_start
    lr: float  # initial SGD learning rate
    swag_lr: float  # constant learning rate of the SWAG phase
    wd: float  # SGD weight decay
    momentum: float
    swag_samples: int  # S draws per SWAG posterior
    scale: float  # covariance scale of the SWAG draws
    max_num_models: int  # rank K of SWAG's low-rank part
    members: int  # M
    batch_size: int
    seed: int

    def fingerprint(self) -> dict:
        return asdict(self)


@dataclass
class CellData:
    """Tensors of one noise level: images uint8 [N, C_in, H, W], labels long [N]."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    preset: InputPreset


def draw_swag_sample(posterior: SWAG, generator: torch.Generator, scale: float) -> None:
    """Write one SWAG draw θ = θ_SWA + √scale·(Σ_diag^½ z₁ + D z₂/√(K−1)) into its model."""
    posterior.sample(scale=scale, cov=True, generator=generator)


def _error_and_nll(probs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    return 1.0 - metrics.accuracy(probs, targets), metrics.nll(probs, targets)


def train_member(
    spec: ModelSpec,
    width: int,
    data: CellData,
    config: TrainConfig,
    member: int,
    device: torch.device,
) -> tuple[torch.nn.Module, SWAG, float]:
    """Train member `member` with SWAG collection; returns (SGD model, SWAG, train error).

    The train error is measured in eval mode on the (possibly noisy) training labels without
    augmentation: 0 means the member interpolates them.
    """
    stream = MEMBER_STREAMS + 3 * member
    with torch.random.fork_rng(devices=[]):
        # PyTorch's default initialisation draws from the global generator.
        torch.manual_seed(derived_seed(config.seed, stream))
        model = spec.build(data.num_classes, width=width, in_channels=data.train_images.shape[1])
    model = model.to(device)
    posterior = SWAG(copy.deepcopy(model), config.max_num_models, cov_mat=True)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.wd
    )
    train = TensorLoader(data.train_images, data.train_labels, data.preset, config.batch_size,
                         train=True, shuffle=True, device=device,
                         seed=derived_seed(config.seed, stream + 1))  # fmt: skip
    for epoch in range(config.epochs):
        factor = training.learning_rate_factor(
            epoch, config.epochs, True, config.swag_start, config.swag_lr / config.lr
        )
        training.set_learning_rate(optimizer, config.lr * factor)
        train.set_epoch(epoch)
        training.train_epoch(train, model, optimizer, device)
        if epoch + 1 > config.swag_start:
            posterior.collect_model(model)
    fit = TensorLoader(
        data.train_images, data.train_labels, data.preset, 1000, False, False, device
    )
    probs, targets = training.predict(fit, model, device)
    return model, posterior, 1.0 - metrics.accuracy(probs, targets)


def run_cell(
    spec: ModelSpec, width: int, data: CellData, config: TrainConfig, device: torch.device
) -> dict:
    """Train and score the M members of one cell; returns its JSON-ready result."""
    start = time.perf_counter()
    test = TensorLoader(data.test_images, data.test_labels, data.preset, 1000, False, False, device)
    bn_loader = TensorLoader(data.train_images, data.train_labels, data.preset, config.batch_size,
                             train=True, shuffle=True, device=device)  # fmt: skip
    num_test = data.test_labels.shape[0]
    multiswag = metrics.RunningEnsemble(num_test, data.num_classes)
    ensemble = metrics.RunningEnsemble(num_test, data.num_classes)
    rows, num_parameters = [], 0
    for member in range(config.members):
        model, posterior, train_error = train_member(spec, width, data, config, member, device)
        num_parameters = sum(p.numel() for p in model.parameters())
        sgd_probs, targets = training.predict(test, model, device)
        ensemble.update(sgd_probs)
        swag = metrics.RunningEnsemble(num_test, data.num_classes)
        generator = derived_generator(config.seed, MEMBER_STREAMS + 3 * member + 2, device)
        for _ in range(config.swag_samples):
            draw_swag_sample(posterior, generator, config.scale)
            training.update_bn(bn_loader, posterior.base_model, device)
            probs, _ = training.predict(test, posterior.base_model, device)
            swag.update(probs)
            multiswag.update(probs)
        sgd_error, sgd_nll = _error_and_nll(sgd_probs, targets)
        swag_error, swag_nll = _error_and_nll(swag.probs, targets)
        rows.append(dict(train_error=train_error, sgd_error=sgd_error, sgd_nll=sgd_nll,
                         swag_error=swag_error, swag_nll=swag_nll))  # fmt: skip
    result = {"width": width, "num_parameters": num_parameters, "members": rows}
    for key in rows[0]:
        result[key] = float(np.mean([row[key] for row in rows]))
    for name, pooled in (("multiswag", multiswag), ("ensemble", ensemble)):
        result[f"{name}_error"], result[f"{name}_nll"] = _error_and_nll(pooled.probs, targets)
    result["seconds"] = time.perf_counter() - start
    return result
