"""Reader for the idx files of MNIST-format datasets (MNIST, Fashion-MNIST).

Reading them here rather than through `torchvision.datasets` keeps torchvision (about 0.2 GiB
of resident memory) out of the training processes that only need the tensors.

Layout (LeCun's MNIST page): a big-endian header of two zero bytes, a type byte (0x08 =
uint8), the number of dimensions d, then d big-endian int32 sizes, then the data row-major.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from swag.errors import UserError

UINT8_TYPE = 0x08
# torchvision's layout under `<root>`: <root>/<class name>/raw/<file>
FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array stored in one idx file, shape taken from its header.

    Raises:
        UserError: the file is not a uint8 idx file or is shorter or longer than its header says.
    """
    payload = Path(path).read_bytes()
    if len(payload) < 4 or payload[:2] != b"\0\0" or payload[2] != UINT8_TYPE:
        raise UserError(f"{path} is not a uint8 idx file; delete it and run `make data` again")
    ndim = payload[3]
    header_size = 4 + 4 * ndim
    shape = tuple(int(size) for size in np.frombuffer(payload[4:header_size], dtype=">i4"))
    if len(shape) != ndim or len(payload) - header_size != int(np.prod(shape)):
        raise UserError(
            f"{path} is truncated or corrupt (header says {shape}); delete it and run `make data` "
            "again"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header_size).reshape(shape)


def split_files(root: Path, dataset: str, train: bool) -> tuple[Path, Path] | None:
    """(images file, labels file) of one split under torchvision's layout, or None if absent."""
    raw = Path(root) / dataset / "raw"
    images, labels = (raw / name for name in FILES[train])
    return (images, labels) if images.is_file() and labels.is_file() else None
