"""A plain ReLU multilayer perceptron on flattened inputs.

Upstream's `MLP` (`MLPBase(in_dim=1, layers=1, hidden=50)`) was a UCI-regression network that
could not take images. This entry keeps its one hidden layer of 50 units and its module name
(`model`), but reads flattened 28×28 single-channel images by default, so `MLP` trains on
(Fashion-)MNIST out of the box: 784 → 50 → C, 39,760 parameters on 10 classes, PyTorch's
default initialisation, and the MNIST normalisation without augmentation (upstream used
`ToTensor()` alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from swag.models.registry import register_model


class MLP(nn.Module):
    """`in_features → hidden[0] → … → hidden[-1] → num_classes` with ReLU between layers.

    Args:
        num_classes: number of output logits C.
        in_features: size of one flattened input (784 for 28×28 greyscale images).
        hidden: widths of the hidden layers.

    Shapes: `x [B, *]` with `in_features` elements per example → logits `[B, C]`.
    """

    def __init__(self, num_classes: int, in_features: int = 784, hidden: Sequence[int] = (50,)):
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.flatten(x, 1))


register_model("MLP", MLP, "mnist_noaug")
