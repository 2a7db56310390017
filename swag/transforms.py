"""How images reach a network: input presets, and torchvision transforms built from them.

Every registered model names the preset it was trained with in the original repository
(`swag.models.get_model(name).preset`, e.g. "cifar"): per-channel normalisation, a padded random
crop and a horizontal flip (docs/original_code.md, "Models"). The same description drives the
torchvision `transforms` (`--loader torchvision`, here) and the tensor-resident fast loader
(`swag.data`).
"""

from __future__ import annotations

from dataclasses import dataclass

from swag.errors import UserError


@dataclass(frozen=True)
class InputPreset:
    """Normalisation and training augmentation of one input pipeline.

    Attributes:
        mean: per-channel normalisation mean, in [0, 1] pixel units.
        std: per-channel normalisation std.
        crop_padding: zero padding (pixels) of the training random crop; 0 disables the crop.
        hflip: whether training images are flipped horizontally with probability 1/2.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 4
    hflip: bool = True

    def without_augmentation(self) -> InputPreset:
        return InputPreset(self.mean, self.std, crop_padding=0, hflip=False)


CIFAR_PRESET = InputPreset((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_PRESET = InputPreset((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MNIST_PRESET = InputPreset((0.1307,), (0.3081,))
PRESETS = {
    "cifar": CIFAR_PRESET,
    "cifar_noaug": CIFAR_PRESET.without_augmentation(),
    "imagenet": IMAGENET_PRESET,
    "imagenet_noaug": IMAGENET_PRESET.without_augmentation(),
    "mnist": MNIST_PRESET,
    "mnist_noaug": MNIST_PRESET.without_augmentation(),
    "identity": InputPreset((0.0,), (1.0,), 0, False),
}


def input_preset(preset: str | InputPreset) -> InputPreset:
    """The `InputPreset` of a registered name (a model's `spec.preset`), or `preset` itself."""
    if isinstance(preset, InputPreset):
        return preset
    if preset not in PRESETS:
        raise UserError(f"unknown input preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def torchvision_transform(preset: str | InputPreset, train: bool):
    """The upstream pipeline: [flip] [padded random crop] ToTensor, Normalize.

    Upstream also applied `Resize(32)` to 32-px CIFAR images, an identity, and put VGG's flip
    before the crop; flip and padded crop commute in distribution, so one order serves all.
    """
    from torchvision import transforms

    preset = input_preset(preset)
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
