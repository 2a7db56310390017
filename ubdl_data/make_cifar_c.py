"""Build CIFAR-10-C (or CIFAR-100-C, MNIST-C, Fashion-MNIST-C): 19 corruptions x 5 severities.

The original `ubdl_data/make_cifar_c.py` with the same --datapath/--savepath, plus --dataset,
--corruptions, --severities, --workers, --seed, --format and --limit (docs/original_code.md):

    python ubdl_data/make_cifar_c.py --datapath data/cifar10 --savepath data/CIFAR-10-C --workers 2

`--format ubdl` writes `<corruption>_<severity>.npz` (keys `data`, `labels`) holding exactly that
severity's N images (the original accumulated severities 1..s in the file for s);
`--format hendrycks` writes the published layout, `<corruption>.npy` of 5 N images in severity
blocks plus `labels.npy` (5 N). Finished files are skipped on a re-run; every file is written
atomically. Image i uses the generator `default_rng([seed, crc32(name), severity, i])`, so the
bytes do not depend on --workers, --limit or the subset asked for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python ubdl_data/make_cifar_c.py`: import the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from swag import cli  # noqa: E402
from swag.errors import UserError  # noqa: E402
from ubdl_data import _external, _generate  # noqa: E402
from ubdl_data.corruptions import CORRUPTIONS, get_corruption  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datapath", required=True, help="torchvision root of the clean data")
    parser.add_argument("--savepath", required=True, help="folder for the corrupted sets")
    parser.add_argument("--dataset", default="CIFAR10", choices=list(_generate.DATASETS))
    parser.add_argument(
        "--corruptions", nargs="+", default=list(CORRUPTIONS), metavar="NAME",
        help="original names (gaussian_noise ...) or display names; default: all 19",
    )  # fmt: skip
    parser.add_argument("--severities", nargs="+", type=int, default=list(_generate.SEVERITIES))
    parser.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of every generator")
    parser.add_argument("--format", default="ubdl", choices=["ubdl", "hendrycks"])
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[str]:
    """Validate the flags; return the canonical corruption names, in the original order."""
    names = {get_corruption(name).name for name in args.corruptions}
    if bad := sorted(set(args.severities) - set(_generate.SEVERITIES)):
        raise UserError(f"--severities must be in 1..5, not {bad}.")
    if args.format == "hendrycks" and sorted(set(args.severities)) != list(_generate.SEVERITIES):
        raise UserError(
            "--format hendrycks stores all five severities per file; drop --severities."
        )
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, not {args.workers}.")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, not {args.limit}.")
    if names & {"motion_blur", "snow"}:
        _external.check_imagemagick()
    if "frost" in names:
        _external.check_frost_textures()
    return [name for name in CORRUPTIONS if name in names]


def output_path(savepath: Path, fmt: str, name: str, severity: int) -> Path:
    return savepath / (f"{name}_{severity}.npz" if fmt == "ubdl" else f"{name}.npy")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = check_args(args)
    severities = sorted(set(args.severities))
    images, labels = _generate.load_test_set(args.dataset, args.datapath)
    images, labels = images[: args.limit], labels[: args.limit]
    savepath = Path(args.savepath)
    savepath.mkdir(parents=True, exist_ok=True)

    pairs = [(name, severity) for name in names for severity in severities]
    todo = [p for p in pairs if not output_path(savepath, args.format, *p).exists()]
    print(
        f"{args.dataset}: {len(images)} test images, {len(pairs)} (corruption, severity) sets, "
        f"{len(pairs) - len(todo)} already in {savepath}, {args.workers} worker(s)"
    )
    if args.format == "hendrycks" and not (savepath / "labels.npy").exists():
        tiled = np.tile(labels, len(severities))
        _generate.save_atomic(savepath / "labels.npy", lambda f: np.save(f, tiled))

    blocks: list[np.ndarray] = []
    progress = tqdm(total=len(pairs), initial=len(pairs) - len(todo), unit="set")
    for name, severity, data in _generate.generate(images, todo, args.seed, args.workers):
        progress.set_postfix_str(f"{name} {severity}")
        path = output_path(savepath, args.format, name, severity)
        if args.format == "ubdl":
            _generate.save_atomic(path, lambda f, d=data: np.savez(f, data=d, labels=labels))
        else:
            blocks.append(data)
            if severity == severities[-1]:
                stacked = np.concatenate(blocks)
                _generate.save_atomic(path, lambda f, d=stacked: np.save(f, d))
                blocks = []
        progress.update()
    progress.close()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
