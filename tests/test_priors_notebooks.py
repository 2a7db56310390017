"""The priors notebooks run top to bottom at reduced size on the tiny idx fixture (offline
fallback to Fashion-MNIST), writing their figures and JSON to a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swag import prior_inputs
from swag.errors import UserError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks" / "priors"

PARAMETERS = {
    "mnist_prior_correlations.ipynb": "alphas = [0.1, 1.0]\nnum_samples = 4\nper_class = 3\n"
    "classes = [0, 1, 2, 4, 7]\nlogit = 2\nseed = 0",
    "mnist_prior_samples.ipynb": "per_class = 3\nalphas = [0.02]\nnum_samples = 4\nnum_points = 7\n"
    "num_plotted = 3\nlogit = 0\nseed = 0",
    "cifar-c_prior_correlations.ipynb": "per_class = 1\noffset = 1\nalpha = 1.0\n"
    "linear_alpha = 0.3\nlengthscale = 15000.0\nnum_samples = 3\nlogit = 0\nseed = 0\n"
    'perturbations = ["translation", "contrast"]',
    "cifar_posterior_predictions.ipynb": "train_sizes = [10, 20]\ntest_per_class = 2\n"
    "prior_variances = [10.0, 0.01]\nnum_prior_samples = 5\nnum_plotted = 2\nnum_steps = 2\n"
    "lr = 1e-3\nseed = 0",
}
OUTPUTS = {
    "mnist_prior_correlations.ipynb": ["prior_correlations_alpha0.1.png",
                                       "prior_correlations.json"],
    "mnist_prior_samples.ipynb": ["prior_samples_alpha0.02.png", "prior_samples.json"],
    "cifar-c_prior_correlations.ipynb": ["perturbation_correlations.png",
                                         "perturbation_correlations.json"],
    "cifar_posterior_predictions.ipynb": ["prior_predictive.png", "posterior_predictions.png",
                                          "posterior_predictions.json"],
}  # fmt: skip


@pytest.fixture(scope="module")
def fashion_mnist(tmp_path_factory, tiny_fashion_mnist):
    return tiny_fashion_mnist(tmp_path_factory.mktemp("data"), n_train=40, n_test=40).data_path


def parameters(name: str, data_path: Path, out_dir: Path, extra: str = "") -> str:
    return (f"data_path = {str(data_path)!r}\ndataset = None\ndownload = False\n"
            f"out_dir = {str(out_dir)!r}\n{PARAMETERS[name]}\n{extra}")  # fmt: skip


SLOW = pytest.mark.slow  # PreResNet-20 notebooks: 30-40 s each on the shared 2 cores
NAMES = [
    name if name.startswith("mnist") else pytest.param(name, marks=SLOW) for name in PARAMETERS
]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_at_reduced_size(name, fashion_mnist, tmp_path, run_notebook):
    run_notebook(NOTEBOOKS / name, parameters(name, fashion_mnist, tmp_path))
    for output in OUTPUTS[name]:
        assert (tmp_path / output).stat().st_size > 0, output
    result = json.loads((tmp_path / OUTPUTS[name][-1]).read_text())
    assert result["dataset"] == "FashionMNIST"


@pytest.mark.slow
def test_cifar_c_notebook_runs_every_corruption(fashion_mnist, tmp_path, run_notebook):
    name = "cifar-c_prior_correlations.ipynb"
    run_notebook(
        NOTEBOOKS / name, parameters(name, fashion_mnist, tmp_path, "perturbations = None")
    )
    result = json.loads((tmp_path / "perturbation_correlations.json").read_text())
    assert len(result["mean_correlation_by_level"]) == 20


def test_missing_data_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="make data"):
        prior_inputs.available_dataset(tmp_path, ["MNIST", "FashionMNIST"])
