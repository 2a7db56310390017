"""Array helpers for the corruptions: batching, per-image randomness, blurs, zoom, fractal noise.

Every helper works on a batch `x [N, H, W, C]` and gives, image by image, the numbers the
original per-image code (Hendrycks' `make_cifar_c.py`) gives for the same random draws.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from swag.errors import UserError

MIN_SIZE = 28  # px; smaller images make the 32 px parameters meaningless

RngLike = np.random.Generator | Sequence[np.random.Generator] | None


def to_batch(images: np.ndarray) -> np.ndarray:
    """View `images` as a uint8 batch `[N, S, S, C]`, C in {1, 3}.

    Accepts one image `[S, S, 3]`, `[S, S, 1]`, `[S, S]` or a batch `[N, S, S, 3]`,
    `[N, S, S, 1]`, `[N, S, S]`; a 3-d array whose last axis is not 1 or 3 is a greyscale batch
    (unambiguous because S >= 28).
    """
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise UserError(f"corruptions take uint8 images in [0, 255], not {x.dtype}; convert first.")
    if x.ndim == 2:
        x = x[None, :, :, None]
    elif x.ndim == 3:
        x = x[None] if x.shape[-1] in (1, 3) else x[..., None]
    elif x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise UserError(f"images of shape {x.shape} are not HWC/NHWC (C = 1 or 3) or (N)HW.")
    if x.shape[1] != x.shape[2] or x.shape[1] < MIN_SIZE:
        raise UserError(f"corruptions need square images of at least {MIN_SIZE} px, not {x.shape}.")
    return x


def from_batch(batch: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Cast a float batch in [0, 255] to uint8 by truncation, as the original `np.uint8(...)`."""
    return batch.astype(np.uint8).reshape(np.shape(like))


def image_rngs(rng: RngLike, n: int) -> list[np.random.Generator]:
    """One generator per image: `rng` itself for one image, `rng.spawn(n)`, or the given list."""
    if rng is None:
        raise UserError("this corruption is random: pass rng=np.random.default_rng(seed).")
    if isinstance(rng, np.random.Generator):
        return [rng] if n == 1 else rng.spawn(n)
    rngs = list(rng)
    if len(rngs) != n:
        raise UserError(f"got {len(rngs)} generators for {n} images; pass one per image.")
    return rngs


def draw(rngs: list[np.random.Generator], method: str, *args, **kwargs) -> np.ndarray:
    """Stack `getattr(r, method)(*args, **kwargs)` over the per-image generators."""
    return np.stack([getattr(r, method)(*args, **kwargs) for r in rngs])


def gaussian(x: np.ndarray, sigma: float, *, mode: str = "nearest", truncate: float = 4.0):
    """skimage.filters.gaussian over the two spatial axes of `x [N, H, W(, C)]`, per image.

    Same call as the original per-image `gaussian(img, sigma, channel_axis=-1)` (sigma 0 on the
    batch and channel axes, where scipy does not filter at all), so the values are identical.
    """
    from skimage.filters import gaussian as sk_gaussian

    sigmas = (0, sigma, sigma) + (0,) * (x.ndim - 3)
    return sk_gaussian(x, sigma=sigmas, mode=mode, truncate=truncate, preserve_range=True)


@functools.lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The original anti-aliased disk: a 17x17 float32 disk blurred by a 3x3 Gaussian.

    Returned cropped to its non-zero support (the zero taps add nothing), shape [k, k].
    """
    import cv2

    grid = np.arange(-8, 8 + 1)  # radius <= 8 for every severity
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array(xx**2 + yy**2 <= radius**2, dtype=np.float32)
    disk /= np.sum(disk)
    kernel = cv2.GaussianBlur(disk, ksize=(3, 3), sigmaX=alias_blur)
    rows = np.flatnonzero(kernel.any(axis=1))
    half = max(8 - rows[0], rows[-1] - 8)
    return kernel[8 - half : 9 + half, 8 - half : 9 + half]


def correlate_reflect101(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """cv2.filter2D (correlation, BORDER_REFLECT_101) of every image/channel of `x [N,H,W,C]`."""
    k = kernel.shape[0]
    half = k // 2
    padded = np.pad(x, ((0, 0), (half, half), (half, half), (0, 0)), mode="reflect")
    out = np.zeros(x.shape, dtype=np.float64)
    height, width = x.shape[1:3]
    for i in range(k):
        for j in range(k):
            out += float(kernel[i, j]) * padded[:, i : i + height, j : j + width]
    return out


@functools.lru_cache(maxsize=256)
def _zoom_taps(size: int, zoom: float) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Crop start, crop size and linear-interpolation taps of `clipped_zoom` along one axis."""
    crop = int(np.ceil(size / zoom))
    top = (size - crop) // 2
    out_len = int(round(crop * zoom))  # scipy.ndimage.zoom's output length
    trim = (out_len - size) // 2
    step = (crop - 1) / (out_len - 1) if out_len > 1 else 0.0  # scipy's grid_mode=False map
    coords = np.arange(trim, trim + size) * step
    lo = np.minimum(np.floor(coords).astype(np.int64), crop - 1)
    frac = coords - lo
    hi = np.minimum(lo + 1, crop - 1)  # only reached with weight 0
    return top, crop, lo, hi, frac


