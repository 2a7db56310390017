"""Wide ResNet 28×10 (Zagoruyko & Komodakis, 2016), as in the original repository.

Structure (docs/original_code.md, itself from meliketoy/wide-resnet.pytorch): a 3×3 stem conv
3→16, three stages of n = (depth − 4) / 6 pre-activation blocks of widths (16k, 32k, 64k) and
strides (1, 2, 2), then BN → ReLU → global average pool → Linear. Every conv has a bias; the
shortcut is a strided 1×1 conv wherever the stride or width changes. 36,489,290 parameters
for depth 28, k = 10 and 10 classes. As upstream, the final BN has `momentum=0.9` (its running
statistics follow the latest batches closely; `update_bn` recomputes them anyway).

Initialisation: upstream defined `conv_init` (Xavier-uniform conv weights with gain √2, zero
conv biases, BN γ = 1, β = 0) but never applied it, so its networks ran with PyTorch's default
init. We apply that intended init; Linear stays at PyTorch's default.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from swag.models.registry import register_model


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=True)


class WideBasic(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3×3-[dropout]-BN-ReLU-conv3×3, plus shortcut."""

    def __init__(self, in_planes: int, planes: int, dropout_rate: float = 0.0, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, planes)
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate else nn.Identity()
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(self.relu(self.bn1(x))))
        out = self.conv2(self.relu(self.bn2(out)))
        out += self.shortcut(x)
        return out


class WideResNet(nn.Module):
    """Wide ResNet depth×k.

    Args:
        num_classes: number of output logits C.
        depth: 6n + 4.
        widen_factor: width multiplier k.
        dropout_rate: dropout between the two convs of a block (0 upstream for 28×10).
        in_channels: input image channels.

    Shapes: `x [B, in_channels, H, W]` (32 × 32 upstream) → logits `[B, C]`.
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 10,
        dropout_rate: float = 0.0,
        in_channels: int = 3,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

        self.conv1 = _conv3x3(in_channels, widths[0])
        stages = []
        for in_planes, planes, stride in zip(widths[:-1], widths[1:], (1, 2, 2), strict=True):
            blocks = [WideBasic(in_planes, planes, dropout_rate, stride)]
            blocks += [WideBasic(planes, planes, dropout_rate) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn1 = nn.BatchNorm2d(widths[3], momentum=0.9)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, gain=math.sqrt(2.0))
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.avgpool(self.relu(self.bn1(x)))
        return self.linear(torch.flatten(x, 1))


register_model("WideResNet28x10", WideResNet, "cifar", depth=28, widen_factor=10)
