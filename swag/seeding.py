"""Derived seeds: one formula for every independent random stream of a seeded run.

A run seeded with `seed` needs many streams that must not depend on each other or on how
the work is split (epochs, members, draws, workers): stream k uses `derived_seed(seed, k)`.
The formula `seed * 1_000_003 + k` (a prime multiplier, so streams of nearby seeds do not
collide for k < 1,000,003) is the one results of earlier versions were made with.
"""

from __future__ import annotations

import torch

_MULTIPLIER = 1_000_003


def derived_seed(seed: int, index: int) -> int:
    """Seed of stream `index` of a run seeded with `seed`."""
    return int(seed) * _MULTIPLIER + int(index)


def derived_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A `torch.Generator` on `device` seeded with `derived_seed(seed, index)`."""
    return torch.Generator(device).manual_seed(derived_seed(seed, index))
