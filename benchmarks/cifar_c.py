"""Speed of the CIFAR-10-C corruptions: ms per image per (corruption, severity), projected total.

    python benchmarks/cifar_c.py --images 500 --workers 2

Times `ubdl_data._generate.corrupt_images` (the generator's per-chunk call, per-image seeding
included) in this process on 32x32 crops of scikit-image's sample photographs, or on the real
test images with --datapath. The projected total is the sum over the 19 x 5 sets of ms per image
x 10,000 images / --workers (perfect scaling; `make_cifar_c.py` adds file writing). With
--parallel it also times `make_cifar_c.py`'s worker pool end to end on the same images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

from ubdl_data import _generate  # noqa: E402
from ubdl_data.corruptions import CORRUPTIONS  # noqa: E402

ORIGINAL_MS = 135.0  # original code, all 19 x 5 per clean image, on the project's 2 cores
FULL = 10_000  # CIFAR-10 test images


def sample_images(n: int, seed: int = 0) -> np.ndarray:
    """n uint8 32x32 RGB crops of scikit-image's colour sample photographs, [n, 32, 32, 3]."""
    import skimage.data
    from skimage.transform import rescale

    rng = np.random.default_rng(seed)
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    photos = [(rescale(p, 0.25, channel_axis=-1) * 255).astype(np.uint8) for p in photos]
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        top, left = (rng.integers(0, d - 32) for d in photo.shape[:2])
        crops.append(photo[top : top + 32, left : left + 32])
    return np.stack(crops)


def time_sets(images: np.ndarray, names: list[str], repeats: int) -> dict[tuple[str, int], float]:
    """Best-of-`repeats` ms per image for each (corruption, severity)."""
    ms = {}
    for name in names:
        for severity in _generate.SEVERITIES:
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                _generate.corrupt_images(images, name, severity, seed=0)
                best = min(best, time.perf_counter() - start)
            ms[name, severity] = 1e3 * best / len(images)
    return ms


def time_parallel(images: np.ndarray, names: list[str], workers: int) -> float:
    """Wall seconds of make_cifar_c's generation loop (all severities) over `images`."""
    jobs = [(name, severity) for name in names for severity in _generate.SEVERITIES]
    with tempfile.TemporaryDirectory():
        start = time.perf_counter()
        for _ in _generate.generate(images, jobs, seed=0, workers=workers):
            pass
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500, help="images per timing")
    parser.add_argument("--workers", type=int, default=2, help="processes for the projection")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS))
    parser.add_argument("--datapath", default=None, help="use real CIFAR-10 test images")
    parser.add_argument("--parallel", action="store_true", help="also time the worker pool")
    args = parser.parse_args(argv)
    if args.datapath:
        images = _generate.load_test_set("CIFAR10", args.datapath)[0][: args.images]
    else:
        images = sample_images(args.images)
    ms = time_sets(images, args.corruptions, args.repeats)
    rows = []
    for name in args.corruptions:
        per = [ms[name, s] for s in _generate.SEVERITIES]
        rows.append([name, *per, sum(per)])
    total_ms = sum(ms.values())
    rows.append(["total", *(sum(r[s] for r in rows) for s in range(1, 6)), total_ms])
    print(f"ms per image, {len(images)} images, 1 process")
    print(tabulate(rows, ["corruption", "s1", "s2", "s3", "s4", "s5", "sum"], floatfmt=".3f"))
    projected = total_ms * FULL / 1e3 / args.workers
    original = ORIGINAL_MS * FULL / 1e3
    print(
        f"projected {FULL} images x {len(args.corruptions)} x 5 with {args.workers} workers: "
        f"{projected:.0f} s ({projected / 60:.1f} min); original all 19 x 5: "
        f"{original / 60:.1f} min single process ({original / projected:.1f}x)"
    )
    if args.parallel:
        wall = time_parallel(images, args.corruptions, args.workers)
        scaled = wall * FULL / len(images)
        print(
            f"worker pool, {args.workers} workers: {wall:.1f} s for {len(images)} images, "
            f"scaled to {FULL}: {scaled:.0f} s ({scaled / 60:.1f} min)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
