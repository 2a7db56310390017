"""`--loader torchvision`: a `DataLoader` over the split with the model preset's PIL transforms.

The original data pipeline, kept for comparison with the tensor-resident loader of `swag.data`:
deterministic per (seed, epoch) through `set_epoch`. Under torchrun, `shard(rank, world)` makes
the same sampler calls as one process and keeps examples rank, rank + world, ... of every batch
(swag/distributed.py); the PIL augmentation draws come from per-worker generators, so crops and
flips differ from a one-process run.
"""

from __future__ import annotations

import torch

from swag.distributed import shard_view
from swag.seeding import derived_seed


class TorchvisionLoader:
    """A torchvision `DataLoader` with PIL transforms, deterministic per (seed, epoch)."""

    def __init__(self, images, targets, preset, batch_size, train, shuffle, num_workers, seed=0):
        from torch.utils.data import DataLoader

        from swag.transforms import torchvision_transform

        self.dataset = _PilDataset(images, targets, torchvision_transform(preset, train))
        self.seed = seed
        self.epoch = 0
        self.batch_size, self.shuffle, self.num_workers = batch_size, shuffle, num_workers
        self.rank, self.world = 0, 1
        self._generator = torch.Generator()
        self._loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            generator=self._generator,
            persistent_workers=False,
        )

    @property
    def num_examples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        return len(self._loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world: int) -> TorchvisionLoader:
        """This loader seen by process `rank` of `world` (itself when world is 1)."""
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

        part = shard_view(self, rank, world)
        if part is not self:  # the calls of the one-process DataLoader, then this rank's slice
            part._generator = torch.Generator()
            sampler = (RandomSampler(self.dataset, generator=part._generator) if self.shuffle
                       else SequentialSampler(self.dataset))  # fmt: skip
            batches = BatchSampler(sampler, self.batch_size, drop_last=False)
            part._loader = DataLoader(self.dataset, num_workers=self.num_workers,
                                      batch_sampler=_ShardedBatches(batches, rank, world),
                                      generator=part._generator)  # fmt: skip
        return part

    def __iter__(self):
        self._generator.manual_seed(derived_seed(self.seed, self.epoch))
        torch.manual_seed(derived_seed(self.seed, self.epoch))  # transforms in the main process
        self.epoch += 1
        return iter(self._loader)


class _ShardedBatches:
    """Examples rank, rank + world, ... of every batch of `batches` (a batch sampler)."""

    def __init__(self, batches, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            yield batch[self.rank :: self.world]


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, index):
        from PIL import Image

        array = self.images[index].permute(1, 2, 0).numpy()
        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        return self.transform(image), int(self.targets[index])
