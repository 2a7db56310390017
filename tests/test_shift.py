"""Shifted test sets: both CIFAR-10-C layouts and MNIST-format grey images, on tiny files."""

from __future__ import annotations

import numpy as np
import pytest

from swag.errors import UserError
from swag.shift import detect_layout, load_shifted

N = 4  # images per severity


def _images(rng, n, shape=(32, 32, 3)):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _write_per_severity(root, corruptions, shape=(32, 32, 3), seed=0, cumulative=False):
    rng = np.random.default_rng(seed)
    truth = {}
    for c in corruptions:
        blocks = []
        for s in range(1, 6):
            images, labels = _images(rng, N, shape), rng.integers(0, 10, N).astype(np.uint8)
            truth[c, s] = (images, labels)
            blocks.append((images, labels))
            if cumulative:  # what the original generator wrote: severities 1..s in <c>_s.npz
                images = np.concatenate([b[0] for b in blocks])
                labels = np.concatenate([b[1] for b in blocks])
            np.savez(root / f"{c}_{s}.npz", data=images, labels=labels)
    return truth


def test_per_severity_layout(tmp_path):
    truth = _write_per_severity(tmp_path, ["gaussian_blur", "fog"])
    assert detect_layout(tmp_path) == "per_severity"
    sets = load_shifted(tmp_path)
    assert [s.name for s in sets] == [f"fog_{s}" for s in range(1, 6)] + [
        f"gaussian_blur_{s}" for s in range(1, 6)
    ]
    for s in sets:
        np.testing.assert_array_equal(s.images, truth[s.corruption, s.severity][0])
        np.testing.assert_array_equal(s.labels, truth[s.corruption, s.severity][1])
        assert s.labels.dtype == np.int64


def test_upstream_cumulative_files_keep_their_last_block(tmp_path):
    truth = _write_per_severity(tmp_path, ["fog"], cumulative=True)
    for s in load_shifted(tmp_path):
        assert len(s.images) == N
        np.testing.assert_array_equal(s.images, truth["fog", s.severity][0])
        np.testing.assert_array_equal(s.labels, truth["fog", s.severity][1])


@pytest.mark.parametrize("labels_per_block", [True, False])
def test_hendrycks_layout(tmp_path, labels_per_block):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, N)
    blocks = {c: [_images(rng, N) for _ in range(5)] for c in ["contrast", "snow"]}
    for c, b in blocks.items():
        np.save(tmp_path / f"{c}.npy", np.concatenate(b))
    np.save(tmp_path / "labels.npy", np.tile(labels, 5) if labels_per_block else labels)
    assert detect_layout(tmp_path) == "hendrycks"
    sets = load_shifted(tmp_path, severities=[2, 5])
    assert [s.name for s in sets] == ["contrast_2", "contrast_5", "snow_2", "snow_5"]
    for s in sets:
        np.testing.assert_array_equal(s.images, blocks[s.corruption][s.severity - 1])
        np.testing.assert_array_equal(s.labels, labels)


def test_mnist_format_grey_images_in_both_layouts(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    truth = _write_per_severity(tmp_path / "a", ["shot_noise"], shape=(28, 28))
    rng = np.random.default_rng(2)
    np.save(tmp_path / "b" / "shot_noise.npy", _images(rng, 5 * N, (28, 28)))
    np.save(tmp_path / "b" / "labels.npy", rng.integers(0, 10, 5 * N))
    for root in (tmp_path / "a", tmp_path / "b"):
        sets = load_shifted(root, image_shape=(28, 28, 1))
        assert len(sets) == 5 and all(s.images.shape == (N, 28, 28, 1) for s in sets)
    np.testing.assert_array_equal(
        load_shifted(tmp_path / "a")[0].images[..., 0], truth["shot_noise", 1][0]
    )


def test_bad_directories_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        load_shifted(tmp_path / "missing")
    with pytest.raises(UserError, match="no shifted test sets"):
        load_shifted(tmp_path)
    _write_per_severity(tmp_path, ["fog"])
    with pytest.raises(UserError, match="expects"):
        load_shifted(tmp_path, image_shape=(28, 28, 1))
    with pytest.raises(UserError, match="not in"):
        load_shifted(tmp_path, corruptions=["fog", "frost"])
    np.save(tmp_path / "fog.npy", np.zeros((5, 32, 32, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(1, np.int64))
    with pytest.raises(UserError, match="both"):
        load_shifted(tmp_path)


def test_bad_files_name_the_fix(tmp_path):
    np.savez(tmp_path / "fog_1.npz", images=np.zeros((2, 8, 8, 3), np.uint8), y=np.zeros(2))
    with pytest.raises(UserError, match="'data' and 'labels'"):
        load_shifted(tmp_path)
    np.savez(tmp_path / "fog_1.npz", data=np.zeros((2, 8, 8, 3)), labels=np.zeros(2, np.int64))
    with pytest.raises(UserError, match="uint8"):
        load_shifted(tmp_path)
    np.savez(tmp_path / "fog_1.npz", data=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros(3))
    with pytest.raises(UserError, match="integer"):
        load_shifted(tmp_path)
