"""Generation of corrupted test sets: seeding, worker processes, dataset reading, atomic files.

Image i of corruption `name` at `severity` is corrupted with its own generator
`default_rng([seed, crc32(name), severity, i])`, so its bytes do not depend on the number of
workers, the chunking, or which corruptions, severities or `--limit` are asked for.
"""

from __future__ import annotations

import multiprocessing
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from swag.errors import UserError
from swag.io import atomic_output
from ubdl_data.corruptions import get_corruption

CHUNK = 250  # images per worker task
DATASETS = {  # torchvision class -> where it looks under --datapath
    "CIFAR10": "cifar-10-batches-py/test_batch",
    "CIFAR100": "cifar-100-python/test",
    "MNIST": "MNIST/raw/t10k-images-idx3-ubyte (and t10k-labels-idx1-ubyte)",
    "FashionMNIST": "FashionMNIST/raw/t10k-images-idx3-ubyte (and t10k-labels-idx1-ubyte)",
}
SEVERITIES = (1, 2, 3, 4, 5)


def image_rngs(seed: int, name: str, severity: int, start: int, stop: int):
    """The generators of images start..stop-1 for (seed, corruption, severity)."""
    key = zlib.crc32(name.encode())
    return [np.random.default_rng([seed, key, severity, i]) for i in range(start, stop)]


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int, start: int = 0):
    """Corrupt `images` (uint8 `[N, S, S(, C)]`, dataset indices start..start+N-1)."""
    corruption = get_corruption(name)
    rngs = image_rngs(seed, name, severity, start, start + len(images))
    return corruption.fn(images, severity, rngs if corruption.random else None)


def load_test_set(dataset: str, datapath: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Test images (uint8 `[N, 32, 32, 3]` or `[N, 28, 28]`) and labels (uint8 `[N]`)."""
    from torchvision import datasets

    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}.")
    try:
        test_set = getattr(datasets, dataset)(str(datapath), train=False, download=False)
    except RuntimeError as exc:
        raise UserError(
            f"no {dataset} test set under {datapath}: expected {Path(datapath) / DATASETS[dataset]}"
            f"; download it there or pass the right --datapath."
        ) from exc
    images = np.asarray(test_set.data, dtype=np.uint8)
    return images, np.asarray(test_set.targets).astype(np.uint8)


def save_atomic(path: Path, save: Callable[[object], None]) -> None:
    """Call `save(file)` on a temporary file next to `path`, then rename it to `path`."""
    with atomic_output(path) as stream:
        save(stream)


_IMAGES: np.ndarray | None = None


def _init_worker(images: np.ndarray) -> None:
    global _IMAGES
    _IMAGES = images
    import cv2

    cv2.setNumThreads(1)  # one process per core; 32 px images gain nothing from threads


def _run_task(task: tuple[str, int, int, int, int]) -> tuple[str, int, int, np.ndarray]:
    name, severity, start, stop, seed = task
    return name, severity, start, corrupt_images(_IMAGES[start:stop], name, severity, seed, start)


def generate(
    images: np.ndarray,
    jobs: list[tuple[str, int]],
    seed: int,
    workers: int,
) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield `(name, severity, corrupted images)` for each job, in job order.

    Work is split into chunks of `CHUNK` images; with `workers > 1` the chunks run in that many
    forked processes (one thread each).
    """
    tasks = [
        (name, severity, start, min(start + CHUNK, len(images)), seed)
        for name, severity in jobs
        for start in range(0, len(images), CHUNK)
    ]
    if workers > 1:
        # fork: the workers inherit the images and the imported modules; created here, before
        # the caller starts any thread (tqdm's monitor)
        context = multiprocessing.get_context("fork")
        pool = context.Pool(workers, initializer=_init_worker, initargs=(images,))
        return _collect(pool.imap(_run_task, tasks), len(images), pool)
    _init_worker(images)
    return _collect(map(_run_task, tasks), len(images), None)


def _collect(results, num_images: int, pool) -> Iterator[tuple[str, int, np.ndarray]]:
    try:
        parts: list[np.ndarray] = []
        for name, severity, start, part in results:
            parts.append(part)
            if start + len(part) == num_images:
                yield name, severity, np.concatenate(parts)
                parts = []
    finally:
        if pool is not None:
            pool.terminate()
