"""torchvision transforms built from an `InputPreset` (the `--loader torchvision` path)."""

from __future__ import annotations

from swag.models.registry import InputPreset


def torchvision_transform(preset: InputPreset, train: bool):
    """The upstream pipeline: [flip] [padded random crop] ToTensor, Normalize.

    Upstream also applied `Resize(32)` to 32-px CIFAR images, an identity, and put VGG's flip
    before the crop; flip and padded crop commute in distribution, so one order serves all.
    """
    from torchvision import transforms

    steps = []
    if train and preset.hflip:
        steps.append(transforms.RandomHorizontalFlip())
    if train and preset.crop_padding:
        steps.append(_RandomCropSameSize(preset.crop_padding))
    steps += [transforms.ToTensor(), transforms.Normalize(preset.mean, preset.std)]
    return transforms.Compose(steps)


class _RandomCropSameSize:
    """`RandomCrop(size, padding)` with size read from each image (28 for MNIST, 32 for CIFAR)."""

    def __init__(self, padding: int):
        self.padding = padding

    def __call__(self, image):
        from torchvision import transforms

        height, width = image.size[1], image.size[0]
        return transforms.RandomCrop((height, width), padding=self.padding)(image)

    def __repr__(self) -> str:
        return f"RandomCrop(same size, padding={self.padding})"
