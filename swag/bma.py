"""Bayesian model averaging for MultiSWAG, MultiSWA and deep ensembles (Wilson & Izmailov 2020).

All three methods approximate the Bayesian model average (paper eq. 1)

    p(y | x, D) ≈ 1/(M·S) Σ_{m=1..M} Σ_{s=1..S} p(y | x, w_{m,s}),

a uniform average of softmax probabilities over M independently trained members and S weight
samples from each member's posterior (UPSTREAM.md §2.6.6):

* MultiSWAG: w_{m,s} ~ SWAG_m (scale 0.5 by default), S = 20 in the paper;
* MultiSWA: w_m = θ_SWA of member m (S = 1);
* deep ensembles: w_m = the member's final SGD weights (S = 1, no BatchNorm update).

Every method is a `Posterior` (`sample(generator)` writes weights into `.model`), and one
function, `bayesian_model_average`, draws every sample once, updates BatchNorm once per sample
and scores the clean and every shifted test set in that pass. Curves over the number of
members m = 1..M ("NLL vs number of independently trained models") come from the per-member
averages it returns, or from its float16 per-sample cache, without any network
(`swag.bma_results`: prefix curves, temperature scaling, the cache, JSON/CSV results).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from swag import metrics
from swag.bma_results import ProbabilityCache, prefix_metrics
from swag.errors import UserError
from swag.posteriors import SWAG
from swag.training import load_checkpoint, load_model_state, predict, update_bn

METHODS = ("multiswag", "multiswa", "ensemble")
# Batch size for scoring (eval mode: it changes no result). On the 2-core CPUs 256 was fastest;
# 1,000 was 1.5x slower (benchmarks/bma.py).
SCORING_BATCH_SIZE = 256


@runtime_checkable
class Posterior(Protocol):
    """A distribution over the weights of `.model` that can be sampled into it.

    Attributes:
        model: the network that `sample` writes weights into.
        needs_bn_update: BatchNorm statistics must be recomputed after each `sample` (true for
            weights that never saw data in train mode: SWA means and SWAG samples).
    """

    model: nn.Module
    needs_bn_update: bool

    def sample(self, generator: torch.Generator) -> None:
        """Write one weight sample into `.model`."""


class SWAGPosterior:
    """MultiSWAG member: θ̃ = θ_SWA + √scale·(Σ_diag^{1/2} z₁ + D z₂/√(K−1)).

    `scale` is posterior tempering of the SWAG covariance (0.5 in the paper), not the
    calibration temperature of `swag.calibration`.
    """

    needs_bn_update = True

    def __init__(self, swag: SWAG, scale: float = 0.5, cov: bool = True, legacy_variance=False):
        self.swag, self.scale, self.cov, self.legacy_variance = swag, scale, cov, legacy_variance
        self.model = swag.base_model

    def sample(self, generator: torch.Generator) -> None:
        self.swag.sample(self.scale, self.cov, generator, legacy_variance=self.legacy_variance)


class SWAPosterior:
    """MultiSWA member: the point mass at θ_SWA (deterministic; BN is still updated)."""

    needs_bn_update = True

    def __init__(self, swag: SWAG):
        self.swag, self.model = swag, swag.base_model

    def sample(self, generator: torch.Generator) -> None:
        self.swag.set_swa()


class CheckpointPosterior:
    """Deep-ensemble member: the point mass at fixed trained weights, BN statistics included."""

    needs_bn_update = False

    def __init__(self, model: nn.Module):
        self.model = model

    def sample(self, generator: torch.Generator) -> None:
        """Nothing to draw: the weights are already in `.model`."""


def load_member(
    method: str,
    path: str | Path,
    model: nn.Module,
    scale: float = 0.5,
    legacy_variance: bool = False,
    max_num_models: int | None = None,
) -> Posterior:
    """Load one member from a checkpoint into a fresh `model` (already on its device).

    `multiswag` / `multiswa` read a `swag-<epoch>.pt` (this project's, or the original
    repository's) into a new `SWAG`, so nothing derived from another checkpoint survives (the
    original reused the first checkpoint's deviation matrix, UPSTREAM.md §1.2). `ensemble` reads
    the SGD weights of a `checkpoint-<epoch>.pt`. `max_num_models` keeps only the most recent
    K columns of the deviation matrix (`--max_num_models`; default: all stored).
    """
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    device = next(model.parameters()).device
    state = load_checkpoint(path, map_location=device)
    weights = state.get("state_dict", state)
    is_swag = "mean" in weights
    if method == "ensemble":
        if is_swag:
            raise UserError(
                f"{path} is a SWAG checkpoint; --method ensemble takes the final SGD "
                "checkpoint-<epoch>.pt of each run"
            )
        load_model_state(model, weights, str(path))
        return CheckpointPosterior(model)
    if not is_swag:
        raise UserError(
            f"{path} holds no SWAG moments; --method {method} takes the swag-<epoch>.pt of each "
            "run trained with --swag"
        )
    if "sq_mean" in weights:  # the original repository's format
        swag = SWAG.load_upstream(weights, model)
    else:
        swag = SWAG(model)
        try:
            swag.load_state_dict(weights)
        except RuntimeError as error:
            raise UserError(
                f"{path} was saved from a different model or number of classes; pass the "
                "--model and --dataset the checkpoint was trained with"
            ) from error
    if max_num_models is not None and swag.rank > max_num_models:
        swag.deviations = swag.deviations[swag.rank - max_num_models :]
    if method == "multiswa":
        return SWAPosterior(swag)
    return SWAGPosterior(swag, scale=scale, legacy_variance=legacy_variance)


class CheckpointMembers:
    """The M members of an ensemble, each loaded only when the evaluation reaches it.

    Holding one member at a time keeps memory at one SWAG state ((3+K)·D floats; 1.4 GB for
    VGG16 with K = 20) instead of M.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        method: str,
        build_model: Callable[[], nn.Module],
        scale: float = 0.5,
        legacy_variance: bool = False,
        max_num_models: int | None = None,
    ):
        if not paths:
            raise UserError("no checkpoints given; pass one file per member with --swag_ckpts")
        self.paths, self.method, self.build_model = list(paths), method, build_model
        self.options = dict(
            scale=scale, legacy_variance=legacy_variance, max_num_models=max_num_models
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        for path in self.paths:
            model = self.build_model()
            yield load_member(self.method, path, model, **self.options)


@dataclass
class BMAResult:
    """Output of `bayesian_model_average`.

    Attributes:
        member_probs: test set name -> float32 [M, N, C], the average over the S samples of
            each member (member m's own S-sample model average).
        targets: test set name -> int64 [N].
        seconds: wall-clock time per phase ("sample", "bn_update", "predict"), summed.
    """

    member_probs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)

    def curves(self) -> dict[str, list[dict[str, float]]]:
        """Metrics of every prefix ensemble, per test set (see `prefix_metrics`)."""
        return {
            name: prefix_metrics(probs, self.targets[name])
            for name, probs in self.member_probs.items()
        }


