"""LeNet-5 for 28-px images (LeCun et al., 1998), in the variant of the original repository.

Structure (docs/original_code.md): Conv 1→20 (5×5) → ReLU → MaxPool 2 → Conv 20→50 (5×5) → ReLU
→ MaxPool 2 → Linear 800→500 → ReLU → Linear 500→C; 431,080 parameters on 10 classes.
Initialisation as upstream: conv weight ~ N(0, 2 / (25 · C_out)), conv bias 0, Linear left at
PyTorch's default. `num_classes` is a plain int (upstream required a 0-d tensor and called
`.item()` on it, so it worked only with MNIST-style tensor targets).

The entry keeps upstream's training augmentation for MNIST, horizontal flips included.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from swag.models.registry import register_model


class LeNet5(nn.Module):
    """LeNet-5 with the original's `conv_part` / `fc_part` module names.

    Args:
        num_classes: number of output logits C.
        in_channels: input image channels (1 for MNIST and Fashion-MNIST).

    Shapes: `x [B, in_channels, 28, 28]` → logits `[B, C]`.
    """

    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        self.conv_part = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2),
        )
        self.fc_part = nn.Sequential(
            nn.Linear(800, 500), nn.ReLU(inplace=True), nn.Linear(500, num_classes)
        )
        for module in self.conv_part.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_part(torch.flatten(self.conv_part(x), 1))


register_model("LeNet5", LeNet5, "mnist")
register_model("LeNet5NoAug", LeNet5, "mnist_noaug")  # for fitting random labels
