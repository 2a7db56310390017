"""Architectures of the original repository under their original registry names."""

from swag.models import (  # noqa: F401  (importing a module registers its models)
    lenet5,
    mlp,
    preresnet,
    regression_net,
    vgg,
    wide_resnet,
    width_scaled,
)
from swag.models.registry import (
    ModelSpec,
    UnknownModelError,
    get_model,
    list_models,
    register_model,
)

__all__ = [
    "ModelSpec",
    "UnknownModelError",
    "get_model",
    "list_models",
    "register_model",
]
