"""VGG-16/19 for 32-px images (Simonyan & Zisserman, 2015), as in the original repository.

Structure (docs/original_code.md): 3×3 convs with padding 1 and a bias, each followed by ReLU
(BN → ReLU in the `BN` variants), five 2×2 max-pools, then the classifier
`Dropout(0.5), Linear 512→512, ReLU, Dropout(0.5), Linear 512→512, ReLU, Linear 512→C`.
The `NoDrop` variants replace the two dropouts by identities, which keeps the `state_dict`
keys (`classifier.1`, `classifier.4`, `classifier.6`) of the dropout variants.

Initialisation as upstream: conv weight ~ N(0, 2 / (9 · C_out)), conv bias 0, BN γ = 1 and
β = 0, Linear left at PyTorch's default.

The entries use the ImageNet normalisation statistics, as upstream (not CIFAR's).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from swag.models.registry import register_model

# Conv widths; "M" is a 2×2 max-pool. Five pools take 32-px inputs to 1×1×512.
_CONFIGS: dict[int, list[int | str]] = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", *[256] * 4, "M", *[512] * 4, "M", *[512] * 4, "M"],
}


def _make_features(config: list[int | str], batch_norm: bool, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in config:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        in_channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG network for 32-px inputs.

    Args:
        num_classes: number of output logits C.
        depth: 16 or 19.
        batch_norm: add BN after every conv.
        dropout: dropout probability in the classifier (0.5 upstream; 0 gives `NoDrop`).
        in_channels: input image channels.

    Shapes: `x [B, in_channels, 32, 32]` → logits `[B, C]`.
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 16,
        batch_norm: bool = False,
        dropout: float = 0.5,
        in_channels: int = 3,
    ):
        super().__init__()
        if depth not in _CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(_CONFIGS)}, got {depth}")
        self.features = _make_features(_CONFIGS[depth], batch_norm, in_channels)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


for _depth in (16, 19):
    register_model(f"VGG{_depth}", VGG, "imagenet", depth=_depth)
    register_model(f"VGG{_depth}BN", VGG, "imagenet", depth=_depth, batch_norm=True)
register_model("VGG16NoDrop", VGG, "imagenet", depth=16, dropout=0.0)
register_model("VGG16NoDropNoAug", VGG, "imagenet_noaug", depth=16, dropout=0.0)
register_model("VGG16BNNoDrop", VGG, "imagenet", depth=16, batch_norm=True, dropout=0.0)
register_model("VGG16BNNoDropNoAug", VGG, "imagenet_noaug", depth=16, batch_norm=True, dropout=0.0)
