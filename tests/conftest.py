"""Shared fixtures: tiny datasets written in the real on-disk formats, so torchvision's loaders run.

- `tiny_fashion_mnist(root, n_train, n_test)` / `tiny_mnist(...)`: uncompressed idx files under
  `<root>/<dataset lower>/<dataset>/raw/` (the layout `make data` produces), 28×28 grey images.
- `tiny_cifar10(root, n_train, n_test)`: the five `data_batch_*`, `test_batch` and `batches.meta`
  pickles under `<root>/cifar10/cifar-10-batches-py/`, 32×32 RGB images; `tiny_cifar100` and
  `tiny_svhn` likewise (`cifar-100-python/`, `svhn/*_32x32.mat`). torchvision checks the md5 of
  the real files, so these fixtures replace `check_integrity` in `torchvision.datasets.cifar`
  and `.svhn` with an existence check for the duration of the test (`skip_md5`).

Each factory returns a `TinyData` with the arrays it wrote. Images carry a smooth class
template plus noise, so a few epochs of training beat chance. The factories are session-scoped
fixtures returning plain functions, so module-scoped fixtures can use them too.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `from experiments.train import run_swag`
    sys.path.insert(0, str(REPO_ROOT))

torch.set_num_threads(1)  # 2 cores shared by every engineer's test run


@dataclass
class TinyData:
    """What a factory wrote: `data_path` is what to pass as `--data_path`.

    Images are uint8 [N, H, W] (grey) or [N, H, W, 3] (CIFAR), labels int64 [N].
    """

    data_path: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int = 10


def write_legacy_checkpoint(directory: Path, epoch: int, name: str = "checkpoint", **state) -> Path:
    """`<directory>/<name>-<epoch>.pt` as {"epoch", **state}: the original's files, and this
    project's before the posterior contract (a bare `state_dict` and no `kind`)."""
    path = Path(directory) / f"{name}-{epoch}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, **state}, path)
    return path


def synthetic_images(
    rng: np.random.Generator, labels: np.ndarray, templates: np.ndarray
) -> np.ndarray:
    """uint8 images [N, *shape]: the template [C, *shape] of each label plus uniform noise."""
    noise = rng.integers(-60, 61, size=(labels.shape[0], *templates.shape[1:]))
    return np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)


