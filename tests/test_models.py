"""The model registry: every entry runs; structure, counts and presets as docs/original_code.md."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from swag.models import UnknownModelError, get_model, list_models
from swag.models.lenet5 import LeNet5
from swag.transforms import CIFAR_PRESET, IMAGENET_PRESET, MNIST_PRESET, input_preset

# Parameter counts of the original code (docs/original_code.md), on 10 and 100 classes.
ORIGINAL_COUNTS = {
    "PreResNet20": (272_282, 278_132),
    "PreResNet20NoSkip": (269_818, 275_668),
    "PreResNet8": (77_850, 83_700),
    "PreResNet56": (590_426, 613_556),
    "PreResNet110": (1_146_842, 1_169_972),
    "PreResNet164": (1_703_258, 1_726_388),
    "VGG16": (15_245_130, 15_291_300),
    "VGG16BN": (15_253_578, 15_299_748),
    "VGG19": (20_554_826, 20_600_996),
    "LeNet5": (431_080, None),
    "WideResNet28x10": (36_489_290, None),
    "RegressionNet1D": (None, None),
}

# Inputs that are not images: feature vectors of the given shape.
NON_IMAGE_INPUTS = {"RegressionNet1D": (2,)}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _example_input(name: str, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if name in NON_IMAGE_INPUTS:
        return torch.randn(batch, *NON_IMAGE_INPUTS[name], generator=generator)
    channels = len(input_preset(get_model(name).preset).mean)
    size = 28 if channels == 1 else 32  # (Fashion-)MNIST or CIFAR
    return torch.randn(batch, channels, size, size, generator=generator)


@pytest.mark.parametrize("name", list_models())
def test_forward_every_registered_model(name):
    torch.manual_seed(0)
    model = get_model(name).build(num_classes=7)
    x = _example_input(name)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", [n for n in list_models() if n not in NON_IMAGE_INPUTS])
def test_channels_last_gives_the_same_outputs(name):
    torch.manual_seed(0)
    model = get_model(name).build(num_classes=10).eval()
    x = _example_input(name)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [n for n, counts in ORIGINAL_COUNTS.items() if counts[0]])
def test_parameter_counts_match_upstream(name):
    ten, hundred = ORIGINAL_COUNTS[name]
    assert _num_params(get_model(name).build(10)) == ten
    if hundred is not None:
        assert _num_params(get_model(name).build(100)) == hundred


def test_parameter_counts_of_variants_follow_from_upstream_counts():
    # A C-way head adds (fan_in + 1) per class; BN adds γ and β per conv channel; NoAug and
    # NoDrop change no parameter.
    assert _num_params(get_model("WideResNet28x10").build(100)) == 36_489_290 + 90 * 641
    assert _num_params(get_model("LeNet5").build(100)) == 431_080 + 90 * 501
    vgg19_bn_channels = 2 * 64 + 2 * 128 + 4 * 256 + 8 * 512
    assert _num_params(get_model("VGG19BN").build(10)) == 20_554_826 + 2 * vgg19_bn_channels
    for base in ("PreResNet8", "PreResNet20", "PreResNet56", "PreResNet110", "PreResNet164"):
        count = ORIGINAL_COUNTS[base][0]
        assert _num_params(get_model(f"{base}NoAug").build(10)) == count
    for name in ("VGG16NoDrop", "VGG16NoDropNoAug"):
        assert _num_params(get_model(name).build(10)) == ORIGINAL_COUNTS["VGG16"][0]
    for name in ("VGG16BNNoDrop", "VGG16BNNoDropNoAug"):
        assert _num_params(get_model(name).build(10)) == ORIGINAL_COUNTS["VGG16BN"][0]


def test_unknown_name_lists_the_registered_names():
    with pytest.raises(UnknownModelError) as info:
        get_model("ResNet18")
    message = str(info.value)
    assert "ResNet18" in message
    for name in ("PreResNet20", "VGG16", "LeNet5", "WideResNet28x10", "MLP"):
        assert name in message


def test_every_required_name_is_registered():
    required = {f"PreResNet{d}{s}" for d in (8, 20, 56, 110, 164) for s in ("", "NoAug")}
    required |= {"VGG16", "VGG16BN", "VGG19", "VGG19BN", "LeNet5", "WideResNet28x10", "MLP"}
    assert required <= set(list_models())


def test_presets_of_each_family():
    no_aug = {"crop_padding": 0, "hflip": False}
    for name in list_models():
        preset = input_preset(get_model(name).preset)
        if name.startswith("PreResNet") or name.startswith("WideResNet"):
            assert (preset.mean, preset.std) == (CIFAR_PRESET.mean, CIFAR_PRESET.std)
        elif name.startswith("VGG"):
            assert (preset.mean, preset.std) == (IMAGENET_PRESET.mean, IMAGENET_PRESET.std)
        elif name in ("LeNet5", "MLP"):
            assert (preset.mean, preset.std) == (MNIST_PRESET.mean, MNIST_PRESET.std)
        augmented = {"crop_padding": preset.crop_padding, "hflip": preset.hflip}
        if name.endswith("NoAug") or name in ("MLP", "RegressionNet1D"):
            assert augmented == no_aug, name
        else:
            assert augmented == {"crop_padding": 4, "hflip": True}, name
    assert CIFAR_PRESET.mean == (0.4914, 0.4822, 0.4465)
    assert IMAGENET_PRESET.std == (0.229, 0.224, 0.225)
    assert MNIST_PRESET.mean == (0.1307,)


def test_lenet5_takes_a_plain_int_and_tensor_like_counts():
    assert LeNet5(num_classes=10)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert get_model("LeNet5").build(torch.tensor(4)).fc_part[-1].out_features == 4


def test_preresnet20_runs_on_28px_single_channel_images():
    model = get_model("PreResNet20").build(10, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_preresnet_head_equals_upstream_avgpool8_at_32px():
    torch.manual_seed(0)
    model = get_model("PreResNet8").build(10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.layer3(model.layer2(model.layer1(model.conv1(x))))
        pooled = F.avg_pool2d(F.relu(model.bn(features)), 8).view(2, -1)
        torch.testing.assert_close(model(x), model.fc(pooled))


def test_state_dict_keys_follow_the_original_module_names():
    keys = {
        "PreResNet20": ["conv1.weight", "layer2.0.downsample.0.weight", "bn.weight", "fc.bias"],
        "PreResNet56": ["layer1.0.conv3.weight", "layer1.0.downsample.0.weight"],
        "VGG16": ["features.0.weight", "classifier.1.weight", "classifier.6.bias"],
        "VGG16NoDrop": ["classifier.1.weight", "classifier.4.weight", "classifier.6.bias"],
        "LeNet5": ["conv_part.0.weight", "conv_part.3.weight", "fc_part.2.weight"],
        "WideResNet28x10": ["layer1.0.shortcut.0.weight", "bn1.running_mean", "linear.weight"],
        "MLP": ["model.0.weight", "model.2.bias"],
    }
    for name, expected in keys.items():
        state = get_model(name).build(10).state_dict()
        assert set(expected) <= set(state), name
    preresnet20 = get_model("PreResNet20").build(10).state_dict()
    assert "layer1.0.downsample.0.weight" not in preresnet20  # 16 → 16, stride 1: identity


def _sample_std_matches(weight: torch.Tensor, std: float, rel_tol: float = 0.03) -> bool:
    # The sample std of N ≥ 5,000 Gaussian draws has relative standard error 1/√(2N) ≤ 1%.
    return abs(weight.std().item() / std - 1) < rel_tol


def test_initialisation_schemes():
    torch.manual_seed(0)
    preresnet = get_model("PreResNet20").build(10)
    conv = preresnet.layer3[1].conv2  # 64 → 64, 3×3: 36,864 weights
    assert _sample_std_matches(conv.weight, math.sqrt(2 / (9 * 64)))
    assert preresnet.conv1.bias is None
    bn = preresnet.layer2[0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)

    vgg = get_model("VGG16").build(10)
    conv = vgg.features[2]  # 64 → 64
    assert _sample_std_matches(conv.weight, math.sqrt(2 / (9 * 64)))
    assert torch.all(conv.bias == 0)

    lenet = get_model("LeNet5").build(10)
    conv = lenet.conv_part[3]  # 20 → 50, 5×5: 25,000 weights
    assert _sample_std_matches(conv.weight, math.sqrt(2 / (25 * 50)))
    assert torch.all(conv.bias == 0)

    wrn = get_model("WideResNet28x10").build(10)
    conv = wrn.layer1[1].conv1  # 160 → 160, Xavier-uniform with gain √2
    bound = math.sqrt(2) * math.sqrt(6 / (2 * 9 * 160))
    assert conv.weight.abs().max() <= bound
    assert _sample_std_matches(conv.weight, bound / math.sqrt(3))
    assert torch.all(conv.bias == 0)
    assert wrn.bn1.momentum == 0.9


def test_models_package_imports_only_torch():
    """swag/models is a leaf: torch, the standard library, itself and the dependency-free errors."""
    import ast
    import sys
    from pathlib import Path

    import swag.models

    allowed = {"torch", "swag.models", "swag.errors", "__future__"}
    for path in Path(swag.models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or any(
                    name == a or name.startswith(a + ".") for a in allowed
                ), f"{path.name} imports {name}"
