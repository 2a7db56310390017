"""The prior-variance sweep end to end on the idx fixture: two α, resumable cells."""

from __future__ import annotations

import json

import pytest

from swag.errors import UserError


@pytest.mark.slow
def test_prior_sweep_end_to_end_and_resume(tmp_path, tiny_fashion_mnist):
    from experiments.priors import prior_sweep

    tiny = tiny_fashion_mnist(tmp_path / "data", n_train=96, n_test=32)
    argv = ["--dir", str(tmp_path / "sweep"), "--data_path", str(tiny.data_path), "--dataset",
            "FashionMNIST", "--model", "LeNet5", "--alphas", "0.1", "1", "--epochs", "2",
            "--swag_start", "1", "--swag_samples", "2", "--batch_size", "32", "--train_subset",
            "64", "--device", "cpu"]  # fmt: skip
    assert prior_sweep.main(argv) == 0
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [row["alpha"] for row in result["results"]] == [0.1, 1.0]
    assert all(0 <= row["swag_acc"] <= 1 and row["sgd_nll"] > 0 for row in result["results"])
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 0
    cell = tmp_path / "sweep" / "alpha_0.1"
    config = json.loads((cell / "config.json").read_text())
    assert config["wd"] == 0 and config["prior_var"] == pytest.approx(0.01)
    before = (cell / "metrics.jsonl").stat().st_mtime_ns
    assert prior_sweep.main(argv) == 0  # finished cells are skipped
    assert (cell / "metrics.jsonl").stat().st_mtime_ns == before


def test_prior_sweep_validates_flags(tmp_path):
    from experiments.priors import prior_sweep

    with pytest.raises(UserError, match="positive"):
        prior_sweep.main(["--dir", str(tmp_path), "--data_path", str(tmp_path), "--model",
                          "LeNet5", "--alphas", "0", "1"])  # fmt: skip
