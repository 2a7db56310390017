"""The Laplace fit's pass over the data: GGN sums and the log likelihood, in float64.

Each loader batch is cut into sub-batches of `curvature.SUB_BATCH` examples (small enough for
the cache and the memory allocator). On a CPU they can be shared among `workers` threads, each
with its own copy of the network and one intra-op thread (backward sweeps, scatters, small
products and copies scale poorly over intra-op threads, whole sub-batches better); on a busy
machine either way can stall, so one worker with the caller's intra-op threads is the default.
The workers' float64 sums are added in worker order at the end, so a fit is deterministic for
a given number of workers (sums in a different order than one worker only in rounding).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

from swag.posteriors import curvature


@dataclass
class Sums:
    """Per worker: Σ log p(y|x), the example count and the curvature sums (patch order).

    `diag` (hessian "diag") holds per parameter tensor a weight [O, K] or bias [O, 1] block of
    the diagonal GGN; `a` [K, K] and `g` [O, O] (hessian "kron") the KFAC sums Σ_n 1/T Σ_t a aᵀ
    and Σ_{n,r,t} g gᵀ per layer (`a` of a stride-1 Conv2d is summed as its
    `curvature.row_products` in `rows`, [T, products] per layer, and added to `a` by `finish`).
    """

    layers: list[curvature.Layer]
    model: nn.Module
    hessian: str
    log_lik: torch.Tensor = field(init=False)
    count: int = 0
    workspace: dict = field(default_factory=dict)

    def __post_init__(self):
        device = next(self.model.parameters()).device
        f64 = {"dtype": torch.float64, "device": device}
        self.log_lik = torch.zeros((), **f64)
        self.diag, self.a, self.g = [], [], []
        self.rows: list = [None] * len(self.layers)
        for layer in self.layers:
            if self.hessian == "diag":
                self.diag.append(torch.zeros(layer.out_features, layer.in_features, **f64))
                self.diag += [torch.zeros(layer.out_features, 1, **f64)] * layer.has_bias
            else:
                self.a.append(torch.zeros(layer.in_features, layer.in_features, **f64))
                self.g.append(torch.zeros(layer.out_features, layer.out_features, **f64))

    def add(self, inputs: torch.Tensor, targets: torch.Tensor, columns, log_likelihood) -> None:
        """Add one sub-batch."""
        logits, rows_a, rows_g = curvature.backpropagate(
            self.model, self.layers, inputs, columns, self.workspace, self.hessian == "kron"
        )
        self.log_lik += log_likelihood(logits, targets).double()
        self.count += inputs.shape[0]
        index = 0
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                if self.hessian == "diag":
                    weight, bias = curvature.diagonal_ggn(rows_a[i], rows_g[i])
                    self.diag[index] += weight
                    if layer.has_bias:
                        self.diag[index + 1] += bias[:, None]
                elif (products := curvature.row_products(layer, rows_a[i])) is not None:
                    self._add_rows(i, rows_g[i].shape[-1], products)
                    self.g[i] += curvature.output_factor(rows_g[i])
                else:
                    a_sum, g_sum = curvature.kfac_factors(
                        curvature.layer_inputs(layer, rows_a[i]), rows_g[i]
                    )
                    self.a[i] += a_sum
                    self.g[i] += g_sum
                index += 1 + layer.has_bias

    def _add_rows(self, i: int, positions: int, products: list[torch.Tensor]) -> None:
        if self.rows[i] is None:
            self.rows[i] = (positions, [p.to(self.a[i].dtype) for p in products])
        else:
            for total, product in zip(self.rows[i][1], products, strict=True):
                total += product

    def finish(self) -> None:
        """Add the summed row products to `a` (Σ_n 1/T Σ_t a aᵀ)."""
        for i, rows in enumerate(self.rows):
            if rows is not None:
                self.a[i] += curvature.input_factor(rows[1]) / rows[0]
                self.rows[i] = None

    def merge(self, other: Sums) -> None:
        self.log_lik += other.log_lik
        self.count += other.count
        mine_all, theirs_all = self.diag + self.a + self.g, other.diag + other.a + other.g
        for mine, theirs in zip(mine_all, theirs_all, strict=True):
            mine += theirs
        for i, rows in enumerate(other.rows):
            if rows is not None:
                self._add_rows(i, *rows)


def ggn_sums(
    model: nn.Module,
    layers: list[curvature.Layer],
    subset: str,
    hessian: str,
    loader: Iterable,
    columns: Callable,
    log_likelihood: Callable,
    workers: int = 1,
    progress: bool = False,
) -> Sums:
    """One pass over `loader` (batches (x, y)) with the model in eval mode.

    Args:
        model, layers, subset: the network and its posterior layers (`posterior_layers`).
        hessian: "diag" or "kron".
        columns: logits [N, C] → S [N, C, R] (`curvature.backpropagate`).
        log_likelihood: (logits, targets) → Σ log p(y|x) of a sub-batch.
        workers: threads on a CPU (1: the calling thread, with its intra-op threads); one on
            other devices.
        progress: a tqdm bar over the loader's batches.
    """
    from tqdm import tqdm

    model.eval()
    device = next(model.parameters()).device
    count = max(1, workers) if device.type == "cpu" else 1
    copies = [model] + [copy.deepcopy(model) for _ in range(count - 1)]
    sums = [Sums(layers, model, hessian)]
    sums += [Sums(curvature.posterior_layers(m, subset), m, hessian) for m in copies[1:]]
    threads = torch.get_num_threads()
    size = curvature.SUB_BATCH

    def run(worker: int, parts: list) -> None:
        if count > 1:  # OpenMP's thread count is per thread: set it in each worker
            torch.set_num_threads(1)
        for part, part_targets in parts[worker::count]:
            sums[worker].add(part, part_targets, columns, log_likelihood)

    try:
        if count > 1:
            torch.set_num_threads(1)
        with ThreadPoolExecutor(count) as pool:
            for inputs, targets in tqdm(loader, "Laplace GGN", disable=not progress, leave=False):
                split = inputs.to(device).split(size), targets.to(device).split(size)
                parts = list(zip(*split, strict=True))
                if count == 1:
                    run(0, parts)
                else:
                    for job in [pool.submit(run, w, parts) for w in range(count)]:
                        job.result()
    finally:
        torch.set_num_threads(threads)
    for other in sums[1:]:
        sums[0].merge(other)
    sums[0].finish()
    return sums[0]
