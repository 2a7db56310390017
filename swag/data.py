"""Datasets, splits and label arrays, and the tensor-resident fast loader.

Datasets come from torchvision with the original path convention `<data_path>/<dataset lower>`
(docs/original_code.md, "Training (run_swag.py)"). Two loaders serve them:

- `TensorLoader` (default, `--loader fast`): the whole split lives on the training device as one
  uint8 tensor; each batch is cropped, flipped and normalised in one batched operation, with
  the same output distribution as the model preset's torchvision transforms and no worker
  processes (in the spirit of airbench).
- `--loader torchvision`: a `DataLoader` over the torchvision dataset with the preset's PIL
  transforms, as upstream (`swag.torchvision_loader`).

Both are deterministic given (seed, epoch): `set_epoch(e)` re-seeds shuffling and augmentation,
which is what makes `--resume` bit-identical. Under torchrun, `shard(rank, world)` gives a
process its part of every global batch (examples rank, rank+w, ... of it; swag/distributed.py):
the fast loader draws the epoch's permutation and augmentation for every example on every rank
and keeps its slice, so the union of the shards is the one-process batch, crops included (each
device holds the whole split). The torchvision loader shards the same permutation; its PIL
augmentation draws come from per-worker generators, so they differ from one process.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from swag import distributed, idx_format
from swag.errors import UserError
from swag.io import load_npy
from swag.seeding import derived_generator
from swag.torchvision_loader import TorchvisionLoader
from swag.transforms import InputPreset, input_preset

DATASETS = ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "SVHN")
MNIST_FORMAT = ("MNIST", "FashionMNIST")  # idx files, read without torchvision
SPLIT_CLASSES = ([0, 1, 2, 8, 9], [3, 4, 5, 6, 7])  # CIFAR-10 halves for --split_classes 0 / 1
OFFLINE_HINT = "for the offline Fashion-MNIST, run `make data` and pass --data_path data"


def dataset_root(dataset: str, data_path: str | Path) -> Path:
    """`<data_path>/<dataset lower-cased>`, the original layout."""
    return Path(data_path).expanduser() / dataset.lower()


def _torchvision_dataset(dataset: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tv

    if dataset == "SVHN":
        return tv.SVHN(str(root), split="train" if train else "test", download=download)
    return getattr(tv, dataset)(str(root), train=train, download=download)


def load_split(
    dataset: str, data_path: str | Path, train: bool, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one split as tensors.

    Returns:
        images [N, C, H, W] uint8, targets [N] long.
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    root = dataset_root(dataset, data_path)
    idx_files = idx_format.split_files(root, dataset, train) if dataset in MNIST_FORMAT else None
    if idx_files is not None:  # read directly: torchvision stays out of the process
        images, labels = (torch.from_numpy(idx_format.read_idx(path)) for path in idx_files)
        return images.unsqueeze(1), labels.long()
    try:
        source = _torchvision_dataset(dataset, root, train, download)
    except RuntimeError as error:
        if "not found" not in str(error).lower() and "download" not in str(error).lower():
            raise
        raise UserError(
            f"{dataset} was not found under {root}; pass download=True (--download; needs a "
            f"network) or put the torchvision files there ({OFFLINE_HINT})"
        ) from error
    images = torch.as_tensor(np.asarray(source.data))
    if images.ndim == 3:  # MNIST-style [N, H, W]
        images = images.unsqueeze(1)
    elif dataset != "SVHN":  # CIFAR stores [N, H, W, C]; SVHN is already [N, C, H, W]
        images = images.permute(0, 3, 1, 2)
    labels = source.labels if dataset == "SVHN" else source.targets
    return images.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long)


def read_label_array(path: str | Path, num_train: int, num_classes: int) -> torch.Tensor:
    """Load and validate a `--label_arr` file (one label per training image, dataset order)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"label_arr {path} does not exist; pass the path of a .npy label array")
    labels = load_npy(path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"label_arr {path} holds a {labels.dtype} array of shape {labels.shape}; it must be "
            "a 1-D integer array of class labels"
        )
    if labels.shape[0] != num_train:
        raise UserError(
            f"label_arr {path} has {labels.shape[0]} labels but the training set has "
            f"{num_train} images; label arrays cover the full training set (for CIFAR-10, "
            "50,000: the last 5,000 become the validation split unless use_validation=False, so "
            "do not pass a 45,000-label array)"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(
            f"label_arr {path} has labels in [{labels.min()}, {labels.max()}] but the dataset "
            f"has {num_classes} classes; labels must lie in 0..{num_classes - 1}"
        )
    return torch.as_tensor(labels, dtype=torch.long)


def _select_classes(images, targets, classes: list[int]):
    keep = torch.isin(targets, torch.tensor(classes))
    relabel = torch.full((int(targets.max()) + 1,), -1, dtype=torch.long)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    return images[keep], relabel[targets[keep]]


def augment_batch(
    images: torch.Tensor,
    preset: InputPreset,
    offsets: torch.Tensor | None,
    flips: torch.Tensor | None,
) -> torch.Tensor:
    """Padded random crop, horizontal flip and normalisation of a uint8 batch.

    Equal in distribution to torchvision's RandomHorizontalFlip → RandomCrop(size, padding=p)
    → ToTensor → Normalize (zero padding in pixel space; crop origin uniform on [0, 2p]²).

    Args:
        images: [B, C, H, W] uint8.
        offsets: [B, 2] crop origins (row, column) in [0, 2p], or None for no crop.
        flips: [B] bool, or None for no flip.

    Returns:
        [B, C, H, W] float32, normalised.
    """
    batch, channels, height, width = images.shape
    pad = preset.crop_padding if offsets is not None else 0
    if pad or flips is not None:
        # One gather: output pixel (h, w) of image b reads padded pixel
        # (row_b + h, col_b + w), or (row_b + h, col_b + W-1-w) when b is flipped.
        device = images.device
        padded_height, padded_width = height + 2 * pad, width + 2 * pad
        padded = F.pad(images, (pad, pad, pad, pad)).reshape(batch, -1)
        columns = torch.arange(width, device=device).expand(batch, width)
        if flips is not None:
            columns = torch.where(flips[:, None], width - 1 - columns, columns)
        rows = torch.arange(height, device=device).expand(batch, height)
        if pad:
            # Flip-then-crop (torchvision's order): a flipped image cropped at column c reads
            # the unflipped padded image from column 2p − c, right to left.
            column_offsets = offsets[:, 1]
            if flips is not None:
                column_offsets = torch.where(flips, 2 * pad - column_offsets, column_offsets)
            rows, columns = rows + offsets[:, 0, None], columns + column_offsets[:, None]
        channel_start = torch.arange(channels, device=device) * (padded_height * padded_width)
        index = (
            channel_start[None, :, None, None]
            + rows[:, None, :, None] * padded_width
            + columns[:, None, None, :]
        )
        images = torch.gather(padded, 1, index.reshape(batch, -1)).view(
            batch, channels, height, width
        )
    mean, std = _normalisation(preset, images.device)
    return images.float().mul_(1.0 / 255.0).sub_(mean).div_(std)


@functools.cache
def _normalisation(preset: InputPreset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The preset's mean and std as [1, C, 1, 1] tensors on `device`, built once per device."""
    mean = torch.tensor(preset.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(preset.std, device=device).view(1, -1, 1, 1)
    return mean, std


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return derived_generator(seed, epoch)


class TensorLoader:
    """Batches of a device-resident uint8 dataset, augmented on the fly.

    Yields (inputs [B, C, H, W] float32 normalised on `device`, targets [B] long on `device`).
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        preset: str | InputPreset,
        batch_size: int,
        train: bool,
        shuffle: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.images = images.to(device)
        self.targets = targets.to(device)
        self.preset = input_preset(preset)
        self.batch_size = int(batch_size)
        self.train = train
        self.shuffle = shuffle
        self.device = torch.device(device)
        self.seed = seed
        self.epoch = 0
        self.memory_format = memory_format
        self.rank, self.world = 0, 1

    @property
    def num_examples(self) -> int:
        return self.targets.shape[0]

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world: int) -> TensorLoader:
        """This loader seen by process `rank` of `world` (itself when world is 1)."""
        return distributed.shard_view(self, rank, world)

    def subset(self, num_examples: int, generator: torch.Generator | None = None) -> TensorLoader:
        """The same loader over a fixed random subset of `num_examples` examples."""
        generator = generator or torch.Generator().manual_seed(self.seed)
        chosen = torch.randperm(self.num_examples, generator=generator)[:num_examples]
        chosen = chosen.to(self.device)
        subset = TensorLoader(
            self.images[chosen],
            self.targets[chosen],
            self.preset,
            self.batch_size,
            self.train,
            self.shuffle,
            self.device,
            self.seed,
            self.memory_format,
        )
        subset.epoch = self.epoch
        return subset

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = _epoch_generator(self.seed, self.epoch)
        self.epoch += 1  # a loader iterated twice without set_epoch draws fresh augmentation
        count = self.num_examples
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        augment = self.train and (self.preset.crop_padding or self.preset.hflip)
        offsets = flips = None
        if augment and self.preset.crop_padding:
            offsets = torch.randint(
                0, 2 * self.preset.crop_padding + 1, (count, 2), generator=generator
            )
            offsets = offsets.to(self.device)
        if augment and self.preset.hflip:
            flips = (torch.rand(count, generator=generator) < 0.5).to(self.device)
        order = order.to(self.device)
        part = slice(self.rank, None, self.world)  # this process's shard of a global batch
        for start in range(0, count, self.batch_size):
            batch = slice(start, start + self.batch_size)
            index = order[batch][part]
            batch_offsets = None if offsets is None else offsets[batch][part]
            batch_flips = None if flips is None else flips[batch][part]
            inputs = augment_batch(self.images[index], self.preset, batch_offsets, batch_flips)
            yield inputs.contiguous(memory_format=self.memory_format), self.targets[index]


def array_loader(
    images, labels, preset: str | InputPreset, batch_size: int, device: torch.device | str = "cpu"
) -> TensorLoader:
    """A test-mode loader over in-memory images `[N, H, W, C]` or `[N, H, W]` uint8."""
    images = torch.as_tensor(np.asarray(images))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return TensorLoader(images.contiguous(), targets, preset, batch_size, False, False, device)


def loaders(
    dataset: str,
    path: str | Path,
    batch_size: int,
    num_workers: int,
    preset: InputPreset,
    use_validation: bool = True,
    val_size: int = 5000,
    split_classes: int | None = None,
    shuffle_train: bool = True,
    download: bool = False,
    label_arr: str | Path | None = None,
    loader: str = "fast",
    device: torch.device | str = "cpu",
    seed: int = 0,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[dict, int]:
    """Train and test loaders for `dataset`, as upstream's `swag.data.loaders`.

    Without `use_validation=False` (`--use_test`), the test loader serves the last `val_size`
    training images (test-mode pipeline) and training uses the rest.

    Returns:
        ({"train": loader, "test": loader}, num_classes)
    """
    if loader not in ("fast", "torchvision"):
        raise UserError(f"unknown loader {loader!r}; choose fast or torchvision")
    train_images, train_targets = load_split(dataset, path, train=True, download=download)
    num_classes = int(train_targets.max()) + 1
    if label_arr is not None:
        train_targets = read_label_array(label_arr, train_targets.shape[0], num_classes)
    if use_validation and train_targets.shape[0] <= val_size:
        raise UserError(
            f"{dataset} has {train_targets.shape[0]} training images, too few to hold out the "
            f"last {val_size} for validation; pass use_validation=False to evaluate on the test set"
        )
    if use_validation:
        test_images, test_targets = train_images[-val_size:], train_targets[-val_size:]
        train_images, train_targets = train_images[:-val_size], train_targets[:-val_size]
    else:
        test_images, test_targets = load_split(dataset, path, train=False, download=download)
    if split_classes is not None:
        if dataset != "CIFAR10" or split_classes not in (0, 1):
            raise UserError("split_classes takes 0 or 1 and works with the CIFAR10 dataset only")
        classes = SPLIT_CLASSES[split_classes]
        train_images, train_targets = _select_classes(train_images, train_targets, classes)
        test_images, test_targets = _select_classes(test_images, test_targets, classes)
        num_classes = len(classes)
    if loader == "fast":
        make = lambda images, targets, train: TensorLoader(  # noqa: E731
            images,
            targets,
            preset,
            batch_size,
            train,
            train and shuffle_train,
            device,
            seed,
            memory_format,
        )
    else:
        make = lambda images, targets, train: TorchvisionLoader(  # noqa: E731
            images, targets, preset, batch_size, train, train and shuffle_train, num_workers, seed
        )
    return {
        "train": make(train_images, train_targets, True),
        "test": make(test_images, test_targets, False),
    }, num_classes
