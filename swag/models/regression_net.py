"""The 1-D regression network of the deep-ensembles experiment (docs/original_code.md)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from swag.models.registry import register_model


class RegressionNet(nn.Sequential):
    """ReLU MLP `input_dim → dimensions... → output_dim`; the paper's net is 2→10→10→10→1.

    With the default sizes it has 261 parameters and PyTorch's default initialisation, as
    the notebook-local `RegNet` of the original repository.
    """

    def __init__(
        self,
        dimensions: Sequence[int] = (10, 10, 10),
        input_dim: int = 2,
        output_dim: int = 1,
    ):
        layers: list[nn.Module] = []
        widths = [input_dim, *dimensions]
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], output_dim))
        super().__init__(*layers)


def _regression_net(num_classes: int = 1, **kwargs) -> RegressionNet:
    return RegressionNet(output_dim=num_classes, **kwargs)


# Inputs are features [x, x²], not images: the preset is an identity normalisation.
register_model("RegressionNet1D", _regression_net, "identity")
