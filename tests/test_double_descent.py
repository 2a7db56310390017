"""experiments/double_descent end to end on tiny data: label corruption, the sweep's outputs,
resuming a half-finished sweep, and bad input (exit 2, one `error:` line)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, write_mnist_format

from experiments.double_descent import run
from experiments.double_descent.label_noise import corrupt_labels
from swag.errors import UserError

SCRIPT = REPO_ROOT / "experiments" / "double_descent" / "run.py"


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return write_mnist_format(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=32)


def sweep_args(out, data_path, *extra: str, widths=("1", "2")):
    return [
        "--out", str(out), "--data_path", str(data_path), "--dataset", "FashionMNIST",
        "--model", "CNN5NoAug", "--widths", *widths, "--noise", "0", "0.5", "--members", "2",
        "--epochs", "3", "--swag_start", "1", "--swag_samples", "2", "--batch_size", "64",
        "--lr", "0.05", "--swag_lr", "0.02", "--wd", "0", "--device", "cpu", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory, fmnist):
    out = tmp_path_factory.mktemp("full")
    assert run.main(sweep_args(out, fmnist.data_path)) == 0
    return out


def _table(out) -> list[dict]:
    rows = json.loads((out / "results.json").read_text())
    return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]


def test_corruption_moves_exactly_the_fraction_to_other_classes():
    labels = np.random.default_rng(0).integers(0, 10, size=1000)
    noisy = corrupt_labels(labels, 0.2, 10, np.random.default_rng(1))
    assert (noisy != labels).sum() == 200
    np.testing.assert_array_equal(noisy, corrupt_labels(labels, 0.2, 10, np.random.default_rng(1)))
    np.testing.assert_array_equal(corrupt_labels(labels, 0.0, 10, np.random.default_rng(1)), labels)


def test_corrupted_labels_are_uniform_over_the_other_classes():
    # 50,000 corrupted labels: each of the 9 other classes has frequency 1/9 with standard
    # error sqrt((1/9)(8/9)/50,000) ≈ 0.0014; allow 5 standard errors.
    labels = np.full(100_000, 3)
    noisy = corrupt_labels(labels, 0.5, 10, np.random.default_rng(0))
    frequencies = np.bincount(noisy[noisy != 3], minlength=10) / 50_000
    assert frequencies[3] == 0
    np.testing.assert_allclose(np.delete(frequencies, 3), 1 / 9, atol=5 * 0.0014)


def test_sweep_writes_cells_table_and_figure(full_sweep):
    rows = _table(full_sweep)
    assert [(row["noise"], row["width"]) for row in rows] == [(0, 1), (0, 2), (0.5, 1), (0.5, 2)]
    for row in rows:
        assert row["num_parameters"] == 378 * row["width"] ** 2 + (45 + 9 + 80) * row["width"] + 10
        assert len(row["members"]) == 2
        for method in ("sgd", "swag", "multiswag", "ensemble"):
            assert 0 <= row[f"{method}_error"] <= 1 and row[f"{method}_nll"] > 0
        member_mean = np.mean([member["sgd_error"] for member in row["members"]])
        assert row["sgd_error"] == pytest.approx(member_mean)
    with open(full_sweep / "results.csv") as stream:
        assert len(list(csv.DictReader(stream))) == 4
    assert len(list((full_sweep / "cells").glob("*.json"))) == 4
    assert (full_sweep / "double_descent.png").stat().st_size > 0
    assert (full_sweep / "command.sh").is_file()


def test_resuming_a_half_finished_sweep_gives_the_same_table(tmp_path, fmnist, full_sweep,
                                                             monkeypatch):  # fmt: skip
    assert run.main(sweep_args(tmp_path, fmnist.data_path, widths=("1",))) == 0
    trained = []
    original = run.run_cell
    monkeypatch.setattr(run, "run_cell", lambda spec, width, *rest: trained.append(width)
                        or original(spec, width, *rest))  # fmt: skip
    assert run.main(sweep_args(tmp_path, fmnist.data_path)) == 0
    assert trained == [2, 2]  # width 1 was reused at both noise levels
    assert _table(tmp_path) == _table(full_sweep)


def test_a_folder_of_another_sweep_is_refused(full_sweep, fmnist):
    with pytest.raises(UserError, match="other settings"):
        run.main(sweep_args(full_sweep, fmnist.data_path, "--epochs", "4"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "LeNet5"], "has no width"),
        (["--model", "ResNet99"], "unknown model"),
        (["--widths", "0"], "--widths"),
        (["--noise", "1.5"], "--noise"),
        (["--members", "0"], "--members"),
        (["--swag_start", "3"], "--swag_start"),
        (["--swag_start", "0"], "--swag_start"),
        (["--lr", "0"], "--lr"),
        (["--dataset", "ImageNet"], "unknown --dataset"),
        (["--train_subset", "10000"], "at most"),
    ],
)
def test_bad_input_is_one_sentence(extra, message, tmp_path, fmnist):
    with pytest.raises(UserError, match=message):
        run.main(sweep_args(tmp_path / "out", fmnist.data_path, *extra))
    assert not (tmp_path / "out").exists()


def test_bad_input_exits_2_in_a_subprocess(tmp_path, fmnist):
    command = [
        sys.executable,
        str(SCRIPT),
        *sweep_args(tmp_path, fmnist.data_path, "--noise", "-1"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --noise takes distinct fractions in [0, 1), e.g. --noise 0 0.2"
    ]
