"""laplace_evidence.py end to end on tiny Fashion-MNIST idx files: a subset written in the real
format, two corruption levels, one epoch, both Hessians; resume skips finished cells; bad input
is one sentence before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_idx as fixture_write_idx

from experiments.rethinking_generalization import laplace_evidence
from swag.errors import UserError
from swag.idx_format import read_idx, write_idx


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_fashion_mnist):
    root = tmp_path_factory.mktemp("evidence")
    tiny = tiny_fashion_mnist(root / "data", n_train=300, n_test=80)
    argv = ["--dataset", "FashionMNIST", "--data_path", str(tiny.data_path), "--out",
            str(root / "out"), "--fractions", "0", "1", "--train_subset", "120",
            "--test_subset", "40", "--epochs", "1", "--batch_size", "32", "--device", "cpu",
            "--threads", "1"]  # fmt: skip
    assert laplace_evidence.main(argv) == 0
    return root / "out", tiny, argv


def test_subset_is_real_idx_data(study):
    out, tiny, _ = study
    raw = out / "data" / "fashionmnist" / "FashionMNIST" / "raw"
    images, labels = (
        read_idx(raw / "train-images-idx3-ubyte"),
        read_idx(raw / "train-labels-idx1-ubyte"),
    )
    assert images.shape == (120, 28, 28) and labels.shape == (120,)
    assert read_idx(raw / "t10k-images-idx3-ubyte").shape == (40, 28, 28)
    # every chosen image is an original training image with its original label, none twice
    flat = tiny.train_images.reshape(300, -1)
    positions = [int(np.flatnonzero((flat == image.ravel()).all(1))[0]) for image in images]
    assert len(set(positions)) == 120
    np.testing.assert_array_equal(labels, tiny.train_labels[positions])


def test_json_has_one_entry_per_level_and_hessian(study):
    out, _, _ = study
    rows = json.loads((out / "laplace_evidence.json").read_text())
    assert [(r["fraction"], r["hessian"]) for r in rows] == [
        (0.0, "diag"), (0.0, "kron"), (1.0, "diag"), (1.0, "kron")
    ]  # fmt: skip
    assert [r["count"] for r in rows] == [0, 0, 120, 120]
    assert rows[0]["wrong_fraction"] == 0.0
    assert 0.75 < rows[2]["wrong_fraction"] < 1.0  # about 1 - 1/10 of relabelled labels change
    for row in rows:
        assert np.isfinite(row["log_marglik_per_example"]) and row["log_marglik_per_example"] < 0
        assert 0 <= row["train_acc"] <= 1 and 0 <= row["test_acc"] <= 1
        assert all(delta > 0 for delta in row["prior_precision"]) and row["n_train"] == 120
        evidence = json.loads(
            (out / f"laplace_{row['count']}_{row['hessian']}" / "laplace-1.json").read_text()
        )
        assert evidence["num_data"] == 120
    assert rows[0]["test_acc"] == rows[1]["test_acc"]  # one training run per level
    assert (out / "laplace_evidence.png").stat().st_size > 0


def test_resume_skips_finished_cells(study, monkeypatch):
    out, _, argv = study
    before = (out / "laplace_evidence.json").read_text()

    def refuse(argv=None):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(laplace_evidence.run_swag, "main", refuse)
    monkeypatch.setattr(laplace_evidence.fit_laplace, "main", refuse)
    assert laplace_evidence.main(argv) == 0
    assert (out / "laplace_evidence.json").read_text() == before


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (["--fractions", "0", "1.5"], "--fractions must lie in [0, 1]"),
        (["--hessians", "full"], "unknown --hessians full"),
        (["--optimize_prior", "none"], "choose scalar or layerwise"),
        (["--dataset", "CIFAR10"], "--train_subset works with MNIST and FashionMNIST"),
        (["--epochs", "2"], "other --epochs"),
        (["--train_subset", "1000"], "fewer than the subset of 1000"),
    ],
)
def test_bad_input_is_one_sentence(study, tmp_path, change, words):
    out, _, argv = study
    if words.startswith("fewer"):  # a fresh folder, so the settings check passes
        argv = [
            *argv[: argv.index("--out") + 1],
            str(tmp_path / "new"),
            *argv[argv.index("--out") + 2 :],
        ]
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("]", r"\]")):
        laplace_evidence.main([*argv, *change])
    assert not (tmp_path / "new").exists()  # refused before anything was written


def test_write_idx_matches_the_fixture_writer(tmp_path):
    """The library writer against the independent one of tests/conftest.py, byte for byte."""
    array = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    for shape in [(3, 28, 28), (3 * 28 * 28,)]:
        write_idx(tmp_path / "ours", array.reshape(shape))
        fixture_write_idx(tmp_path / "fixture", array.reshape(shape))
        assert (tmp_path / "ours").read_bytes() == (tmp_path / "fixture").read_bytes()
