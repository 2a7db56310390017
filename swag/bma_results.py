"""Scoring and storing Bayesian model averages: prefix curves, temperature scaling, caches.

`swag.bma.bayesian_model_average` produces per-member probabilities; this module turns them
into metrics for every prefix of members (m = 1..M), applies calibration temperature scaling,
reads and writes the float16 per-sample probability cache, and writes results atomically as
JSON and CSV.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from swag import metrics
from swag.calibration import fit_temperature, probs_to_logits, scale_logits
from swag.errors import UserError
from swag.io import (
    PARTIAL_SUFFIX,
    atomic_savez,
    atomic_write_bytes,
    disk_error,
    load_npy,
    load_npz,
)

METRICS = ("nll", "accuracy", "ece", "brier")


def prefix_metrics(member_probs, targets) -> list[dict[str, float]]:
    """Metrics of the ensembles of the first m members, m = 1..M.

    The prefix ensemble is p_m(y|x) = (1/m) Σ_{j≤m} p̄_j(y|x), with p̄_j member j's average
    over its own samples (all members have the same S, so this is the uniform average over
    the m·S samples).

    Args:
        member_probs: [M, N, C] per-member probabilities (or [M, S, N, C] per sample, averaged
            over S first).
        targets: [N] class indices.

    Returns:
        M dicts {"num_models": m, "nll" (mean over examples), "accuracy" (fraction), "ece",
        "brier"}.
    """
    probs = np.asarray(member_probs)
    if probs.ndim == 4:
        probs = probs.astype(np.float64).mean(axis=1)
    targets = np.asarray(targets)
    running = np.zeros(probs.shape[1:], dtype=np.float64)
    rows = []
    for m in range(probs.shape[0]):
        running += probs[m]
        rows.append({"num_models": m + 1, **_score(running / (m + 1), targets)})
    return rows


def _score(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return {name: getattr(metrics, name)(probs, targets) for name in METRICS}


def temperature_scaled_curves(
    member_probs: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    fit_set: str = "clean",
    seed: int = 0,
) -> tuple[list[float], dict[str, list[dict]], dict[str, list[dict]]]:
    """Prefix curves before and after calibration temperature scaling of each prefix BMA.

    For every m, T_m is fitted (`swag.calibration.fit_temperature` on log p_m) on a fixed
    random half of `fit_set`; the other half is reported as `<fit_set>_heldout`, and every
    other test set is reported whole. Shifted sets made from the same clean images share
    images with the fitting half, so their "after" numbers are slightly optimistic.

    Returns:
        (temperatures [M], before, after): curves keyed by test set, as `prefix_metrics`.
    """
    clean_probs, clean_targets = np.asarray(member_probs[fit_set]), np.asarray(targets[fit_set])
    if len(clean_targets) < 2:
        raise UserError(f"temperature scaling needs at least 2 examples in {fit_set}")
    order = np.random.default_rng(seed).permutation(len(clean_targets))
    fit, held = order[: len(order) // 2], order[len(order) // 2 :]
    sets = {f"{fit_set}_heldout": (clean_probs[:, held], clean_targets[held])}
    sets.update({k: (member_probs[k], targets[k]) for k in member_probs if k != fit_set})
    running_fit = np.zeros(clean_probs.shape[1:], np.float64)[fit]
    running = {k: np.zeros(p.shape[1:], np.float64) for k, (p, _) in sets.items()}
    temperatures, before, after = [], {k: [] for k in sets}, {k: [] for k in sets}
    for m in range(clean_probs.shape[0]):
        running_fit += clean_probs[m, fit]
        t = fit_temperature(probs_to_logits(running_fit / (m + 1)), clean_targets[fit])
        temperatures.append(t)
        for k, (p, y) in sets.items():
            running[k] += p[m]
            averaged = running[k] / (m + 1)
            scaled = scale_logits(probs_to_logits(averaged), t).numpy()
            before[k].append({"num_models": m + 1, **_score(averaged, y)})
            after[k].append({"num_models": m + 1, "temperature": t, **_score(scaled, y)})
    return temperatures, before, after


class ProbabilityCache:
    """float16 per-sample probabilities: one `.npy` [M, S, N, C] per test set, renamed when done."""

    def __init__(self, directory, num_members, num_samples):
        if num_members is None:
            raise UserError("a probability cache needs members with a length (a list)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shape, self.arrays = (num_members, num_samples), {}

    def write(self, name: str, member: int, sample: int, probs: torch.Tensor) -> None:
        if name not in self.arrays:
            self.arrays[name] = self._allocate(name, (*self.shape, *probs.shape))
        self.arrays[name][member, sample] = probs.numpy().astype(np.float16)

    def _allocate(self, name: str, shape: tuple[int, ...]) -> np.memmap:
        """A memory-mapped temporary whose disk blocks are reserved now: a full disk is then a
        sentence here, not a bus error when a page of the mapping is first written."""
        path = self.directory / f".{name}.npy{PARTIAL_SUFFIX}"
        needed = int(np.prod(shape)) * 2
        try:
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
            with open(path, "r+b") as stream:
                os.posix_fallocate(stream.fileno(), 0, os.path.getsize(path))
        except OSError as error:
            path.unlink(missing_ok=True)
            raise disk_error(self.directory / f"{name}.npy", error, needed) from None
        return array

    def finish(self, targets: Mapping[str, np.ndarray]) -> None:
        for array in self.arrays.values():
            array.flush()
        names, self.arrays = list(self.arrays), {}
        for name in names:
            os.replace(
                self.directory / f".{name}.npy{PARTIAL_SUFFIX}", self.directory / f"{name}.npy"
            )
        atomic_savez(self.directory / "targets.npz", **targets)


def load_probability_cache(directory: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a cache written with `cache_dir`: (name -> float16 [M, S, N, C] memmap, targets)."""
    directory = Path(directory)
    if not (directory / "targets.npz").is_file():
        raise UserError(f"{directory} is not a complete probability cache (no targets.npz)")
    targets = load_npz(directory / "targets.npz")
    probs = {name: load_npy(directory / f"{name}.npy", mmap=True) for name in targets}
    return probs, targets


def split_test_set_name(name: str) -> tuple[str, int]:
    """`<corruption>_<s>` -> (corruption, s), split at the last underscore; others -> (name, 0)."""
    corruption, _, severity = name.rpartition("_")
    return (corruption, int(severity)) if severity.isdigit() else (name, 0)


def curve_rows(curves: Mapping[str, list[dict]], **columns) -> list[dict]:
    """Flatten {test set: [prefix metrics]} into CSV rows with `corruption` and `severity`
    (`split_test_set_name`: the clean set gets severity 0)."""
    rows = []
    for name, per_prefix in curves.items():
        corruption, severity = split_test_set_name(name)
        for entry in per_prefix:
            row = {**columns, "test_set": name, "corruption": corruption}
            rows.append({**row, "severity": severity, **entry})
    return rows


def write_results(directory: str | Path, stem: str, payload: dict, rows: list[dict]) -> None:
    """Write `<stem>.json` (the payload) and `<stem>.csv` (the rows), each atomically."""
    directory = Path(directory)
    atomic_write_bytes(directory / f"{stem}.json", json.dumps(payload, indent=1).encode())
    fields = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(directory / f"{stem}.csv", text.getvalue().encode())
