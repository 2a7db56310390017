"""experiments/train/fit_laplace.py on a LeNet5 checkpoint of run_swag.py trained on tiny
Fashion-MNIST idx files: outputs, the evidence against the library, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, write_mnist_format
from torch import nn

from experiments.train import fit_laplace, run_swag
from swag import models
from swag.errors import UserError
from swag.posteriors import base
from swag.posteriors.laplace import Laplace

SCRIPT = REPO_ROOT / "experiments" / "train" / "fit_laplace.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch LeNet5 run on 128 tiny Fashion-MNIST images: (data path, checkpoint path)."""
    fmnist = write_mnist_format(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=32)
    out = tmp_path_factory.mktemp("run")
    args = [
        "--dir", str(out), "--data_path", str(fmnist.data_path), "--dataset", "FashionMNIST",
        "--model", "LeNet5", "--use_test", "--batch_size", "32", "--epochs", "1",
        "--save_freq", "1", "--device", "cpu",
    ]  # fmt: skip
    assert run_swag.main(args) == 0
    return fmnist.data_path, out / "checkpoint-1.pt"


def fit_args(data_path, checkpoint, out, *extra, model="LeNet5"):
    return [
        "--checkpoint", str(checkpoint), "--model", model, "--dataset", "FashionMNIST",
        "--data_path", str(data_path), "--use_test", "--batch_size", "50", "--device", "cpu",
        "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("hessian", ["kron", "diag"])
def test_fit_writes_the_evidence_and_a_loadable_posterior(run, tmp_path, hessian, capsys):
    data_path, checkpoint = run
    out = tmp_path / "laplace"
    extra = ["--hessian", hessian, "--optimize_prior", "scalar"]
    assert fit_laplace.main(fit_args(data_path, checkpoint, out, *extra)) == 0
    assert "log marginal likelihood" in capsys.readouterr().out
    evidence = json.loads((out / "laplace-1.json").read_text())
    assert evidence["num_data"] == 128 and evidence["num_params"] == 431_080
    assert 0 <= evidence["train_accuracy"] <= 1
    assert len(set(evidence["prior_precision"])) == 1
    total = (
        evidence["log_likelihood"]
        + evidence["log_prior"]
        + evidence["num_params"] / 2 * math.log(2 * math.pi)
        - evidence["log_det_posterior_precision"] / 2
    )
    assert evidence["log_marginal_likelihood"] == pytest.approx(total, rel=1e-9)
    assert evidence["log_marginal_likelihood_per_example"] == pytest.approx(
        evidence["log_marginal_likelihood"] / 128
    )
    assert (out / "fit_laplace.sh").exists() and (out / "fit_laplace_config.json").exists()

    model = models.get_model("LeNet5").build(10)
    posterior = base.load(out / "laplace-1.pt", model)
    assert isinstance(posterior, Laplace) and posterior.hessian == hessian
    lml = float(posterior.log_marginal_likelihood())
    assert lml == pytest.approx(evidence["log_marginal_likelihood"], rel=1e-12)
    weights = torch.load(checkpoint, weights_only=True)["state_dict"]
    for name, value in model.state_dict().items():  # the file holds the checkpoint's weights
        assert torch.equal(value, weights[name])
    posterior.sample(torch.Generator().manual_seed(0))
    assert not torch.equal(model.fc_part[2].weight, weights["fc_part.2.weight"])


def layer_norm_net(num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 8), nn.LayerNorm(8), nn.Linear(8, num_classes)
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hessian", "full"], "--hessian"),
        (["--subset", "first"], "--subset"),
        (["--prior_precision", "0"], "--prior_precision must be positive"),
        (["--optimize_prior", "grid"], "--optimize_prior"),
    ],
)
def test_bad_flags_are_refused_before_anything_is_written(run, tmp_path, extra, message):
    data_path, checkpoint = run
    with pytest.raises(UserError, match=message):
        fit_laplace.main(fit_args(data_path, checkpoint, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


def test_a_posterior_file_is_not_a_model_checkpoint(run, tmp_path):
    data_path, checkpoint = run
    swag_file = checkpoint.with_name("not-a-checkpoint.pt")
    torch.save({"kind": "laplace", "state_dict": {}}, swag_file)
    with pytest.raises(UserError, match="not a model checkpoint"):
        fit_laplace.main(fit_args(data_path, swag_file, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_uncovered_layer_is_named_and_last_layer_works(run, tmp_path, monkeypatch):
    data_path, _ = run
    spec = models.ModelSpec("LayerNormNet", layer_norm_net, models.get_model("LeNet5").preset)
    original = models.get_model
    monkeypatch.setattr(models, "get_model", lambda n: spec if n == spec.name else original(n))
    checkpoint = tmp_path / "checkpoint-2.pt"
    torch.save({"epoch": 2, "state_dict": layer_norm_net(10).state_dict()}, checkpoint)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"'2' \(LayerNorm\).*--subset last_layer"):
        fit_laplace.main(fit_args(data_path, checkpoint, out, model="LayerNormNet"))
    assert not out.exists()
    extra = ["--subset", "last_layer", "--optimize_prior", "none"]
    assert fit_laplace.main(fit_args(data_path, checkpoint, out, *extra, model="LayerNormNet")) == 0
    assert json.loads((out / "laplace-2.json").read_text())["num_params"] == 8 * 10 + 10


def test_command_line_error_is_one_line_with_status_2(run, tmp_path):
    data_path, checkpoint = run
    args = fit_args(data_path, checkpoint, tmp_path / "out", "--prior_precision", "-1")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=Path.cwd()
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --prior_precision must be positive; got -1"
    ]
    assert not (tmp_path / "out").exists()


def test_torchvision_loader_gives_the_same_evidence(run, tmp_path):
    """--loader torchvision (PIL transforms) and the tensor loader read the same unaugmented
    images: the same evidence up to float32 preprocessing differences."""
    data_path, checkpoint = run
    results = []
    for loader in ("fast", "torchvision"):
        out = tmp_path / loader
        extra = ["--subset", "last_layer", "--loader", loader, "--num_workers", "0"]
        assert fit_laplace.main(fit_args(data_path, checkpoint, out, *extra)) == 0
        results.append(json.loads((out / "laplace-1.json").read_text()))
    fast, torchvision = results
    assert torchvision["log_marginal_likelihood"] == pytest.approx(
        fast["log_marginal_likelihood"], rel=1e-5
    )
    assert torchvision["train_accuracy"] == fast["train_accuracy"]
