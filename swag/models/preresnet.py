"""Pre-activation ResNets for CIFAR (He et al., 2016, "Identity Mappings in Deep Residual
Networks"), as ported by the original repository from bearpaw/pytorch-classification.

Structure (docs/original_code.md): a 3×3 stem conv 3→16, three stages of `n` blocks with widths
(16, 32, 64) and strides (1, 2, 2), then BN → ReLU → global average pool → Linear.
Depth < 44 uses `BasicBlock` with n = (depth − 2) / 6; depth ≥ 44 uses `Bottleneck`
(expansion 4) with n = (depth − 2) / 9. Where the stride or width changes, the shortcut is a
strided 1×1 conv (no BN) applied to the block's *raw* input, as upstream.

Initialisation as upstream: every conv weight ~ N(0, 2 / (k² · C_out)) (He, fan-out), BN
γ = 1 and β = 0, Linear left at PyTorch's default.

Module and attribute names follow the original so that parameter order (the flat vector SWAG
stores) and `state_dict` keys match the original checkpoints. The one change: the final
`AvgPool2d(8)` is an adaptive global average pool, identical on 32-px inputs (8×8 maps) and
also valid on 28-px inputs (7×7 maps), e.g. Fashion-MNIST with `in_channels=1`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from swag.models.registry import register_model


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3×3-BN-ReLU-conv3×3, plus the shortcut."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out += x if self.downsample is None else self.downsample(x)
        return out


class BasicBlockNoSkip(nn.Module):
    """Post-activation block without a shortcut: conv-BN-ReLU-conv-BN-ReLU (PreResNet20NoSkip)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        # `downsample` is accepted and dropped, as upstream: it is never registered.
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


class Bottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-conv1×1, BN-ReLU-conv3×3, BN-ReLU-conv1×1 (×4)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        out += x if self.downsample is None else self.downsample(x)
        return out


class PreResNet(nn.Module):
    """Pre-activation ResNet of the given depth.

    Args:
        num_classes: number of output logits C.
        depth: 6n + 2 below 44 (basic blocks), 9n + 2 from 44 on (bottleneck blocks).
        in_channels: input image channels (3 for CIFAR, 1 for (Fashion-)MNIST).
        skip_connections: False gives the post-activation, shortcut-free `BasicBlockNoSkip`
            network (basic-block depths only).

    Shapes: `x [B, in_channels, H, W]` with H, W ≥ 29 (32 upstream) → logits `[B, C]`.
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 20,
        in_channels: int = 3,
        skip_connections: bool = True,
    ):
        super().__init__()
        if depth >= 44:
            if (depth - 2) % 9:
                raise ValueError(f"bottleneck PreResNet depth must be 9n+2, got {depth}")
            if not skip_connections:
                raise ValueError("skip_connections=False exists only for depths below 44")
            n, block = (depth - 2) // 9, Bottleneck
        else:
            if (depth - 2) % 6:
                raise ValueError(f"basic-block PreResNet depth must be 6n+2, got {depth}")
            n, block = (depth - 2) // 6, BasicBlock if skip_connections else BasicBlockNoSkip

        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.layer1 = self._make_layer(block, 16, n)
        self.layer2 = self._make_layer(block, 32, n, stride=2)
        self.layer3 = self._make_layer(block, 64, n, stride=2)
        self.bn = nn.BatchNorm2d(64 * block.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64 * block.expansion, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes,
                    planes * block.expansion,
                    kernel_size=1,
                    stride=stride,
                    bias=False,
                )
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.avgpool(self.relu(self.bn(x)))
        return self.fc(torch.flatten(x, 1))


for _depth in (8, 20, 56, 110, 164):
    register_model(f"PreResNet{_depth}", PreResNet, "cifar", depth=_depth)
    register_model(f"PreResNet{_depth}NoAug", PreResNet, "cifar_noaug", depth=_depth)
register_model("PreResNet20NoSkip", PreResNet, "cifar", depth=20, skip_connections=False)
