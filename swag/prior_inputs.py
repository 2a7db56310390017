"""Inputs of the prior studies (swag/priors.py): class-sorted image sets, perturbations, paths.

The original notebooks picked a fixed number of test images of each of a few classes, sorted by
class (MNIST: the first 200 of classes {0, 1, 2, 4, 7}; CIFAR-10: within-class indices 5..14 of
every class), perturbed each image at intensities 1..5 (translation: zero padding of 2k pixels
and a random 32-pixel crop; or a CIFAR-10-C corruption at severity k), and walked a straight
path between two digits. Images here are uint8 `[N, C, H, W]` until a model needs floats.
Offline, Fashion-MNIST stands in for MNIST and, made RGB 32×32 (`to_rgb32`), for CIFAR-10.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from swag import data
from swag.errors import UserError
from swag.transforms import InputPreset, input_preset


def class_indices(
    targets: torch.Tensor, classes: Sequence[int], per_class: int, offset: int = 0
) -> torch.Tensor:
    """Indices of the images at within-class positions offset..offset+per_class−1 of each class,
    grouped by class in the order of `classes` (dataset order inside a class).

    Raises:
        UserError: a class is absent or has too few images.
    """
    chosen = []
    for label in classes:
        members = (targets == label).nonzero().flatten()
        if members.numel() < offset + per_class:
            raise UserError(
                f"class {label} has {members.numel()} images, fewer than the {offset + per_class} "
                f"needed; choose classes present in the dataset or fewer images per class"
            )
        chosen.append(members[offset : offset + per_class])
    return torch.cat(chosen)


def load_class_images(
    dataset: str,
    data_path: str | Path,
    classes: Sequence[int],
    per_class: int,
    offset: int = 0,
    train: bool = False,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` images of each class of a split, sorted by class.

    Returns:
        images [N, C, H, W] uint8, targets [N] long.

    Raises:
        UserError: the dataset is missing (the sentence names `make data` and `--download`).
    """
    images, targets = data.load_split(dataset, data_path, train=train, download=download)
    index = class_indices(targets, classes, per_class, offset)
    return images[index], targets[index]


def normalise(images: torch.Tensor, preset: str | InputPreset) -> torch.Tensor:
    """uint8 `[N, C, H, W]` → float32 with the preset's per-channel mean and std."""
    preset = input_preset(preset)
    mean = torch.tensor(preset.mean).view(1, -1, 1, 1)
    std = torch.tensor(preset.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def to_rgb32(images: torch.Tensor) -> torch.Tensor:
    """Grey 28×28 `[N, 1, 28, 28]` → RGB 32×32 `[N, 3, 32, 32]`: 2 px of zero padding per side
    (no interpolation, so pixel statistics stay those of the data), channel copied three times."""
    if images.shape[1:] != (1, 28, 28):
        raise UserError(f"to_rgb32 takes [N, 1, 28, 28] images, got {tuple(images.shape)}")
    return torch.nn.functional.pad(images, (2, 2, 2, 2)).repeat(1, 3, 1, 1)


def translate(images: torch.Tensor, intensity: int, rng: np.random.Generator) -> torch.Tensor:
    """The original's translation at `intensity` k: zero-pad by 2k, crop back at a random offset
    (a shift of up to ±2k pixels in each direction, independently per image)."""
    pad = 2 * intensity
    if pad == 0:
        return images.clone()
    height, width = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    offsets = rng.integers(0, 2 * pad + 1, size=(images.shape[0], 2))
    return torch.stack(
        [p[:, r : r + height, c : c + width] for p, (r, c) in zip(padded, offsets, strict=True)]
    )


def corruption(
    fn: Callable, rng: np.random.Generator
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Adapt a CIFAR-C corruption `fn(images [N, H, W, C] uint8, severity, rng)` (the functions
    of `ubdl_data.corruptions`) to `perturb(images [N, C, H, W], level)`."""

    def perturb(images: torch.Tensor, level: int) -> torch.Tensor:
        corrupted = fn(images.permute(0, 2, 3, 1).numpy(), level, rng)
        return torch.from_numpy(np.ascontiguousarray(corrupted)).permute(0, 3, 1, 2)

    return perturb


def perturbation_levels(
    images: torch.Tensor, perturb: Callable[[torch.Tensor, int], torch.Tensor], levels: int = 5
) -> torch.Tensor:
    """The clean images and `perturb(images, k)` for k = 1..levels: `[N, levels + 1, C, H, W]`."""
    return torch.stack([images, *(perturb(images, k) for k in range(1, levels + 1))], 1)


def interpolation_path(start: torch.Tensor, end: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """x(t) = start + t·(end − start) for each t, every point rescaled to the L2 norm of the
    first, x(ts[0]) (as the original). Returns `[T, *start.shape]`."""
    shape = (-1,) + (1,) * start.ndim
    path = start[None] + ts.view(shape) * (end - start)[None]
    norms = path.flatten(1).norm(dim=1).view(shape)
    return path * (norms[0] / norms)


def available_dataset(
    data_path: str | Path, candidates: Sequence[str], download: bool = False
) -> str:
    """The first of `candidates` whose test split loads from `data_path` (with `download`, the
    first candidate is fetched)."""
    if download:
        data.load_split(candidates[0], data_path, train=False, download=True)
        return candidates[0]
    for dataset in candidates:
        try:
            data.load_split(dataset, data_path, train=False)
        except UserError:
            continue
        return dataset
    raise UserError(
        f"none of {', '.join(candidates)} is under {Path(data_path).resolve()}; run `make data` "
        "for the offline Fashion-MNIST, or set download = True (the scripts' --download)"
    )