def clipped_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
    """Centre crop of `x [N, S, S, ...]` by 1/zoom, bilinearly zoomed back to S x S.

    Equal to the original `scipy.ndimage.zoom(crop, (zoom, zoom, 1), order=1)` then trim, up
    to float64 round-off (the result is cast back to `x.dtype` as scipy does).
    """
    size = x.shape[1]
    top, crop, lo, hi, frac = _zoom_taps(size, float(zoom))
    patch = x[:, top : top + crop, top : top + crop].astype(np.float64)
    shape = (1, -1, 1) + (1,) * (x.ndim - 3)
    w = frac.reshape(shape)
    rows = patch[:, lo] * (1.0 - w) + patch[:, hi] * w
    w = frac.reshape((1, 1, -1) + (1,) * (x.ndim - 3))
    out = rows[:, :, lo] * (1.0 - w) + rows[:, :, hi] * w
    return out.astype(x.dtype)


def plasma_fractal(rngs: list[np.random.Generator], mapsize: int, wibbledecay: float):
    """Diamond-square height maps in [0, 1], one per generator, shape [N, mapsize, mapsize].

    The original's algorithm and draw order: each midpoint is the mean of its four neighbours
    plus wibble * U(-wibble, wibble), with wibble = 100 divided by `wibbledecay` per level.
    """
    n = len(rngs)
    maps = np.zeros((n, mapsize, mapsize), dtype=np.float64)
    step = mapsize
    wibble = 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * draw(rngs, "uniform", -wibble, wibble, total.shape[1:])

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        squares = corners + np.roll(corners, shift=-1, axis=1)
        squares += np.roll(squares, shift=-1, axis=2)
        maps[:, half:mapsize:step, half:mapsize:step] = wibbled_mean(squares)
        centres = maps[:, half:mapsize:step, half:mapsize:step]
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        left = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=2))
        maps[:, 0:mapsize:step, half:mapsize:step] = wibbled_mean(left)
        top = (centres + np.roll(centres, 1, axis=2)) + (corners + np.roll(corners, -1, axis=1))
        maps[:, half:mapsize:step, 0:mapsize:step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def rgb_to_luma(x: np.ndarray) -> np.ndarray:
    """uint8 RGB `[..., 3]` to `[..., 1]` exactly as PIL's `convert("L")` (ITU-R 601-2)."""
    r, g, b = (x[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]


def glass_shuffle(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The original glass-blur "swaps", vectorised over images and pixels.

    The original visits h = S-1..2 (outer), w = S-1..2 (inner) and runs
    `x[h, w], x[h', w'] = x[h', w'], x[h, w]` with (h', w') = (h + dy, w + dx), dx, dy in
    {-1, 0}. On an HWC numpy array `x[h, w]` is a view, so the second assignment writes back the
    value just copied: the statement is a copy `x[h, w] = x[h', w']`, not a swap. (h', w') lies
    up/left, so it is visited later and still holds its value from before the pass: one pass is
    `x_new[h, w] = x_old[h + dy, w + dx]` for every visited pixel at once. tests/test_corruptions.py
    checks this against the literal sequential loop.

    Args:
        x: images `[N, S, S, C]`.
        offsets: `[N, passes, S-2, S-2, 2]` integers in {-1, 0}, `(dx, dy)` in visiting order
            (index 0 is h = S-1, resp. w = S-1).

    Returns:
        The shuffled images, same shape and dtype.
    """
    n, size = x.shape[:2]
    batch = np.arange(n)[:, None, None]
    grid = np.arange(2, size)
    for step in offsets.transpose(1, 0, 2, 3, 4)[:, :, ::-1, ::-1]:
        rows = grid[None, :, None] + step[..., 1]
        cols = grid[None, None, :] + step[..., 0]
        x = x.copy()
        x[:, 2:, 2:] = x[batch, rows, cols]
    return x


@functools.lru_cache(maxsize=16)
def zoom_sum_operator(size: int, zooms: tuple[float, ...]) -> np.ndarray:
    """`sum_z clipped_zoom(., z)` as one matrix on flattened images, `[S*S, S*S]` float64.

    `clipped_zoom(x, z) = A_z x A_z^T` per channel, A_z `[S, S]` holding the crop and the
    bilinear taps, so the sum over zooms is `sum_z kron(A_z, A_z)` acting on `vec(x)`.
    """
    total = np.zeros((size * size, size * size))
    for zoom in zooms:
        top, _, lo, hi, frac = _zoom_taps(size, zoom)
        taps = np.zeros((size, size))
        np.add.at(taps, (np.arange(size), top + lo), 1.0 - frac)
        np.add.at(taps, (np.arange(size), top + hi), frac)
        total += np.kron(taps, taps)
    return total


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hsv without its boolean indexing: the same float operations, `[..., 3]`."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(-1)
    delta = np.ptp(rgb, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = np.where(delta == 0.0, 0.0, delta / value)
        hue = np.where(
            b == value,
            4.0 + (r - g) / delta,
            np.where(g == value, 2.0 + (b - r) / delta, (g - b) / delta),
        )
        hue = np.where(delta == 0.0, 0.0, (hue / 6.0) % 1.0)
    return np.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """skimage.color.hsv2rgb with the same float operations, `[..., 3]`."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6)
    f = h * 6 - sector
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = sector.astype(np.uint8) % 6
    table = np.stack([v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q]).reshape(3, 6, *h.shape)
    return np.stack([np.choose(sector, table[k]) for k in range(3)], axis=-1)
