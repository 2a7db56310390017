"""Model registry keyed by the original repository's names (`PreResNet20`, `VGG16`, `LeNet5`).

Every entry pairs an architecture with the input pipeline it was trained with upstream, so a
name alone reproduces a run: `get_model("PreResNet20").build(num_classes=10)`.

The pipeline is named by a preset ("cifar", "imagenet", "mnist", with "_noaug" variants); what a
name means (normalisation, padded random crop, horizontal flip) lives with the data, in
`swag.transforms`, so this package imports only torch (and the dependency-free swag.errors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from swag.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: `build(num_classes=C)` returns a fresh `nn.Module`.

    `preset` names its input pipeline (see `swag.transforms.input_preset`).
    """

    name: str
    factory: Callable[..., nn.Module]
    preset: str
    kwargs: dict = field(default_factory=dict)

    def build(self, num_classes: int, **overrides) -> nn.Module:
        return self.factory(num_classes=int(num_classes), **{**self.kwargs, **overrides})


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, factory: Callable[..., nn.Module], preset: str, **kwargs
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
