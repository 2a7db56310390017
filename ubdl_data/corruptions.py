"""The 19 CIFAR-10-C corruptions (Hendrycks & Dietterich, 2019) as pure batched functions.

Each corruption is `fn(images, severity, rng=None) -> uint8 images` with

- `images`: uint8, one image `[S, S, 3]` / `[S, S]` / `[S, S, 1]` or a batch `[N, S, S, 3]` /
  `[N, S, S]` / `[N, S, S, 1]`, S >= 28; the output has the input's shape;
- `severity`: 1..5, selecting the original CIFAR constants (`PARAMS[name][severity - 1]`);
- `rng`: a `numpy.random.Generator` (one image; a batch spawns one child per image) or a
  sequence of one generator per image. Image i's output depends only on image i and its
  generator, so a batch equals the images one by one.

The maths, constants and float precisions are those of the original `corruptions.py` (a copy of
Hendrycks' CIFAR code), including the final float -> uint8 cast by truncation. Differences:
explicit generators instead of the global `np.random`; frost textures from the
`imagecorruptions` package; greyscale support (colour-dependent corruptions run on the grey
image copied to RGB and return PIL's luma of the result); size scaling for S != 32 (elastic
`IMSIZE = S`, frost texture scale 0.2 * S / 32, fractal map size = next power of two >= S).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from swag.errors import UserError
from ubdl_data import _external, _ops


@dataclass(frozen=True)
class Corruption:
    """A registered corruption: original name, display name, function, whether random."""

    name: str
    display_name: str
    fn: Callable[..., np.ndarray]
    random: bool


CORRUPTIONS: dict[str, Corruption] = {}


def _corruption(display_name: str, params: list, *, random: bool, rgb: bool = False):
    """Register `kernel(x [N,S,S,C] uint8, c, rngs) -> float in [0, 255] | uint8` as a corruption.

    `rgb=True`: the kernel needs colour; greyscale images are copied to RGB, corrupted, cast
    and converted back with PIL's luma.
    """

    def wrap(kernel):
        @functools.wraps(kernel)
        def corrupt(images: np.ndarray, severity: int, rng: _ops.RngLike = None) -> np.ndarray:
            batch = _ops.to_batch(images)
            if severity not in (1, 2, 3, 4, 5):
                raise UserError(f"severity must be 1..5, not {severity!r}.")
            rngs = _ops.image_rngs(rng, len(batch)) if random else None
            grey = batch.shape[-1] == 1
            if grey and rgb:
                out = kernel(np.repeat(batch, 3, axis=-1), params[severity - 1], rngs)
                return _ops.from_batch(_ops.rgb_to_luma(out.astype(np.uint8)), images)
            return _ops.from_batch(kernel(batch, params[severity - 1], rngs), images)

        CORRUPTIONS[kernel.__name__] = Corruption(kernel.__name__, display_name, corrupt, random)
        corrupt.params = params
        return corrupt

    return wrap


def get_corruption(name: str) -> Corruption:
    """Look a corruption up by original name (`glass_blur`) or display name (`Glass Blur`)."""
    for corruption in CORRUPTIONS.values():
        if name in (corruption.name, corruption.display_name):
            return corruption
    raise UserError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}.")


# /////////////// noise ///////////////


@_corruption("Gaussian Noise", [0.04, 0.06, 0.08, 0.09, 0.10], random=True)
def gaussian_noise(x, c, rngs):
    """x + N(0, c^2) on [0, 1]."""
    x = x / 255.0
    return np.clip(x + _ops.draw(rngs, "normal", size=x.shape[1:], scale=c), 0, 1) * 255


@_corruption("Shot Noise", [500, 250, 100, 75, 50], random=True)
def shot_noise(x, c, rngs):
    """Poisson(c x) / c on [0, 1]."""
    x = x / 255.0
    counts = np.stack([r.poisson(image * c) for r, image in zip(rngs, x, strict=True)])
    return np.clip(counts / c, 0, 1) * 255


@_corruption("Impulse Noise", [0.01, 0.02, 0.03, 0.05, 0.07], random=True)
def impulse_noise(x, c, rngs):
    """Salt and pepper: each value flipped with probability c, to 1 or 0 with equal odds.

    The draws of `skimage.util.random_noise(mode="s&p", amount=c, rng=r)` (two uniform arrays).
    """
    x = x / 255.0
    flipped = _ops.draw(rngs, "random", x.shape[1:]) <= c
    salted = _ops.draw(rngs, "random", x.shape[1:]) <= 0.5
    x[flipped & salted] = 1
    x[flipped & ~salted] = 0
    return np.clip(x, 0, 1) * 255


@_corruption("Speckle Noise", [0.06, 0.1, 0.12, 0.16, 0.2], random=True)
def speckle_noise(x, c, rngs):
    """x + x N(0, c^2) on [0, 1]."""
    x = x / 255.0
    return np.clip(x + x * _ops.draw(rngs, "normal", size=x.shape[1:], scale=c), 0, 1) * 255


# /////////////// blur ///////////////


@_corruption(
    "Defocus Blur", [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)], random=False
)
def defocus_blur(x, c, rngs):
    """Correlation with an anti-aliased disk (radius, alias blur) = c, reflect-101 borders."""
    kernel = _ops.disk_kernel(*c)
    return np.clip(_ops.correlate_reflect101(x / 255.0, kernel), 0, 1) * 255


@_corruption(
    "Glass Blur", [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)], random=True
)
def glass_blur(x, c, rngs):
    """Gaussian blur (sigma), local pixel copies over (iterations) passes, Gaussian blur again.

    Offsets are `integers(-max_delta, max_delta)`, i.e. in {-1, 0} (asymmetric, inherited);
    see `_ops.glass_shuffle` for why the original's "swap" is a copy.
    """
    sigma, max_delta, passes = c
    x = (_ops.gaussian(x / 255.0, sigma) * 255).astype(np.uint8)
    inner = x.shape[1] - 2 * max_delta
    offsets = _ops.draw(rngs, "integers", -max_delta, max_delta, size=(passes, inner, inner, 2))
    x = _ops.glass_shuffle(x, offsets)
    return np.clip(_ops.gaussian(x / 255.0, sigma), 0, 1) * 255


@_corruption("Motion Blur", [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)], random=True)
def motion_blur(x, c, rngs):
    """ImageMagick motion blur (radius, sigma) = c at an angle ~ U(-45, 45) degrees."""
    return np.stack(
        [
            _external.magick_motion_blur(img, *c, r.uniform(-45, 45))
            for img, r in zip(x, rngs, strict=True)
        ]
    )


@_corruption("Zoom Blur", [1.06, 1.11, 1.16, 1.21, 1.26], random=False)
def zoom_blur(x, c, rngs):
    """Mean of x and its centre zooms by arange(1, c, 0.01), in float32 as the original.

    The sum of the zooms is one matrix product (`_ops.zoom_sum_operator`) in float64; the
    original summed float32 zooms one by one, so about 1 byte in 10^4 differs by one level.
    """
    zooms = np.arange(1, c, 0.01)
    n, size, _, channels = x.shape
    operator = _ops.zoom_sum_operator(size, tuple(zooms.tolist()))
    x = (x / 255.0).astype(np.float32)
    flat = x.transpose(0, 3, 1, 2).reshape(n * channels, size * size).astype(np.float64)
    out = (flat @ operator.T).astype(np.float32)
    out = out.reshape(n, channels, size, size).transpose(0, 2, 3, 1)
    x = (x + out) / (len(zooms) + 1)
    return np.clip(x, 0, 1) * 255


@_corruption("Gaussian Blur", [0.4, 0.6, 0.7, 0.8, 1], random=False)
def gaussian_blur(x, c, rngs):
    """skimage Gaussian blur with sigma = c (mode "nearest", truncate 4)."""
    return np.clip(_ops.gaussian(x / 255.0, c), 0, 1) * 255


# /////////////// weather ///////////////

_SNOW = [
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
]


@_corruption("Snow", _SNOW, random=True, rgb=True)
def snow(x, c, rngs):
    """Thresholded, zoomed N(loc, scale) flakes, motion-blurred at U(-135, -45) degrees.

    c = (loc, scale, zoom, threshold, blur radius, blur sigma, mix); the image is first mixed
    with max(x, 1.5 grey(x) + 0.5), then the flakes and their 180-degree rotation are added.
    """
    import cv2

    loc, scale, zoom, threshold, radius, sigma, mix = c
    n, size = x.shape[:2]
    x = x.astype(np.float32) / 255.0
    layer = _ops.draw(rngs, "normal", size=(size, size), loc=loc, scale=scale)
    layer = _ops.clipped_zoom(layer[..., None], zoom)
    layer[layer < threshold] = 0
    flakes = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    flakes = np.stack(
        [
            _external.magick_motion_blur(img, radius, sigma, r.uniform(-135, -45))
            for img, r in zip(flakes, rngs, strict=True)
        ]
    )
    flakes = flakes / 255.0
    grey = cv2.cvtColor(x.reshape(n * size, size, 3), cv2.COLOR_RGB2GRAY)
    grey = grey.reshape(n, size, size, 1)
    x = mix * x + (1 - mix) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + flakes + np.rot90(flakes, k=2, axes=(1, 2)), 0, 1) * 255


@_corruption(
    "Frost", [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)], random=True, rgb=True
)
def frost(x, c, rngs):
    """a x + b (random S x S crop of one of the first five frost textures), (a, b) = c.

    As the original: texture index `integers(5)` (frost6 is never used) and crop corners
    `integers(0, dim - S)` (the last possible corner is never drawn).
    """
    size = x.shape[1]
    textures = _external.frost_textures(size)
    out = np.empty(x.shape, dtype=np.float64)
    for i, r in enumerate(rngs):
        texture = textures[r.integers(5)]
        top = r.integers(0, texture.shape[0] - size)
        left = r.integers(0, texture.shape[1] - size)
        out[i] = c[0] * x[i] + c[1] * texture[top : top + size, left : left + size]
    return np.clip(out, 0, 255)


@_corruption("Fog", [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], random=True)
def fog(x, c, rngs):
    """x + strength * plasma fractal(wibble decay), rescaled by max / (max + strength)."""
    strength, decay = c
    size = x.shape[1]
    x = x / 255.0
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    mapsize = 1 << (size - 1).bit_length()  # 32 for 17..32 px
    x = x + strength * _ops.plasma_fractal(rngs, mapsize, decay)[:, :size, :size, None]
    return np.clip(x * max_val / (max_val + strength), 0, 1) * 255


_SPATTER = [
    (0.62, 0.1, 0.7, 0.7, 0.5, 0),
    (0.65, 0.1, 0.8, 0.7, 0.5, 0),
    (0.65, 0.3, 1, 0.69, 0.5, 0),
    (0.65, 0.1, 0.7, 0.69, 0.6, 1),
    (0.65, 0.1, 0.5, 0.68, 0.6, 1),
]


def _water_mask(liquid: np.ndarray) -> np.ndarray:
    """The original's embossed water mask (float32 `[S, S]`) for one liquid layer."""
    import cv2

    # float -> uint8 as the original's cast did on x86: wrap-around above 255
    liquid = (liquid * 255).astype(np.int64).astype(np.uint8)
    dist = 255 - cv2.Canny(liquid, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)
    dist = cv2.filter2D(dist, cv2.CV_8U, emboss)
    dist = cv2.blur(dist, (3, 3)).astype(np.float32)
    return liquid * dist


