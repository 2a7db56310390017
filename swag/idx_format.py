"""Reader and writer for the idx files of MNIST-format datasets (MNIST, Fashion-MNIST).

Reading them here rather than through `torchvision.datasets` keeps torchvision (about 0.2 GiB
of resident memory) out of the training processes that only need the tensors.

Layout (LeCun's MNIST page): a big-endian header of two zero bytes, a type byte (0x08 =
uint8), the number of dimensions d, then d big-endian int32 sizes, then the data row-major.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from swag.errors import UserError
from swag.io import atomic_write_bytes

UINT8_TYPE = 0x08
# torchvision's layout under `<root>`: <root>/<class name>/raw/<file>
FILES = {  # train split?: (images, labels)
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = (*FILES[True], *FILES[False])


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array stored in one idx file, shape taken from its header (one read, writable).

    Raises:
        UserError: the file is not a uint8 idx file or is shorter or longer than its header says.
    """
    with open(path, "rb") as stream:
        magic = stream.read(4)
        if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != UINT8_TYPE:
            raise UserError(f"{path} is not a uint8 idx file; delete it and run `make data` again")
        sizes = stream.read(4 * magic[3])
        shape = tuple(int(size) for size in np.frombuffer(sizes[: len(sizes) // 4 * 4], ">i4"))
        values = np.fromfile(stream, dtype=np.uint8)
    if len(shape) != magic[3] or values.size != int(np.prod(shape)):
        raise UserError(
            f"{path} is truncated or corrupt (header says {shape}); delete it and run `make data` "
            "again"
        )
    return values.reshape(shape)


def split_files(root: Path, dataset: str, train: bool) -> tuple[Path, Path] | None:
    """(images file, labels file) of one split under torchvision's layout, or None if absent."""
    raw = Path(root) / dataset / "raw"
    images, labels = (raw / name for name in FILES[train])
    return (images, labels) if images.is_file() and labels.is_file() else None


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array (1 to 3 dimensions) to `path` as an uncompressed idx file, atomically.

    The inverse of `read_idx`: header (0, 0, 0x08, ndim), the sizes as big-endian int32, then
    the bytes row-major.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UINT8_TYPE, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    atomic_write_bytes(path, header + array.tobytes())
