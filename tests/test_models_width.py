"""Width-scaled models of the double-descent study: parameter counts against closed forms and
published counts, shapes on CIFAR- and MNIST-sized inputs, the CNN's last pool."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from swag.models import get_model
from swag.models.width_scaled import CNN5, PreResNet18Width


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resnet18_count(k: int, in_channels: int, classes: int) -> int:
    """Closed form, counted by hand from the architecture (C_in = c, C classes):

    stem 9ck; stage (i → o) with two blocks: 2i + 9io + 2o + 9o² (+ io for a 1×1 shortcut) and
    4o + 18o²; stages (k→k), (k→2k), (2k→4k), (4k→8k) sum to 2724k² + 106k; final BN 16k;
    Linear 8kC + C.
    """
    return 2724 * k**2 + (122 + 9 * in_channels + 8 * classes) * k + classes


def cnn5_count(k: int, in_channels: int, classes: int) -> int:
    """Closed form: conv weights 9(ck + 2k² + 8k² + 32k²), conv biases 15k, BN γ and β 30k,
    Linear 8kC + C."""
    return 378 * k**2 + (45 + 9 * in_channels + 8 * classes) * k + classes


@pytest.mark.parametrize("k", [1, 2, 3, 5, 16, 64])
@pytest.mark.parametrize("in_channels,classes", [(3, 10), (3, 100), (1, 10)])
def test_parameter_counts_follow_the_closed_forms(k, in_channels, classes):
    resnet = PreResNet18Width(classes, width=k, in_channels=in_channels)
    assert _num_params(resnet) == resnet18_count(k, in_channels, classes)
    assert _num_params(CNN5(classes, width=k, in_channels=in_channels)) == cnn5_count(
        k, in_channels, classes
    )


def test_width_64_is_the_standard_preactivation_resnet18():
    # PreActResNet18 as commonly used on CIFAR-10 (no BN before the pool): 11,171,146
    # parameters; ours adds the final BN of He et al. (2016): γ and β on 512 channels.
    model = get_model("PreResNet18Width").build(10)
    assert _num_params(model) == 11_171_146 + 2 * 512
    assert _num_params(get_model("PreResNet18Width").build(100)) == 11_171_146 + 1024 + 90 * 513
    stages = (model.layer1, model.layer2, model.layer3, model.layer4)
    assert [stage[0].conv1.out_channels for stage in stages] == [64, 128, 256, 512]
    assert model.layer1[0].downsample is None and model.layer2[0].downsample is not None


@pytest.mark.parametrize("name", ["PreResNet18Width", "CNN5", "CNN5NoAug"])
@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_forward_on_cifar_and_mnist_sized_images(name, channels, size):
    model = get_model(name).build(num_classes=7, width=2, in_channels=channels)
    assert model(torch.randn(3, channels, size, size)).shape == (3, 7)


def test_cnn5_last_pool_is_a_max_pool_of_size_8_at_32px():
    torch.manual_seed(0)
    model = CNN5(10, width=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.features[:-1](x)  # everything before the last pool: [2, 16, 8, 8]
        assert features.shape == (2, 16, 8, 8)
        expected = model.fc(F.max_pool2d(features, 8).flatten(1))
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("width", [0, -2, 1.5])
def test_a_bad_width_is_refused(width):
    with pytest.raises(ValueError, match="width"):
        CNN5(10, width=width)
    with pytest.raises(ValueError, match="width"):
        PreResNet18Width(10, width=width)