def _member_seed(seed: int, member: int) -> int:
    # Member m's draws depend only on (seed, m), so curves for m ≤ M' agree across runs with
    # different numbers of members.
    return int(seed) * 1_000_003 + int(member)


def bayesian_model_average(
    members: Iterable[Posterior],
    test_sets: Mapping[str, Iterable],
    num_samples: int,
    device: torch.device | str,
    bn_loader: Iterable | None = None,
    bn_subset: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    bf16: bool = False,
) -> BMAResult:
    """Draw S samples from each of M members and score every test set with each sample.

    Per sample: one `posterior.sample`, at most one BatchNorm update (over `bn_loader`, or a
    fixed random subset of `bn_subset` of its examples), then one prediction pass per test set.
    So k shifted test sets cost k prediction passes but a single BN update per sample.

    Args:
        members: M posteriors (e.g. a `CheckpointMembers`), visited once, in order.
        test_sets: name -> loader of `(x, y)` batches (test mode, fixed order); "clean" first
            by convention.
        num_samples: S, weight samples per member (1 for MultiSWA and deep ensembles).
        device: where the networks run.
        bn_loader: training loader for the BN update (augmented and shuffled, as upstream).
            Required when a member needs a BN update and its model has BatchNorm layers.
        bn_subset: number of training examples for the BN update (default: all of them).
        seed: seeds SWAG draws (per member) and the BN subset.
        cache_dir: if set, also write float16 per-sample probabilities
            `<cache_dir>/<name>.npy` [M, S, N, C] and `<cache_dir>/targets.npz`.
        log: called with one progress line per sample.
        bf16: bfloat16 autocast for the BN passes and predictions (faster on CPUs with
            AVX512-BF16 and on GPUs; probabilities change slightly, see benchmarks/bma.py).

    Returns:
        A `BMAResult`; `result.curves()` gives the metrics for m = 1..M.
    """
    if num_samples < 1:
        raise UserError(f"--swag_samples must be at least 1, got {num_samples}")
    if not test_sets:
        raise UserError("no test set to score; pass a dataset (and optionally --corrupted_path)")
    num_members = len(members) if hasattr(members, "__len__") else None
    device = torch.device(device)
    sums: dict[str, list[np.ndarray]] = {name: [] for name in test_sets}
    targets: dict[str, np.ndarray] = {}
    cache = ProbabilityCache(cache_dir, num_members, num_samples) if cache_dir else None
    seconds = {"sample": 0.0, "bn_update": 0.0, "predict": 0.0}
    first = next(iter(test_sets))
    for m, posterior in enumerate(members):
        generator = torch.Generator(_posterior_device(posterior)).manual_seed(_member_seed(seed, m))
        member_sum = {}
        for s in range(num_samples):
            start = time.perf_counter()
            posterior.sample(generator)
            seconds["sample"] += time.perf_counter() - start
            if posterior.needs_bn_update:
                start = time.perf_counter()
                _update_bn(
                    posterior.model, bn_loader, bn_subset, seed, m * num_samples + s, device, bf16
                )
                seconds["bn_update"] += time.perf_counter() - start
            start = time.perf_counter()
            for name, loader in test_sets.items():
                probs, labels = predict(loader, posterior.model, device, bf16=bf16)
                targets.setdefault(name, labels.numpy())
                member_sum[name] = member_sum.get(name, 0.0) + probs.double()
                if cache is not None:
                    cache.write(name, m, s, probs)
                if log is not None and name == first:
                    log(
                        f"member {m + 1} sample {s + 1}/{num_samples}: {name} NLL of this sample "
                        f"{metrics.nll(probs, labels):.4f}, of member {m + 1} so far "
                        f"{metrics.nll(member_sum[name] / (s + 1), labels):.4f}"
                    )
            seconds["predict"] += time.perf_counter() - start
        for name in test_sets:
            sums[name].append((member_sum[name] / num_samples).float().numpy())
    if not any(sums.values()):
        raise UserError("no members to evaluate; pass at least one checkpoint")
    member_probs = {name: np.stack(per_member) for name, per_member in sums.items()}
    if cache is not None:
        cache.finish(targets)
    return BMAResult(member_probs, targets, seconds)


def _posterior_device(posterior: Posterior) -> torch.device:
    swag = getattr(posterior, "swag", None)  # SWAG draws on the device of its moments
    return (swag.mean if swag is not None else next(posterior.model.parameters())).device


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _update_bn(model, bn_loader, bn_subset, seed, draw, device, bf16=False) -> None:
    if not _has_batchnorm(model):
        return
    if bn_loader is None:
        raise UserError("this model has BatchNorm layers: pass the training loader for BN updates")
    if hasattr(bn_loader, "set_epoch"):  # fresh, reproducible augmentation for every draw
        bn_loader.set_epoch(draw)
    generator = torch.Generator().manual_seed(int(seed))  # the same subset for every draw
    update_bn(bn_loader, model, device, subset=bn_subset, generator=generator, bf16=bf16)
