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
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python ubdl_data/make_cifar_c.py`: import the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from swag import cli  # noqa: E402
from swag.errors import UserError  # noqa: E402
from swag.io import atomic_write_text, locked_directory, output_directory  # noqa: E402
from ubdl_data import _external, _generate  # noqa: E402
from ubdl_data.corruptions import CORRUPTIONS, get_corruption  # noqa: E402

SETTINGS_FILE = "make_cifar_c_settings.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datapath", required=True, help="torchvision root of the clean data")
    parser.add_argument("--savepath", required=True, help="folder for the corrupted sets")
    parser.add_argument("--dataset", default="CIFAR10", choices=list(_generate.DATASETS))
    parser.add_argument(
        "--corruptions", nargs="+", default=list(CORRUPTIONS), metavar="NAME",
        help="original names (gaussian_noise ...) or display names; default: all 19",
    )  # fmt: skip
    parser.add_argument(
        "--severities", nargs="+", type=cli.severity, default=list(_generate.SEVERITIES)
    )
    parser.add_argument("--workers", type=cli.positive_int, default=1, help="processes")
    parser.add_argument(
        "--seed", type=cli.non_negative_int, default=0, help="base seed of every generator"
    )
    parser.add_argument("--format", default="ubdl", choices=["ubdl", "hendrycks"])
    parser.add_argument(
        "--limit", type=cli.positive_int, default=None, help="only the first N test images"
    )
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[str]:
    """Validate the flags; return the canonical corruption names, in the original order."""
    names = {get_corruption(name).name for name in args.corruptions}
    if args.format == "hendrycks" and sorted(set(args.severities)) != list(_generate.SEVERITIES):
        raise UserError(
            "--format hendrycks stores all five severities per file; drop --severities."
        )
    if names & {"motion_blur", "snow"}:
        _external.check_imagemagick()
    if "frost" in names:
        _external.check_frost_textures()
    return [name for name in CORRUPTIONS if name in names]


def output_path(savepath: Path, fmt: str, name: str, severity: int) -> Path:
    return savepath / (f"{name}_{severity}.npz" if fmt == "ubdl" else f"{name}.npy")


def claim_savepath(savepath: Path, args: argparse.Namespace) -> None:
    """Sets already in --savepath are kept only if they were made with the same settings."""
    settings = {key: getattr(args, key) for key in ("dataset", "seed", "limit", "format")}
    record = savepath / SETTINGS_FILE
    if record.is_file():
        try:
            earlier = json.loads(record.read_text())
        except json.JSONDecodeError:
            earlier = None
        if earlier != settings:
            raise UserError(
                f"{savepath} holds sets made with other settings ({record.name}: {earlier}); "
                "pass the same --dataset --seed --limit --format, or choose another --savepath"
            )
    elif any(savepath.glob("*.np[yz]")):
        raise UserError(
            f"{savepath} holds .npz/.npy files of unknown origin; choose another --savepath"
        )
    atomic_write_text(record, json.dumps(settings, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = check_args(args)
    images, labels = _generate.load_test_set(args.dataset, args.datapath)
    savepath = output_directory(args.savepath, "--savepath")
    with locked_directory(savepath):
        claim_savepath(savepath, args)
        generate(args, names, images[: args.limit], labels[: args.limit], savepath)
    return 0


def generate(args, names: list[str], images, labels, savepath: Path) -> None:
    """Write every (corruption, severity) set that is not in `savepath` yet."""
    severities = sorted(set(args.severities))

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


if __name__ == "__main__":
    cli.run_main(main)