@_corruption("Spatter", _SPATTER, random=True, rgb=True)
def spatter(x, c, rngs):
    """Water (pale turquoise, embossed) or mud (brown) drops from a thresholded N(loc, scale).

    c = (loc, scale, sigma, threshold, intensity, mode). A water layer with no drop at all
    (all below threshold) leaves the image unchanged; the original divided by zero there.
    """
    loc, scale, sigma, threshold, intensity, mode = c
    size = x.shape[1]
    x = x.astype(np.float32) / 255.0
    liquid = _ops.gaussian(
        _ops.draw(rngs, "normal", size=(size, size), loc=loc, scale=scale), sigma
    )
    liquid[liquid < threshold] = 0
    if mode == 0:
        mask = np.stack([_water_mask(layer) for layer in liquid])
        peak = mask.max(axis=(1, 2), keepdims=True)
        mask = np.divide(mask, peak, out=np.zeros_like(mask), where=peak > 0) * np.float32(
            intensity
        )
        colour = np.array([175, 238, 238], dtype=np.float32) / np.float32(255)
        return np.clip(x + mask[..., None] * colour, 0, 1) * 255
    mask = _ops.gaussian(np.where(liquid > threshold, 1, 0).astype(np.float32), intensity)
    mask[mask < 0.8] = 0
    colour = np.array([63, 42, 20], dtype=np.float32) / np.float32(255)
    return np.clip(x * (1 - mask[..., None]) + colour * mask[..., None], 0, 1) * 255


