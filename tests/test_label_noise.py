"""swag.label_noise and make_corrupted_labels.py: statistics against closed forms, and the
original CIFAR-10 corruption arrays where a copy of them is found beside the checkout."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from experiments.rethinking_generalization import make_corrupted_labels
from swag import label_noise
from swag.errors import UserError

N, C = 50_000, 10
COUNTS = [5000, 10000, 20000, 30000, 40000, 50000]
# 4 binomial standard errors at p = 0.5 over 50,000 positions (the without-replacement choice of
# positions only lowers the variance).
TOLERANCE = 4 * (0.25 / N) ** 0.5


def reference_dir() -> Path | None:
    """The folder of the original label arrays, if a copy sits beside the checkout."""
    if "UBDL_REFERENCE_DATA" in os.environ:
        return Path(os.environ["UBDL_REFERENCE_DATA"])
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "reference" / "data"
        if (candidate / "cifar10_label_corruption_5000.npy").is_file():
            return candidate
    return None


def corrupted_files(truth: np.ndarray, seed: int = 0) -> dict[int, np.ndarray]:
    return {
        count: label_noise.corrupt_labels(truth, count, C, np.random.default_rng([seed, count]))
        for count in COUNTS
    }


@pytest.mark.parametrize("num_classes", [10, 3])
def test_pairwise_disagreement_matches_closed_form(num_classes):
    truth = np.arange(N) % num_classes
    files = {
        count: label_noise.corrupt_labels(truth, count, num_classes, np.random.default_rng(count))
        for count in COUNTS
    }
    for a, b in itertools.combinations(COUNTS, 2):
        observed = np.mean(files[a] != files[b])
        expected = label_noise.expected_disagreement(a / N, b / N, num_classes)
        assert abs(observed - expected) < TOLERANCE, (a, b, observed, expected)
    for count, labels in files.items():  # a file against the truth: (1 − 1/C) f
        expected = (1 - 1 / num_classes) * count / N
        assert abs(np.mean(labels != truth) - expected) < TOLERANCE


def test_exact_count_and_class_counts():
    truth = np.zeros(N, dtype=np.int64)
    # With C = 1000 classes almost every relabelled position changes: the count is exact up to
    # the ~count/1000 that redraw class 0.
    relabelled = label_noise.corrupt_labels(truth, 7000, 1000, np.random.default_rng(1))
    assert 7000 - 30 <= np.count_nonzero(relabelled) <= 7000
    full = label_noise.corrupt_labels(truth, N, C, np.random.default_rng(2))
    counts = np.bincount(full, minlength=C)
    sd = (N * 0.1 * 0.9) ** 0.5  # each class count is Binomial(N, 1/C)
    assert np.all(np.abs(counts - N / C) < 5 * sd)
    assert full.dtype == np.int64 and truth.sum() == 0  # input untouched


def test_flip_and_permute():
    labels = np.arange(1000) % 2
    flipped = label_noise.flip_binary_labels(labels, 0.3, np.random.default_rng(0))
    assert np.count_nonzero(flipped != labels) == 300
    permuted = label_noise.permute_labels(labels, np.random.default_rng(0))
    assert np.array_equal(np.bincount(permuted), np.bincount(labels))
    with pytest.raises(UserError, match="outside"):
        label_noise.flip_binary_labels(labels, 1.5, np.random.default_rng(0))
    with pytest.raises(UserError, match="cannot corrupt"):
        label_noise.corrupt_labels(labels, 1001, 2, np.random.default_rng(0))


@pytest.mark.skipif(reference_dir() is None, reason="original label arrays not found")
def test_against_original_arrays():
    originals = {
        count: np.load(reference_dir() / f"cifar10_label_corruption_{count}.npy")
        for count in COUNTS
    }
    assert all(array.dtype == np.int64 and array.shape == (N,) for array in originals.values())
    assert originals[5000][:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    # A stand-in for the truth: the most frequent label of the six files at each position (the
    # true one is kept by about 3.2 of them on average, the rest scatter over 10 classes). The
    # 5k file keeps (1 − 0.9 · 0.1) = 91% of the truth.
    stacked = np.stack(list(originals.values()))
    truth = np.apply_along_axis(np.bincount, 0, stacked, minlength=C).argmax(0)
    assert np.mean(truth == originals[5000]) > 0.85
    ours = corrupted_files(truth)
    for a, b in itertools.combinations(COUNTS, 2):
        theirs = np.mean(originals[a] != originals[b])
        mine = np.mean(ours[a] != ours[b])
        assert abs(theirs - mine) < 2 * TOLERANCE, (a, b, theirs, mine)
        assert abs(theirs - label_noise.expected_disagreement(a / N, b / N, C)) < TOLERANCE


def test_driver_writes_independent_files(tmp_path, tiny_cifar10):
    data = tiny_cifar10(tmp_path / "data", n_train=250)
    out = tmp_path / "labels"
    argv = [
        "--dataset",
        "CIFAR10",
        "--data_path",
        str(data.data_path),
        "--out",
        str(out),
        "--counts",
        "50",
        "250",
        "--seed",
        "3",
    ]
    assert make_corrupted_labels.main(argv) == 0
    full = np.load(out / "cifar10_label_corruption_250.npy")
    part = np.load(out / "cifar10_label_corruption_50.npy")
    assert full.dtype == np.int64 and full.shape == (250,)
    assert np.count_nonzero(part != data.train_labels) <= 50
    # the file for a count does not depend on which other counts were asked for
    make_corrupted_labels.main([*argv[:-5], "--counts", "50", "--seed", "3"])
    assert np.array_equal(np.load(out / "cifar10_label_corruption_50.npy"), part)
    with pytest.raises(UserError, match="exceeds the 250 training labels"):
        make_corrupted_labels.main([*argv[:-5], "--counts", "251", "--seed", "3"])
    assert np.array_equal(np.load(out / "cifar10_label_corruption_250.npy"), full)