def smooth_templates(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """uint8-range templates [10, *shape]: 4×4 blocks, mirror-symmetric, so that the padded
    crops and flips of the training augmentation keep the classes apart."""
    height, width = shape[:2]
    blocks = rng.integers(0, 256, size=(10, 4, 4, *shape[2:]))
    blocks = (blocks + blocks[:, :, ::-1]) // 2
    rows = np.arange(height) * 4 // height
    columns = np.arange(width) * 4 // width
    return blocks[:, rows][:, :, columns]


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write `array` (uint8, 1-3 dims) in the big-endian idx format of MNIST."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if compress else open
    with opener(path, "wb") as stream:
        stream.write(header + array.tobytes())


def write_mnist_format(
    root: Path,
    n_train: int = 256,
    n_test: int = 64,
    seed: int = 0,
    dataset: str = "FashionMNIST",
) -> TinyData:
    """Uncompressed idx files in `<root>/<dataset lower>/<dataset>/raw/` (torchvision's layout)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    train_labels = np.arange(n_train) % 10
    test_labels = rng.permutation(np.arange(n_test) % 10)
    templates = smooth_templates(rng, (28, 28))
    train_images = synthetic_images(rng, train_labels, templates)
    test_images = synthetic_images(rng, test_labels, templates)
    raw = root / dataset.lower() / dataset / "raw"
    write_idx(raw / "train-images-idx3-ubyte", train_images)
    write_idx(raw / "train-labels-idx1-ubyte", train_labels)
    write_idx(raw / "t10k-images-idx3-ubyte", test_images)
    write_idx(raw / "t10k-labels-idx1-ubyte", test_labels)
    return TinyData(root, train_images, train_labels.astype(np.int64), test_images,
                    test_labels.astype(np.int64))  # fmt: skip


def write_cifar10(root: Path, n_train: int = 250, n_test: int = 50, seed: int = 0) -> TinyData:
    """CIFAR-10 python pickles in `<root>/cifar10/cifar-10-batches-py/` (five training batches).

    `n_train` must be a multiple of 5. Rows are 3072 bytes, channel-major (R plane, G, B), as in
    the real files.
    """
    if n_train % 5:
        raise ValueError("n_train must be a multiple of 5 (five training batches)")
    root = Path(root)
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_labels = rng.permutation(np.arange(n_train) % 10)
    test_labels = np.arange(n_test) % 10
    templates = smooth_templates(rng, (32, 32, 3))
    train_images = synthetic_images(rng, train_labels, templates)
    test_images = synthetic_images(rng, test_labels, templates)

    def dump(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
        entry = {
            "batch_label": name,
            "labels": [int(label) for label in labels],
            "data": rows,
            "filenames": [f"{name}_{i}.png" for i in range(len(images))],
        }
        with open(folder / name, "wb") as stream:
            pickle.dump(entry, stream, protocol=2)

    per_batch = n_train // 5
    for index in range(5):
        part = slice(index * per_batch, (index + 1) * per_batch)
        dump(f"data_batch_{index + 1}", train_images[part], train_labels[part])
    dump("test_batch", test_images, test_labels)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]  # fmt: skip
    with open(folder / "batches.meta", "wb") as stream:
        pickle.dump({"label_names": classes, "num_cases_per_batch": per_batch}, stream)
    return TinyData(root, train_images, train_labels.astype(np.int64), test_images,
                    test_labels.astype(np.int64))  # fmt: skip


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> TinyData:
    """CIFAR-100 python pickles (`train`, `test`, `meta`) in `<root>/cifar100/cifar-100-python/`.

    Labels cycle through all 100 classes, so pass at least 100 training images.
    """
    root = Path(root)
    folder = root / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_labels = rng.permutation(np.arange(n_train) % 100)
    test_labels = np.arange(n_test) % 100
    images = rng.integers(0, 256, size=(n_train + n_test, 32, 32, 3), dtype=np.uint8)
    for name, part, labels in [
        ("train", images[:n_train], train_labels),
        ("test", images[n_train:], test_labels),
    ]:
        entry = {
            "filenames": [f"{name}_{i}.png" for i in range(len(labels))],
            "fine_labels": [int(label) for label in labels],
            "coarse_labels": [int(label) // 5 for label in labels],
            "data": part.transpose(0, 3, 1, 2).reshape(len(part), 3072),
        }
        with open(folder / name, "wb") as stream:
            pickle.dump(entry, stream, protocol=2)
    with open(folder / "meta", "wb") as stream:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, stream)  # fmt: skip
    return TinyData(root, images[:n_train], train_labels.astype(np.int64), images[n_train:],
                    test_labels.astype(np.int64), num_classes=100)  # fmt: skip


def write_svhn(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> TinyData:
    """`train_32x32.mat` / `test_32x32.mat` in `<root>/svhn/`: X [32, 32, 3, N], y [N, 1] in
    1..10 with 10 standing for the digit 0, as in the real files. Returned labels are 0..9."""
    import scipy.io

    root = Path(root)
    folder = root / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = []
    for name, count in [("train", n_train), ("test", n_test)]:
        labels = rng.permutation(np.arange(count) % 10)
        images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
        stored = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
        scipy.io.savemat(folder / f"{name}_32x32.mat",
                         {"X": images.transpose(1, 2, 3, 0), "y": stored})  # fmt: skip
        arrays += [images, labels.astype(np.int64)]
    return TinyData(root, *arrays)


def skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision's CIFAR and SVHN accept files whose md5 differs from the real ones."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn

    exists = lambda path, md5=None: os.path.isfile(path)  # noqa: E731
    monkeypatch.setattr(cifar, "check_integrity", exists)
    monkeypatch.setattr(svhn, "check_integrity", exists)


@pytest.fixture(scope="session")
def tiny_fashion_mnist():
    """Factory `(root, n_train=256, n_test=64, seed=0) -> TinyData` writing FashionMNIST idx."""
    return write_mnist_format


@pytest.fixture(scope="session")
def tiny_mnist():
    """Factory `(root, n_train=256, n_test=64, seed=0) -> TinyData` writing MNIST idx files."""

    def make(root: Path, n_train: int = 256, n_test: int = 64, seed: int = 0) -> TinyData:
        return write_mnist_format(root, n_train, n_test, seed, dataset="MNIST")

    return make


@pytest.fixture
def tiny_cifar10(monkeypatch):
    """Factory `(root, n_train=250, n_test=50, seed=0) -> TinyData` writing CIFAR-10 pickles."""
    skip_md5(monkeypatch)
    return write_cifar10


@pytest.fixture
def tiny_cifar100(monkeypatch):
    """Factory `(root, n_train=200, n_test=100, seed=0) -> TinyData` writing CIFAR-100 pickles."""
    skip_md5(monkeypatch)
    return write_cifar100


@pytest.fixture
def tiny_svhn(monkeypatch):
    """Factory `(root, n_train=60, n_test=20, seed=0) -> TinyData` writing SVHN .mat files."""
    skip_md5(monkeypatch)
    return write_svhn


LINEAR_NOISE_VAR, LINEAR_PRIOR_VAR = 0.25, 4.0


def bayesian_linear_regression():
    """A Bayesian linear regression on features [x, x²] with its closed-form posterior.

    y = 0.7x − 0.4x² + 0.3 + N(0, 0.25) at 30 points on [−1.5, 1.5]; prior N(0, 4·I) on
    θ = (w_x, w_x², b). Posterior precision Λ = XᵀX/σ² + I/σ_p², mean Λ⁻¹Xᵀy/σ².

    Returns:
        inputs [30, 2], targets [30, 1], design X [30, 3], precision Λ [3, 3], mean [3]
        (float64).
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.linspace(-1.5, 1.5, 30, dtype=torch.float64)
    inputs = torch.stack([x, x**2], 1)
    targets = (0.7 * x - 0.4 * x**2 + 0.3)[:, None]
    noise = torch.randn(targets.shape, generator=generator).double()
    targets = targets + LINEAR_NOISE_VAR**0.5 * noise
    design = torch.cat([inputs, torch.ones(30, 1, dtype=torch.float64)], 1)
    identity = torch.eye(3, dtype=torch.float64)
    precision = design.T @ design / LINEAR_NOISE_VAR + identity / LINEAR_PRIOR_VAR
    mean = torch.linalg.solve(precision, design.T @ targets[:, 0] / LINEAR_NOISE_VAR)
    return inputs, targets, design, precision, mean


def execute_notebook(path: Path, parameters: str, timeout: int = 600) -> None:
    """Run the notebook at `path` top to bottom in its folder, its first (parameters) cell
    replaced by `parameters`; the committed notebook must be stripped of outputs."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    book = nbformat.read(path, as_version=4)
    assert "parameters" in book.cells[0].metadata.get("tags", [])
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code")
    book.cells[0].source = parameters
    resources = {"metadata": {"path": str(path.parent)}}
    environment = {"MPLBACKEND": "Agg", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        nbclient.NotebookClient(book, timeout=timeout, kernel_name="python3",
                                resources=resources).execute()  # fmt: skip
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def run_notebook():
    """`(path, parameters, timeout=600)`: execute a notebook with its parameters replaced."""
    return execute_notebook