# /////////////// digital ///////////////


@_corruption("Brightness", [0.05, 0.1, 0.15, 0.2, 0.3], random=False, rgb=True)
def brightness(x, c, rngs):
    """HSV value + c (skimage.color's HSV formulas)."""
    hsv = _ops.rgb_to_hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(_ops.hsv_to_rgb(hsv), 0, 1) * 255


@_corruption("Contrast", [0.75, 0.5, 0.4, 0.3, 0.15], random=False)
def contrast(x, c, rngs):
    """(x - per-channel mean) * c + mean."""
    x = x / 255.0
    means = np.mean(x, axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


_ELASTIC = [
    (0, 0, 0.08),
    (0.05, 0.2, 0.07),
    (0.08, 0.06, 0.06),
    (0.1, 0.04, 0.05),
    (0.1, 0.03, 0.03),
]


@_corruption("Elastic", _ELASTIC, random=True)
def elastic_transform(x, c, rngs):
    """Random affine warp, then a smoothed random displacement field (Simard et al., 2003).

    c = (alpha, sigma, affine) in units of the image size S (IMSIZE = 32 in the original):
    corner points move by U(-affine S, affine S); displacements are alpha S times a Gaussian
    (sigma S, reflect, truncate 3) smoothing of U(-1, 1) noise; bilinear resampling, reflect.
    """
    import cv2
    from scipy.ndimage import map_coordinates

    n, size, _, channels = x.shape
    alpha, sigma, affine = (size * v for v in c)
    x = x.astype(np.float32) / 255.0
    centre = np.float32((size, size)) // 2
    square = size // 3
    pts1 = np.float32([centre + square, [centre[0] + square, centre[1] - square], centre - square])
    for i, r in enumerate(rngs):
        pts2 = pts1 + r.uniform(-affine, affine, size=pts1.shape).astype(np.float32)
        warp = cv2.getAffineTransform(pts1, pts2)
        x[i] = cv2.warpAffine(x[i], warp, (size, size), borderMode=cv2.BORDER_REFLECT_101).reshape(
            size, size, channels
        )
    shifts = []
    for _ in range(2):
        noise = _ops.draw(rngs, "uniform", -1, 1, size=(size, size))
        shifts.append(
            (_ops.gaussian(noise, sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
        )
    grid = np.arange(size)
    coords = [
        np.broadcast_to(np.arange(n, dtype=np.float64)[:, None, None], (n, size, size)),
        grid[None, :, None] + shifts[1],
        grid[None, None, :] + shifts[0],
    ]
    out = np.stack(
        [map_coordinates(x[..., k], coords, order=1, mode="reflect") for k in range(channels)],
        axis=-1,
    )
    return np.clip(out, 0, 1) * 255


@_corruption("Pixelate", [0.95, 0.9, 0.85, 0.75, 0.65], random=False)
def pixelate(x, c, rngs):
    """PIL box downsampling to int(S c) px and box upsampling back."""
    from PIL import Image

    size = x.shape[1]
    small = (int(size * c), int(size * c))
    out = np.empty_like(x)
    for i, image in enumerate(x):
        pil = Image.fromarray(image[..., 0] if x.shape[-1] == 1 else image)
        pil = pil.resize(small, Image.Resampling.BOX).resize((size, size), Image.Resampling.BOX)
        out[i] = np.asarray(pil).reshape(out.shape[1:])
    return out


@_corruption("JPEG", [80, 65, 58, 50, 40], random=False)
def jpeg_compression(x, c, rngs):
    """PIL JPEG round trip at quality c."""
    from PIL import Image

    out = np.empty_like(x)
    for i, image in enumerate(x):
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if x.shape[-1] == 1 else image).save(
            buffer, "JPEG", quality=c
        )
        out[i] = np.asarray(Image.open(buffer)).reshape(out.shape[1:])
    return out


@_corruption(
    "Saturate", [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)], random=False, rgb=True
)
def saturate(x, c, rngs):
    """HSV saturation * c[0] + c[1] (skimage.color's HSV formulas)."""
    hsv = _ops.rgb_to_hsv(x / 255.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return np.clip(_ops.hsv_to_rgb(hsv), 0, 1) * 255


ORIGINAL_ORDER = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform",
    "pixelate", "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate",
)  # fmt: skip
CORRUPTIONS = {name: CORRUPTIONS[name] for name in ORIGINAL_ORDER}
