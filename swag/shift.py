"""Shifted test sets (CIFAR-10-C, Fashion-MNIST-C): find and load them.

Two on-disk layouts are read, and told apart from the file names:

* **per severity** (this project's `ubdl_data/make_cifar_c.py`): one
  `<corruption>_<severity>.npz` per (corruption, severity) with keys `data` (uint8
  `[N, H, W, C]`, or `[N, H, W]` for grey images) and `labels` (`[N]`). Files written by the
  original generator hold severities 1..s concatenated in `<corruption>_s.npz`
  (docs/original_code.md, "CIFAR-10-C"); when every size is `s` times the size of severity 1
  the last block is kept, which is exactly severity s.
* **Hendrycks** (the published CIFAR-10-C, Zenodo 2535967): one `<corruption>.npy` of
  `5 N` images stacked in severity blocks 1..5, plus a shared `labels.npy` of `5 N` (or `N`)
  labels.

MNIST-format data (28x28 grey, `[N, 28, 28]` or `[N, 28, 28, 1]`) works in both layouts.
Batch the loaded images with `swag.data.array_loader(s.images, s.labels, preset, ...)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swag.errors import UserError
from swag.io import load_npy, load_npz

NUM_SEVERITIES = 5
_PER_SEVERITY = re.compile(r"^(?P<corruption>.+)_(?P<severity>[1-9][0-9]*)\.npz$")


@dataclass(frozen=True)
class ShiftedSet:
    """One (corruption, severity) test set.

    Attributes:
        corruption: corruption name, e.g. `gaussian_blur`.
        severity: 1..5.
        images: uint8 `[N, H, W, C]` (possibly a read-only memory map).
        labels: int64 `[N]`.
    """

    corruption: str
    severity: int
    images: np.ndarray
    labels: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.corruption}_{self.severity}"


def detect_layout(path: str | Path) -> str:
    """Return `"per_severity"` or `"hendrycks"` for a directory of shifted test sets.

    Raises:
        UserError: if the directory is missing, empty, or holds both layouts.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(
            f"{root} is not a directory; pass the folder of shifted .npz/.npy test sets"
        )
    per_severity = any(_PER_SEVERITY.match(p.name) for p in root.glob("*.npz"))
    hendrycks = (root / "labels.npy").is_file() and any(
        p.name != "labels.npy" for p in root.glob("*.npy")
    )
    if per_severity and hendrycks:
        raise UserError(
            f"{root} holds both <corruption>_<severity>.npz files and the labels.npy layout; "
            "move one of them to its own folder"
        )
    if per_severity:
        return "per_severity"
    if hendrycks:
        return "hendrycks"
    raise UserError(
        f"{root} holds no shifted test sets: expected <corruption>_<severity>.npz files "
        "(ubdl_data/make_cifar_c.py) or <corruption>.npy with labels.npy (published CIFAR-10-C)"
    )


def load_shifted(
    path: str | Path,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> list[ShiftedSet]:
    """Load every shifted test set under `path`, sorted by (corruption, severity).

    Args:
        path: directory in either layout (see the module docstring).
        corruptions: keep only these corruption names (default: all found).
        severities: keep only these severities (default: all found).
        image_shape: expected `(H, W, C)`; a mismatch raises `UserError`.

    Returns:
        One `ShiftedSet` per (corruption, severity).
    """
    root = Path(path)
    layout = detect_layout(root)
    loader = _load_hendrycks if layout == "hendrycks" else _load_per_severity
    sets = [
        s
        for s in loader(root, corruptions)
        if (corruptions is None or s.corruption in corruptions)
        and (severities is None or s.severity in severities)
    ]
    if not sets:
        raise UserError(
            f"no shifted test set in {root} matches corruptions={corruptions} "
            f"severities={severities}; check the names with `ls {root}`"
        )
    if corruptions is not None:
        missing = sorted(set(corruptions) - {s.corruption for s in sets})
        if missing:
            raise UserError(f"corruptions {missing} are not in {root}; check the spelling")
    if image_shape is not None:
        for s in sets:
            if tuple(s.images.shape[1:]) != tuple(image_shape):
                raise UserError(
                    f"{s.name} in {root} has images of shape {tuple(s.images.shape[1:])} but the "
                    f"model expects {tuple(image_shape)}; pass the shifted version of --dataset"
                )
    return sorted(sets, key=lambda s: (s.corruption, s.severity))


def _as_images(array: np.ndarray, source: Path) -> np.ndarray:
    """Check dtype and rank, and give grey images a channel axis: `[N, H, W, C]` uint8."""
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise UserError(f"{source} holds an array of shape {array.shape}; expected [N, H, W(, C)]")
    if array.dtype != np.uint8:
        raise UserError(f"{source} holds {array.dtype} images; save them as uint8 in [0, 255]")
    return array


def _as_labels(array: np.ndarray, source: Path) -> np.ndarray:
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"{source} labels must be a 1-D integer array, got {array.dtype}")
    return array.astype(np.int64)


def _load_per_severity(root: Path, corruptions: Sequence[str] | None) -> Iterator[ShiftedSet]:
    files: dict[str, dict[int, Path]] = {}
    for p in root.glob("*.npz"):
        match = _PER_SEVERITY.match(p.name)
        if match and (corruptions is None or match["corruption"] in corruptions):
            files.setdefault(match["corruption"], {})[int(match["severity"])] = p
    for corruption, by_severity in files.items():
        loaded = {}
        for severity, p in by_severity.items():
            f = load_npz(p)
            if "data" not in f or "labels" not in f:
                raise UserError(f"{p} must hold the keys 'data' and 'labels', not {list(f)}")
            images, labels = _as_images(f["data"], p), _as_labels(f["labels"], p)
            if len(images) != len(labels):
                raise UserError(f"{p} holds {len(images)} images but {len(labels)} labels")
            loaded[severity] = (images, labels)
        n = len(loaded[1][0]) if 1 in loaded else None
        cumulative = n is not None and len(loaded) > 1
        cumulative = cumulative and all(len(im) == s * n for s, (im, _) in loaded.items())
        for severity, (images, labels) in loaded.items():
            if cumulative:  # upstream bug: <c>_s.npz held severities 1..s; keep block s
                images, labels = images[-n:], labels[-n:]
            yield ShiftedSet(corruption, severity, images, labels)


def _load_hendrycks(root: Path, corruptions: Sequence[str] | None) -> Iterator[ShiftedSet]:
    all_labels = _as_labels(load_npy(root / "labels.npy"), root / "labels.npy")
    for p in sorted(root.glob("*.npy")):
        if p.name == "labels.npy" or (corruptions is not None and p.stem not in corruptions):
            continue
        # A memory map: only the blocks that are scored get read (CIFAR-10-C is 150 MB a file).
        images = _as_images(load_npy(p, mmap=True), p)
        if len(images) % NUM_SEVERITIES:
            raise UserError(f"{p} holds {len(images)} images, not {NUM_SEVERITIES} equal blocks")
        n = len(images) // NUM_SEVERITIES
        if len(all_labels) not in (n, len(images)):
            raise UserError(
                f"labels.npy holds {len(all_labels)} labels but {p.name} needs {n} or {len(images)}"
            )
        for severity in range(1, NUM_SEVERITIES + 1):
            block = slice((severity - 1) * n, severity * n)
            labels = all_labels if len(all_labels) == n else all_labels[block]
            yield ShiftedSet(p.stem, severity, images[block], labels)
