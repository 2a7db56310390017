"""Lay out an offline MNIST-format dataset where torchvision looks for it.

Debian's `dataset-fashion-mnist` installs the four gzip idx files under
/usr/share/datasets/fashion-mnist. Their gzip bytes differ from the ones in torchvision's md5
table, so torchvision would try to download unless the *uncompressed* idx files already sit in
`<data_path>/fashionmnist/FashionMNIST/raw/`. This writes them there:

    python -m swag.prepare_data --source /usr/share/datasets/fashion-mnist --data_path data
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

from swag import cli, idx_format
from swag.data import dataset_root
from swag.errors import UserError
from swag.io import atomic_output


def prepare_mnist_format(source: Path, data_path: Path, dataset: str = "FashionMNIST") -> Path:
    """Decompress `<source>/*-ubyte.gz` into `<data_path>/<dataset lower>/<dataset>/raw/`."""
    raw = dataset_root(dataset, data_path) / dataset / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in idx_format.ALL_FILES:
        target = raw / name
        if target.is_file():
            continue
        compressed, plain = source / f"{name}.gz", source / name
        if not compressed.is_file() and not plain.is_file():
            raise UserError(
                f"{compressed} is missing; install Debian's dataset-fashion-mnist "
                "(apt-get install dataset-fashion-mnist) or pass --source <folder of idx files>"
            )
        with atomic_output(target) as out:
            opener = gzip.open(compressed, "rb") if compressed.is_file() else open(plain, "rb")
            with opener as stream:
                shutil.copyfileobj(stream, out)
    return raw


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--data_path", default="data")
    parser.add_argument("--dataset", default="FashionMNIST", choices=["FashionMNIST", "MNIST"])
    args = parser.parse_args(argv)
    try:
        raw = prepare_mnist_format(Path(args.source), Path(args.data_path), args.dataset)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.dataset} ready in {raw}")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
