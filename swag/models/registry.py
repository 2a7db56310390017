"""Model registry keyed by the original repository's names (`PreResNet20`, `VGG16`, `LeNet5`).

Every entry pairs an architecture with the input pipeline it was trained with upstream, so a
name alone reproduces a run: `get_model("PreResNet20").build(num_classes=10)`.

The pipeline is described by an `InputPreset` (normalisation, padded random crop, horizontal
flip) rather than by torchvision objects, so the same description drives both the torchvision
`transforms` and the tensor-resident fast loader in `swag.data`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from swag.errors import UserError


@dataclass(frozen=True)
class InputPreset:
    """How images reach the network (UPSTREAM.md §2.4).

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


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: `build(num_classes=C)` returns a fresh `nn.Module`."""

    name: str
    factory: Callable[..., nn.Module]
    preset: InputPreset
    kwargs: dict = field(default_factory=dict)

    def build(self, num_classes: int, **overrides) -> nn.Module:
        return self.factory(num_classes=int(num_classes), **{**self.kwargs, **overrides})

    def transform_train(self):
        from swag.transforms import torchvision_transform

        return torchvision_transform(self.preset, train=True)

    def transform_test(self):
        from swag.transforms import torchvision_transform

        return torchvision_transform(self.preset, train=False)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, factory: Callable[..., nn.Module], preset: InputPreset, **kwargs
) -> ModelSpec:
    """Register `factory(num_classes=..., **kwargs)` under the upstream `name`."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    spec = ModelSpec(name, factory, preset, dict(kwargs))
    _REGISTRY[name] = spec
    return spec


class UnknownModelError(UserError, KeyError):
    """Raised for a name that is not in the registry; the message lists the valid names."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_model(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())}"
        ) from None


def list_models() -> list[str]:
    return sorted(_REGISTRY)
