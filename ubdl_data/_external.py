"""The two external resources: ImageMagick (motion blur) and the frost textures.

Both are loaded once per process. ImageMagick is told to use one thread before it is loaded:
on 32 px images its OpenMP threads cost more than they save, and `make_cifar_c.py
--workers` already runs one process per core.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np

from swag.errors import UserError

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


@functools.lru_cache(maxsize=1)
def _wand_image_class():
    os.environ.setdefault("MAGICK_THREAD_LIMIT", "1")
    try:
        from wand.image import Image
    except ImportError as exc:
        raise UserError(
            "motion_blur and snow need ImageMagick's MagickWand library and the `wand` package: "
            "install them (apt-get install libmagickwand-dev; pip install wand)."
        ) from exc
    return Image


def check_imagemagick() -> None:
    """Raise UserError now, rather than mid-run, if ImageMagick cannot be loaded."""
    _wand_image_class()


def magick_motion_blur(image: np.ndarray, radius: float, sigma: float, angle: float):
    """ImageMagick's MagickMotionBlurImage on one uint8 image `[H, W, C]`, C in {1, 3}.

    The original sent a PNG through Wand and decoded the PNG it wrote; raw pixels give the
    same result without the two PNG codecs: ImageMagick's 8-bit PNG writer keeps the integer
    part of quantum/257, which is what we take from the 16-bit raw export (checked against the
    PNG route in the tests).

    Args:
        image: uint8 `[H, W, C]`.
        radius, sigma: blur length and Gaussian width in pixels.
        angle: direction in degrees.

    Returns:
        uint8 `[H, W, C]`.
    """
    image_class = _wand_image_class()
    height, width, channels = image.shape
    pixel_format = "rgb" if channels == 3 else "gray"
    blob = np.ascontiguousarray(image).tobytes()
    with image_class(blob=blob, format=pixel_format, width=width, height=height, depth=8) as im:
        im.motion_blur(radius=radius, sigma=sigma, angle=angle)
        im.depth = 16
        quanta = np.frombuffer(im.make_blob(pixel_format), dtype=np.uint16)
    return (quanta // 257).astype(np.uint8).reshape(height, width, channels)


def check_frost_textures() -> None:
    """Raise UserError now, rather than mid-run, if the frost textures cannot be found."""
    _frost_folder()


def _frost_folder() -> Path:
    # find_spec does not run the package (imagecorruptions 1.1.2 fails to import without
    # pkg_resources); we only need its data files.
    spec = importlib.util.find_spec("imagecorruptions")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if all((Path(folder) / "frost" / name).is_file() for name in FROST_FILES):
            return Path(folder) / "frost"
    raise UserError(
        "frost needs the frost textures shipped by the imagecorruptions package: "
        "pip install imagecorruptions."
    )


@functools.lru_cache(maxsize=8)
def frost_textures(size: int) -> tuple[np.ndarray, ...]:
    """The six frost images as uint8 RGB, resized by 0.2 * size / 32 (0.2 at 32 px).

    Same textures and same `cv2.resize(..., fx=0.2, fy=0.2)` (bilinear) as the original, which
    read them from the current directory for every image.
    """
    import cv2

    scale = 0.2 * size / 32
    textures = []
    for name in FROST_FILES:
        bgr = cv2.imread(str(_frost_folder() / name))
        bgr = cv2.resize(bgr, (0, 0), fx=scale, fy=scale)
        textures.append(np.ascontiguousarray(bgr[..., ::-1]))
    return tuple(textures)
