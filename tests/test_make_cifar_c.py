"""make_cifar_c.py on tiny CIFAR-10 pickles and MNIST idx files written into tmp_path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from swag.errors import UserError
from ubdl_data import _external, make_cifar_c

pytest.importorskip("skimage")
pytest.importorskip("cv2")

SUBSET = ["gaussian_noise", "glass_blur", "contrast", "fog"]
REPO = Path(__file__).resolve().parents[1]


def run(data: Path, out: Path, *flags: str) -> int:
    return make_cifar_c.main(["--datapath", str(data), "--savepath", str(out), *flags])


@pytest.fixture
def cifar(tmp_path, tiny_cifar10):
    return tiny_cifar10(tmp_path, n_train=5, n_test=12)


def test_per_severity_files_hold_exactly_that_severity(cifar, tmp_path):
    out = tmp_path / "c"
    assert run(cifar.data_path / "cifar10", out, "--corruptions", *SUBSET) == 0
    assert sorted(p.name for p in out.glob("*.np*")) == sorted(
        f"{name}_{s}.npz" for name in SUBSET for s in range(1, 6)
    )
    sizes = []
    for path in out.glob("*.npz"):
        with np.load(path) as f:
            assert f["data"].shape == (12, 32, 32, 3) and f["data"].dtype == np.uint8
            np.testing.assert_array_equal(f["labels"], cifar.test_labels)
        sizes.append(path.stat().st_size)
    # not cumulative: every file holds 12 images (the original's _5 held 60)
    assert max(sizes) - min(sizes) == 0 and max(sizes) < 12 * 3072 + 2048


def test_bytes_do_not_depend_on_workers_limit_or_subset(cifar, tmp_path):
    data = cifar.data_path / "cifar10"
    run(data, tmp_path / "one", "--corruptions", *SUBSET, "--severities", "2", "5")
    run(data, tmp_path / "two", "--corruptions", *SUBSET, "--severities", "5", "--workers", "2")
    run(data, tmp_path / "few", "--corruptions", "fog", "--severities", "5", "--limit", "5")
    run(data, tmp_path / "seed", "--corruptions", "fog", "--severities", "5", "--seed", "1")
    for name in SUBSET:
        one = np.load(tmp_path / "one" / f"{name}_5.npz")["data"]
        np.testing.assert_array_equal(one, np.load(tmp_path / "two" / f"{name}_5.npz")["data"])
    fog = np.load(tmp_path / "one" / "fog_5.npz")["data"]
    np.testing.assert_array_equal(fog[:5], np.load(tmp_path / "few" / "fog_5.npz")["data"])
    assert not np.array_equal(fog, np.load(tmp_path / "seed" / "fog_5.npz")["data"])


def test_hendrycks_layout_stacks_the_severity_blocks(cifar, tmp_path):
    data = cifar.data_path / "cifar10"
    run(data, tmp_path / "u", "--corruptions", "contrast", "gaussian_noise")
    run(
        data, tmp_path / "h", "--corruptions", "contrast", "gaussian_noise", "--format", "hendrycks"
    )
    assert sorted(p.name for p in (tmp_path / "h").glob("*.np*")) == [
        "contrast.npy", "gaussian_noise.npy", "labels.npy",
    ]  # fmt: skip
    np.testing.assert_array_equal(
        np.load(tmp_path / "h" / "labels.npy"), np.tile(cifar.test_labels, 5)
    )
    stacked = np.load(tmp_path / "h" / "gaussian_noise.npy")
    assert stacked.shape == (60, 32, 32, 3)
    for s in range(1, 6):
        block = np.load(tmp_path / "u" / f"gaussian_noise_{s}.npz")["data"]
        np.testing.assert_array_equal(stacked[(s - 1) * 12 : s * 12], block)
    with pytest.raises(UserError, match="all five severities"):
        run(data, tmp_path / "h", "--format", "hendrycks", "--severities", "1")


def test_finished_files_are_skipped(cifar, tmp_path, capsys):
    data, out = cifar.data_path / "cifar10", tmp_path / "c"
    run(data, out, "--corruptions", "contrast", "--severities", "1")
    path = out / "contrast_1.npz"
    path.write_bytes(b"kept")  # a re-run must not touch it
    run(data, out, "--corruptions", "contrast", "--severities", "1", "2")
    assert path.read_bytes() == b"kept" and (out / "contrast_2.npz").exists()
    assert "1 already in" in capsys.readouterr().out
    assert not list(out.glob(".*tmp"))


def test_greyscale_mnist(tmp_path, tiny_mnist):
    tiny = tiny_mnist(tmp_path, n_train=8, n_test=6)
    out = tmp_path / "m"
    flags = [
        "--dataset",
        "MNIST",
        "--corruptions",
        "snow",
        "frost",
        "zoom_blur",
        "--severities",
        "3",
    ]
    run(tiny.data_path / "mnist", out, *flags)
    for name in ("snow", "frost", "zoom_blur"):
        with np.load(out / f"{name}_3.npz") as f:
            assert f["data"].shape == (6, 28, 28) and f["data"].dtype == np.uint8
            assert np.abs(f["data"].astype(float) - tiny.test_images).mean() > 1


def test_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        run(tmp_path / "nowhere", tmp_path / "c", "--corruptions", "contrast")
    with pytest.raises(UserError, match="choose from"):
        run(tmp_path, tmp_path / "c", "--corruptions", "rain")
    with pytest.raises(SystemExit, match="2"):  # argparse: "error: ... a severity from 1 to 5"
        run(tmp_path, tmp_path / "c", "--severities", "0")
    monkeypatch.setitem(sys.modules, "wand.image", None)  # as if ImageMagick were missing
    _external._wand_image_class.cache_clear()
    try:
        with pytest.raises(UserError, match="MagickWand"):
            run(tmp_path, tmp_path / "c", "--corruptions", "snow")
    finally:
        _external._wand_image_class.cache_clear()


def test_script_exits_2_with_one_line(tmp_path):
    script = REPO / "ubdl_data" / "make_cifar_c.py"
    flags = ["--datapath", str(tmp_path), "--savepath", str(tmp_path / "c")]
    result = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True)
    assert result.returncode == 2
    assert (
        result.stderr.startswith("error: no CIFAR10 test set under")
        and "Traceback" not in result.stderr
    )
