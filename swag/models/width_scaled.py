"""Width-scaled networks of the double-descent experiments (Nakkiran et al., 2020, "Deep Double
Descent"; Wilson & Izmailov, 2020, §8): one integer `width` k scales every layer.

- `PreResNet18Width` (`PreResNet18Width(num_classes, width=k)`): a pre-activation ResNet-18
  (He et al., 2016) for CIFAR. A 3×3 stem conv C_in→k, four stages of two `BasicBlock`s with
  widths (k, 2k, 4k, 8k) and strides (1, 2, 2, 2), then BN → ReLU → global average pool →
  Linear 8k→C. Where the width or stride changes the shortcut is a strided 1×1 conv (no BN).
  k = 64 is the usual ResNet-18: 2724k² + (122 + 9·C_in + 8C)k + C parameters, 11,172,170 on
  CIFAR-10 (the widely used PreActResNet18 without the final BN has 1,024 fewer).
- `CNN5` (`CNN5(num_classes, width=k)`): Nakkiran et al.'s 5-layer CNN. Four
  conv3×3 (bias) → BN → ReLU → max-pool layers with k, 2k, 4k, 8k channels and pools (1, 2, 2,
  global), then Linear 8k→C: 378k² + (45 + 9·C_in + 8C)k + C parameters.

Both end in a global pool, so they run on 32-px CIFAR and on 28-px (Fashion-)MNIST images
(`in_channels=1`). On 32-px inputs the CNN's last pool is the original max-pool of size 8.
Weights keep PyTorch's default initialisation. The registry holds `PreResNet18Width` and `CNN5`
with CIFAR augmentation (padded crop, flip) and `CNN5NoAug` without; `width` defaults to 64 and
is passed at build time: `get_model("CNN5").build(num_classes=10, width=8)`.
"""

from __future__ import annotations

import torch
from torch import nn

from swag.models.preresnet import BasicBlock
from swag.models.registry import register_model


def _check_width(width: int) -> int:
    if int(width) != width or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    return int(width)


class PreResNet18Width(nn.Module):
    """Pre-activation ResNet-18 with stage widths (k, 2k, 4k, 8k).

    Args:
        num_classes: number of output logits C.
        width: base width k (64 gives the standard ResNet-18).
        in_channels: input image channels C_in (3 for CIFAR, 1 for (Fashion-)MNIST).

    Shapes: `x [B, C_in, H, W]` with H, W ≥ 8 → logits `[B, C]`.
    """

    def __init__(self, num_classes: int, width: int = 64, in_channels: int = 3):
        super().__init__()
        width = _check_width(width)
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.layer1 = self._make_layer(width, stride=1)
        self.layer2 = self._make_layer(2 * width, stride=2)
        self.layer3 = self._make_layer(4 * width, stride=2)
        self.layer4 = self._make_layer(8 * width, stride=2)
        self.bn = nn.BatchNorm2d(8 * width)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False)
            )
        first = BasicBlock(self.inplanes, planes, stride, downsample)
        self.inplanes = planes
        return nn.Sequential(first, BasicBlock(planes, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        x = self.avgpool(self.relu(self.bn(x)))
        return self.fc(torch.flatten(x, 1))


class CNN5(nn.Module):
    """Nakkiran et al.'s 5-layer CNN with conv widths (k, 2k, 4k, 8k).

    Args:
        num_classes: number of output logits C.
        width: base width k.
        in_channels: input image channels C_in.

    Shapes: `x [B, C_in, H, W]` with H, W ≥ 4 → logits `[B, C]`.
    """

    def __init__(self, num_classes: int, width: int = 64, in_channels: int = 3):
        super().__init__()
        width = _check_width(width)
        channels = (in_channels, width, 2 * width, 4 * width, 8 * width)
        pools = (nn.Identity(), nn.MaxPool2d(2), nn.MaxPool2d(2), nn.AdaptiveMaxPool2d(1))
        layers: list[nn.Module] = []
        for c_in, c_out, pool in zip(channels[:-1], channels[1:], pools, strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                pool,
            ]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


register_model("PreResNet18Width", PreResNet18Width, "cifar")
register_model("CNN5", CNN5, "cifar")
register_model("CNN5NoAug", CNN5, "cifar_noaug")
