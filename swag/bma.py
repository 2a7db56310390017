"""Bayesian model averaging for MultiSWAG, MultiSWA, deep ensembles and any registered method.

Wilson & Izmailov (2020). Every method approximates the Bayesian model average (paper eq. 1)

    p(y | x, D) ≈ 1/(M·S) Σ_{m=1..M} Σ_{s=1..S} p(y | x, w_{m,s}),

a uniform average of softmax probabilities over M independently trained members and S weight
samples from each member's posterior, for example:

* MultiSWAG: w_{m,s} ~ SWAG_m (scale 0.5 by default), S = 20 in the paper;
* MultiSWA: w_m = θ_SWA of member m (S = 1);
* deep ensembles: w_m = the member's final SGD weights (S = 1, no BatchNorm update).

Every member is a `swag.posteriors.Posterior` (`sample(generator)` writes weights into `.model`;
methods and the file kinds they take are registered in `swag.posteriors.methods`), and one
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

import numpy as np
import torch
from torch import nn

from swag import distributed, metrics
from swag.bma_results import ProbabilityCache, prefix_metrics
from swag.errors import UserError
from swag.posteriors import Posterior, detect_kind, get_method, load
from swag.posteriors.methods import SamplingOptions, check_kind
from swag.seeding import derived_generator, derived_seed
from swag.speed import InferenceGraph
from swag.training import load_checkpoint, predict, update_bn

# Batch size for scoring (eval mode: it changes no result). On the 2-core CPUs 256 was fastest;
# 1,000 was 1.5x slower (benchmarks/bma.py).
SCORING_BATCH_SIZE = 256


def load_member(
    method: str,
    path: str | Path,
    model: nn.Module,
    options: SamplingOptions | None = None,
) -> Posterior:
    """Load one member file into a fresh `model` (already on its device) for `--method`.

    Every file is read into a new posterior, so nothing derived from another member survives
    (the original reused the first checkpoint's deviation matrix for every member). The method
    (swag.posteriors.methods) says which file kinds it takes and adapts the posterior, e.g.
    MultiSWA evaluates the mean of a SWAG file.
    """
    chosen = get_method(method)
    state = load_checkpoint(path, map_location=next(model.parameters()).device)
    check_kind(chosen, detect_kind(state, str(path)), str(path))
    return chosen.adapt(load(state, model, name=str(path)), options or SamplingOptions())


class CheckpointMembers:
    """The M members of an ensemble, each loaded only when the evaluation reaches it.

    Holding one member at a time keeps memory at one posterior ((3+K)·D floats for SWAG; 1.4
    GB for VGG16 with K = 20) instead of M. `check()` opens every file first, so a bad member
    is reported before any scoring.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        method: str,
        build_model: Callable[[], nn.Module],
        options: SamplingOptions | None = None,
    ):
        if not paths:
            raise UserError("no member files given; pass one posterior file per member in paths")
        self.method = get_method(method)
        self.paths, self.build_model = list(paths), build_model
        self.options = options or SamplingOptions()

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        for path in self.paths:
            yield load_member(self.method.name, path, self.build_model(), self.options)

    def check(self) -> bool:
        """Load every member once (on the CPU); returns whether their draws are deterministic."""
        members = (
            load_member(self.method.name, path, self.build_model().cpu(), self.options)
            for path in self.paths
        )
        return all([posterior.deterministic for posterior in members])  # a list: load every file


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
    fold_bn: bool = True,
) -> BMAResult:
    """Draw S samples from each of M members and score every test set with each sample.

    Per sample: one `posterior.sample`, at most one BatchNorm update (over `bn_loader`, or a
    fixed random subset of `bn_subset` of its examples), then one prediction pass per test set.
    So k shifted test sets cost k prediction passes but a single BN update per sample.

    Draw s of member m is seeded by (seed, m, s) alone, so results do not depend on how the
    draws are split: under torchrun, draw m·S + s runs on rank (m·S + s) mod w and the
    per-member sums are added over the ranks in float64 (swag.distributed); every rank returns
    the full result.

    Args:
        members: M posteriors (e.g. a `CheckpointMembers`), visited once, in order.
        test_sets: name -> loader of `(x, y)` batches (test mode, fixed order); "clean" first
            by convention.
        num_samples: S, weight samples per member (1 for MultiSWA and deep ensembles).
        device: where the networks run.
        bn_loader: training loader for the BN update (augmented and shuffled, as upstream).
            Required when a member needs a BN update and its model has BatchNorm layers.
        bn_subset: number of training examples for the BN update (default: all of them).
        seed: seeds SWAG draws (per member and sample) and the BN subset.
        cache_dir: if set, also write float16 per-sample probabilities
            `<cache_dir>/<name>.npy` [M, S, N, C] and `<cache_dir>/targets.npz`.
        log: called with one progress line per sample.
        bf16: bfloat16 autocast for the BN passes and predictions (faster on CPUs with
            AVX512-BF16 and on GPUs; probabilities change slightly, see benchmarks/bma.py).
        fold_bn: predict with `swag.speed.InferenceGraph` (BatchNorm folded into the preceding
            convolutions, ReLU after max-pooling): the same probabilities up to float32
            rounding, fewer operations.

    Returns:
        A `BMAResult`; `result.curves()` gives the metrics for m = 1..M.
    """
    if num_samples < 1:
        raise UserError(f"num_samples must be at least 1, got {num_samples}")
    if not test_sets:
        raise UserError("no test set to score; pass at least one loader in test_sets")
    num_members = len(members) if hasattr(members, "__len__") else None
    world = distributed.world_size()
    if world > 1 and (cache_dir or num_members is None or num_members * num_samples < world):
        raise UserError(
            f"splitting draws over {world} processes needs a sized member list, at least "
            f"{world} draws and no probability cache; run in one process instead"
        )
    device = torch.device(device)
    sums: dict[str, list[torch.Tensor | None]] = {name: [] for name in test_sets}
    targets: dict[str, np.ndarray] = {}
    cache = ProbabilityCache(cache_dir, num_members, num_samples) if cache_dir else None
    seconds = {"sample": 0.0, "bn_update": 0.0, "predict": 0.0}
    first = next(iter(test_sets))
    for m, posterior in enumerate(members):
        # Draw (m, s) depends only on (seed, m, s), so curves for m ≤ M' agree across runs
        # with different numbers of members, and across numbers of processes.
        member_sum, drawn = {}, 0
        graph = InferenceGraph(posterior.model) if fold_bn else None
        for s in range(num_samples):
            if not distributed.my_draw(m * num_samples + s):
                continue
            generator = derived_generator(derived_seed(seed, m), s, posterior.device)
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
            network = posterior.model if graph is None else graph.refresh()
            for name, loader in test_sets.items():
                probs, labels = predict(loader, network, device, bf16=bf16)
                targets.setdefault(name, labels.numpy())
                member_sum[name] = member_sum.get(name, 0.0) + probs.double()
                if cache is not None:
                    cache.write(name, m, s, probs)
                if log is not None and name == first:
                    log(
                        f"member {m + 1} sample {s + 1}/{num_samples}: {name} NLL of this sample "
                        f"{metrics.nll(probs, labels):.4f}, of member {m + 1} so far "
                        f"{metrics.nll(member_sum[name] / (drawn + 1), labels):.4f}"
                    )
            seconds["predict"] += time.perf_counter() - start
            drawn += 1
        for name in test_sets:
            sums[name].append(member_sum.get(name))
    if not any(sums.values()):
        raise UserError("no members to evaluate; pass at least one checkpoint")
    member_probs = {
        name: _gather_members(per_member, num_samples) for name, per_member in sums.items()
    }
    totals = distributed.all_reduce_sum(torch.tensor(list(seconds.values()), dtype=torch.float64))
    seconds = dict(zip(seconds, totals.tolist(), strict=True))  # summed over the processes
    if cache is not None:
        cache.finish(targets)
    return BMAResult(member_probs, targets, seconds)


def _gather_members(per_member: list[torch.Tensor | None], num_samples: int) -> np.ndarray:
    """float32 [M, N, C]: each member's probabilities summed over its S draws (float64, over
    every rank under torchrun; a rank holds zeros for draws it did not make), divided by S."""
    shape = next(total.shape for total in per_member if total is not None)
    zeros = torch.zeros(shape, dtype=torch.float64)
    stacked = torch.stack([zeros if total is None else total for total in per_member])
    return (distributed.all_reduce_sum(stacked) / num_samples).float().numpy()


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
