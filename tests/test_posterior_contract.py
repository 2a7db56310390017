"""The posterior contract: round trips of every kind, legacy files, bad files, and a new method
registered from this file and evaluated by eval_multiswag.py without touching the library."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_legacy_checkpoint
from test_eval_multiswag import _script, write_tiny_fashion_mnist
from torch import nn

from swag import models, posteriors
from swag.errors import UserError
from swag.posteriors import (
    SWA,
    SWAG,
    Checkpoint,
    DeepEnsemble,
    MeanFieldVI,
    Method,
    Posterior,
    SampleBank,
    register_method,
    register_posterior,
)
from swag.posteriors.flat import assign_parameters, flatten_parameters
from swag.seeding import derived_generator, derived_seed


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))


def _fitted_swag() -> SWAG:
    torch.manual_seed(0)
    model, swag = _net(), SWAG(_net(), max_num_models=3)
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        swag.collect_model(model)
    return swag


def _fitted_vi() -> MeanFieldVI:
    torch.manual_seed(1)
    return MeanFieldVI(_net(), prior_var=1.0, init_rho=-2.0)


# One fitted example of every registered kind that this test owns.
EXAMPLES = {
    "swag": _fitted_swag,
    "swa": lambda: SWA(_fitted_swag()),
    "checkpoint": lambda: Checkpoint(_net()),
    "deep_ensemble": lambda: DeepEnsemble(_net(), seeds=[3, 4, 5]),
    "vi": _fitted_vi,
    "samples": lambda: SampleBank.from_draws(_net(), torch.randn(2, 3, 38)),
}


def _draws(posterior: Posterior, num: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    draws = []
    for _ in range(num):
        posterior.sample(generator)
        draws.append(flatten_parameters(posterior.model))
    return torch.stack(draws)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_kind_round_trips_and_reproduces_its_draws(kind, tmp_path):
    posterior = EXAMPLES[kind]()
    assert posterior.kind == kind
    expected = _draws(posterior)
    path = posterior.save(tmp_path / f"{kind}.pt", epoch=3)
    loaded = posteriors.load(path, _net())
    assert type(loaded) is type(posterior)
    torch.testing.assert_close(_draws(loaded), expected, rtol=0, atol=0)
    if posterior.deterministic:
        assert torch.equal(expected[0], expected[-1])
    else:
        assert not torch.equal(expected[0], expected[1])


def test_legacy_layouts_load_as_their_kinds(tmp_path):
    swag = _fitted_swag()
    # This project's SWAG files before the contract: a bare state_dict with mean, m2, deviations.
    old = write_legacy_checkpoint(tmp_path, 4, name="swag", state_dict=swag.state_dict())
    assert isinstance(posteriors.load(old, _net()), SWAG)
    # The original repository's checkpoint-<e>.pt: {epoch, state_dict, optimizer}.
    model = _net()
    torch.save({"epoch": 1, "state_dict": model.state_dict(), "optimizer": {}}, tmp_path / "c.pt")
    loaded = posteriors.load(tmp_path / "c.pt", _net())
    assert isinstance(loaded, Checkpoint)
    torch.testing.assert_close(flatten_parameters(loaded.model), flatten_parameters(model))


def test_unknown_newer_and_foreign_files_are_one_sentence(tmp_path):
    state = _fitted_swag().to_file()
    torch.save({**state, "kind": "flow"}, tmp_path / "flow.pt")
    with pytest.raises(UserError, match="unknown kind 'flow'"):
        posteriors.load(tmp_path / "flow.pt", _net())
    torch.save({**state, "format_version": 99}, tmp_path / "new.pt")
    with pytest.raises(UserError, match="format version 99, newer than this library"):
        posteriors.load(tmp_path / "new.pt", _net())
    torch.save({"weights": [1, 2, 3]}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a posterior or checkpoint"):
        posteriors.load(tmp_path / "foreign.pt", _net())
    wider = nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 2))
    for kind in ("swag", "checkpoint", "vi"):
        path = EXAMPLES[kind]().save(tmp_path / f"{kind}.pt")
        with pytest.raises(UserError, match="architecture and number of classes"):
            posteriors.load(path, wider)


@register_posterior
class IsotropicGaussian(Posterior):
    """A toy method defined outside the library: θ = θ₀ + σ z around fixed weights θ₀."""

    kind = "test_isotropic_gaussian"

    def __init__(self, model: nn.Module, std: float = 0.01):
        super().__init__(model)
        self.std = std
        self.register_buffer("centre", flatten_parameters(model))

    def config(self) -> dict:
        return {"std": self.std}

    def sample(self, generator: torch.Generator | None = None) -> None:
        noise = torch.randn(self.centre.shape, generator=generator, device=self.centre.device)
        assign_parameters(self.model, self.centre + self.std * noise)


register_method(Method("toy", "Isotropic Gaussian", "tab:purple", kinds=(IsotropicGaussian.kind,)))


def test_a_method_defined_in_a_test_runs_through_eval_multiswag(tmp_path):
    test_images, test_labels = write_tiny_fashion_mnist(tmp_path / "data")
    spec = models.get_model("LeNet5")
    paths = []
    for member in range(2):
        torch.manual_seed(member)
        path = tmp_path / f"toy_{member}.pt"
        paths.append(str(IsotropicGaussian(spec.build(10), std=0.05).save(path)))
    out = tmp_path / "eval"
    _script("eval_multiswag").main([
        "--savedir", str(out), "--method", "toy", "--model", "LeNet5", "--dataset",
        "FashionMNIST", "--data_path", str(tmp_path / "data"), "--use_test", "--swag_samples",
        "3", "--device", "cpu", "--seed", "4", "--swag_ckpts", *paths,
    ])  # fmt: skip
    results = json.loads((out / "toy.json").read_text())
    assert results["num_samples"] == 3 and len(results["curves"]["clean"]) == 2

    # The same average by hand: draw s of member m with the documented generator of (seed, m, s).
    inputs = (torch.as_tensor(test_images, dtype=torch.float32)[:, None] / 255 - 0.1307) / 0.3081
    average = torch.zeros(len(test_labels), 10, dtype=torch.float64)
    for member, path in enumerate(paths):
        posterior = posteriors.load(path, spec.build(10))
        for sample in range(3):
            posterior.sample(derived_generator(derived_seed(4, member), sample))
            with torch.no_grad():
                average += posterior.model.eval()(inputs).softmax(1).double() / 6
    saved = np.load(out / "toy_probs.npz")
    np.testing.assert_allclose(saved["predictions"], average.numpy(), atol=1e-5)
    np.testing.assert_array_equal(saved["targets"], test_labels)
