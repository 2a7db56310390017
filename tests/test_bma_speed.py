"""The BMA evaluation's default-on speed knobs give the results of the plain path.

Tolerances: float32 reformulations (BatchNorm folded into a convolution, channels-last
convolutions) are compared with `rtol=1e-4, atol=1e-5` on logits and `atol=1e-5` on
probabilities, far below what any metric resolves; rewrites that reorder no arithmetic (ReLU after
max-pooling) must be bit-identical. The BN pass is checked against
`torch.optim.swa_utils.update_bn(momentum=None)`, whose cumulative average over equal-size batches
is the original's example-weighted average.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from swag import models, speed, training
from swag.bma import bayesian_model_average
from swag.data import TensorLoader
from swag.posteriors import SWAG

CL = torch.channels_last


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(size, generator=generator))
            module.bias.data.copy_(torch.randn(size, generator=generator))
    return model.eval()


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_folded_preresnet_matches_the_model_and_follows_new_weights(memory_format):
    torch.manual_seed(0)
    model = randomise_batchnorm(models.get_model("PreResNet20").build(10)).to(
        memory_format=memory_format
    )
    graph = speed.InferenceGraph(model)
    assert len(graph.folded) == 9  # conv1 → bn2 in each of the nine basic blocks
    inputs = torch.randn(6, 3, 32, 32).contiguous(memory_format=memory_format)
    with torch.no_grad():
        torch.testing.assert_close(graph.refresh()(inputs), model(inputs), rtol=1e-4, atol=1e-5)
        for parameter in model.parameters():  # a new sample written into the model
            parameter.mul_(1.05)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.mul_(1.5)
        torch.testing.assert_close(graph.refresh()(inputs), model(inputs), rtol=1e-4, atol=1e-5)
    shared = dict(graph.module.named_modules())  # leaf modules are shared, not copied
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children()) and n in shared]
    assert len(leaves) > 40 and all(shared[name] is module for name, module in leaves)


def test_relu_after_max_pooling_is_bit_identical():
    torch.manual_seed(0)
    model = models.get_model("LeNet5").build(10).eval()
    graph = speed.InferenceGraph(model)
    code = graph.module.code
    assert code.index("conv_part_2") < code.index("conv_part_1")  # pool now precedes ReLU
    inputs = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(graph.refresh()(inputs), model(inputs))


def test_untraceable_model_runs_unchanged():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, x):
            return self.linear(x) if x.sum() > 0 else -self.linear(x)

    model = Branchy()
    graph = speed.InferenceGraph(model)
    assert graph.module is model and graph.folded == []


def test_bn_pass_equals_cumulative_average_oracle():
    torch.manual_seed(0)
    model = models.get_model("PreResNet20").build(10)
    batches = [(torch.randn(16, 3, 32, 32), torch.zeros(16, dtype=torch.long)) for _ in range(5)]
    oracle = copy.deepcopy(model)
    training.update_bn(batches, model, "cpu")
    torch.optim.swa_utils.update_bn([x for x, _ in batches], oracle)  # momentum=None inside
    ours, theirs = model.state_dict(), oracle.state_dict()
    for key in ours:
        if key.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


def test_bma_defaults_equal_the_plain_path():
    """Folding and channels-last (defaults) vs unfolded NCHW: the same per-member averages."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (96,), generator=generator)
    results = []
    for memory_format, fold in ((torch.contiguous_format, False), (CL, True)):
        torch.manual_seed(0)
        spec = models.get_model("PreResNet20")
        model = spec.build(10).to(memory_format=memory_format)
        swag, generator = SWAG(model), torch.Generator().manual_seed(1)
        for _ in range(3):
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
            swag.collect_model(model)
        train = TensorLoader(images[:64], labels[:64], spec.preset, 16, True, True,
                             memory_format=memory_format)  # fmt: skip
        test = TensorLoader(images[64:], labels[64:], spec.preset, 256, False, False,
                            memory_format=memory_format)  # fmt: skip
        results.append(
            bayesian_model_average([swag], {"clean": test}, 2, "cpu", train, fold_bn=fold)
        )
    plain, fast = (r.member_probs["clean"] for r in results)
    torch.testing.assert_close(torch.from_numpy(fast), torch.from_numpy(plain), rtol=0, atol=1e-5)


def test_eval_multiswag_speed_flags_default_on():
    from experiments.train import eval_multiswag

    parser_args = [
        "--savedir",
        "x",
        "--model",
        "LeNet5",
        "--data_path",
        "data",
        "--swag_ckpts",
        __file__,
    ]
    args = eval_multiswag.parse_args(parser_args)
    assert args.channels_last and args.fold_bn and not args.bf16 and args.bn_subset is None
    args = eval_multiswag.parse_args([*parser_args, "--no-channels_last", "--no-fold_bn"])
    assert not args.channels_last and not args.fold_bn
