"""The 19 corruptions: shapes, strength by severity, determinism, batching, and independent checks.

Inputs are real photographs (scikit-image's astronaut and chelsea) resized to 32x32. References
are the original per-image operations written out here with PIL, scikit-image, scipy and cv2.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from swag.errors import UserError
from ubdl_data import _ops
from ubdl_data.corruptions import CORRUPTIONS, get_corruption

skimage = pytest.importorskip("skimage")
cv2 = pytest.importorskip("cv2")

# Mean absolute change grows with severity for these (the parameters strengthen monotonically);
# motion blur 3 and 4 differ only in taps of weight < 1e-7, hence the tolerance.
MONOTONE = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur",
    "snow", "fog", "brightness", "contrast", "pixelate", "jpeg_compression", "speckle_noise",
    "gaussian_blur",
]  # fmt: skip
# The others, by their original parameters: (stronger, weaker) severity pairs that must hold.
ORDERED_PAIRS = {
    "glass_blur": [(4, 2), (5, 3)],  # two passes beat one at the same sigma
    "spatter": [(2, 1), (3, 2), (5, 4)],  # water 1..3, mud 4..5
    "saturate": [(2, 1), (4, 3), (5, 4)],  # x0.3 < x0.1 desaturation; 1.5 < 2 < 2.5
    "frost": [],  # texture weight grows as image weight shrinks: no order
    "elastic_transform": [],  # affine part shrinks as the elastic part grows: no order
}
TOLERANCE = 0.25  # grey levels of mean absolute change (8 draws averaged)


def photos(size: int = 32) -> np.ndarray:
    """Four uint8 RGB photographs `[4, size, size, 3]`."""
    from skimage.transform import resize

    astronaut, cat = skimage.data.astronaut(), skimage.data.chelsea()
    crops = [astronaut, cat, astronaut[:256, 128:384], cat[50:250, 150:350]]
    return np.stack(
        [(resize(c, (size, size), anti_aliasing=True) * 255).astype(np.uint8) for c in crops]
    )


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return photos()


def rngs(n: int, seed: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, i]) for i in range(n)]


def test_registry_has_the_19_original_names_in_order():
    assert list(CORRUPTIONS)[:3] == ["gaussian_noise", "shot_noise", "impulse_noise"]
    assert list(CORRUPTIONS)[-4:] == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert len(CORRUPTIONS) == 19
    assert get_corruption("Glass Blur") is get_corruption("glass_blur")
    assert get_corruption("JPEG").name == "jpeg_compression"
    with pytest.raises(UserError, match="choose from"):
        get_corruption("rain")


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_severity_changes_the_image_by_its_strength(images, name):
    fn = CORRUPTIONS[name].fn
    change = []
    for severity in range(1, 6):
        outs = [fn(images, severity, rngs(len(images), seed)) for seed in (0, 1)]
        for out in outs:
            assert out.dtype == np.uint8 and out.shape == images.shape
            assert out.std() > 10  # not blank or saturated
        change.append(np.mean([np.abs(o.astype(float) - images).mean() for o in outs]))
    assert min(change) > 0.5, change
    if name in MONOTONE:
        assert all(b >= a - TOLERANCE for a, b in zip(change, change[1:], strict=False)), change
        assert change[4] > change[0] + 2, change
    else:
        for strong, weak in ORDERED_PAIRS[name]:
            assert change[strong - 1] > change[weak - 1] + TOLERANCE, change


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_batched_equals_per_image_and_is_deterministic(images, name):
    fn = CORRUPTIONS[name].fn
    for severity in (3, 5):
        batched = fn(images, severity, rngs(len(images)))
        single = np.stack(
            [fn(img, severity, r) for img, r in zip(images, rngs(len(images)), strict=True)]
        )
        np.testing.assert_array_equal(batched, single)
        np.testing.assert_array_equal(batched, fn(images, severity, rngs(len(images))))
        if CORRUPTIONS[name].random:
            assert not np.array_equal(batched, fn(images, severity, rngs(len(images), seed=1)))


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_greyscale_images(name):
    grey = photos(28)[..., 1]
    fn = CORRUPTIONS[name].fn
    out = fn(grey, 4, rngs(len(grey)))
    assert out.shape == grey.shape and out.dtype == np.uint8
    assert np.abs(out.astype(float) - grey).mean() > 0.5
    np.testing.assert_array_equal(fn(grey[..., None], 4, rngs(len(grey)))[..., 0], out)


def test_greyscale_brightness_is_a_shift_of_the_grey_level():
    grey = photos(28)[..., 0]
    expected = (np.clip(grey / 255.0 + 0.2, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(CORRUPTIONS["brightness"].fn(grey, 4), expected)


def test_bad_inputs_raise_user_errors(images):
    fn = CORRUPTIONS["gaussian_noise"].fn
    with pytest.raises(UserError, match="uint8"):
        fn(images.astype(np.float32), 1, np.random.default_rng(0))
    with pytest.raises(UserError, match="at least 28"):
        fn(images[:, :16, :16], 1, np.random.default_rng(0))
    with pytest.raises(UserError, match="1..5"):
        fn(images, 6, np.random.default_rng(0))
    with pytest.raises(UserError, match="rng="):
        fn(images, 1)
    with pytest.raises(UserError, match="one per image"):
        fn(images, 1, rngs(2))


# /////////////// against the original per-image operations ///////////////


def literal_glass_loop(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The original loop, statement for statement (a tuple swap of numpy row views)."""
    x = x.copy()
    size = x.shape[0]
    for step in offsets:
        for hi, h in enumerate(range(size - 1, 1, -1)):
            for wi, w in enumerate(range(size - 1, 1, -1)):
                dx, dy = step[hi, wi]
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return x


@pytest.mark.parametrize("size", [32, 28])
def test_glass_shuffle_equals_the_sequential_loop(size):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(6, size, size, 3), dtype=np.uint8)
    offsets = rng.integers(-1, 1, size=(6, 2, size - 2, size - 2, 2))
    expected = np.stack([literal_glass_loop(x[i], offsets[i]) for i in range(6)])
    np.testing.assert_array_equal(_ops.glass_shuffle(x, offsets), expected)


def assert_close_bytes(got: np.ndarray, expected: np.ndarray, max_fraction: float) -> None:
    """Equal up to one grey level (truncation of floats equal to ~1e-15) on a small fraction."""
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() <= max_fraction, (diff.max(), (diff > 0).mean())


def test_brightness_and_saturate_equal_skimage_hsv(images):
    from skimage.color import hsv2rgb, rgb2hsv

    for severity, (shift, (mult, add)) in enumerate(
        zip(
            [0.05, 0.1, 0.15, 0.2, 0.3],
            [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
            strict=True,
        ),
        start=1,
    ):
        hsv = rgb2hsv(images / 255.0)
        hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
        expected = (np.clip(hsv2rgb(hsv), 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(CORRUPTIONS["brightness"].fn(images, severity), expected)
        hsv = rgb2hsv(images / 255.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * mult + add, 0, 1)
        expected = (np.clip(hsv2rgb(hsv), 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(CORRUPTIONS["saturate"].fn(images, severity), expected)


def test_contrast_equals_the_channel_mean_formula(images):
    for severity, c in enumerate([0.75, 0.5, 0.4, 0.3, 0.15], start=1):
        for image, out in zip(images, CORRUPTIONS["contrast"].fn(images, severity), strict=True):
            x = image / 255.0
            means = x.reshape(-1, 3).mean(axis=0)
            expected = (np.clip((x - means) * c + means, 0, 1) * 255).astype(np.uint8)
            assert_close_bytes(out, expected, max_fraction=0.001)


def test_pixelate_and_jpeg_equal_pil(images):
    from PIL import Image

    for severity in range(1, 6):
        factor = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
        quality = [80, 65, 58, 50, 40][severity - 1]
        pixelated = CORRUPTIONS["pixelate"].fn(images, severity)
        jpeg = CORRUPTIONS["jpeg_compression"].fn(images, severity)
        for i, image in enumerate(images):
            small = Image.fromarray(image).resize((int(32 * factor),) * 2, Image.Resampling.BOX)
            np.testing.assert_array_equal(
                pixelated[i], np.asarray(small.resize((32, 32), Image.Resampling.BOX))
            )
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=quality)
            np.testing.assert_array_equal(jpeg[i], np.asarray(Image.open(buffer)))


def test_defocus_blur_equals_cv2_filter2d_and_scipy(images):
    from scipy.ndimage import correlate

    params = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)]
    for severity, (radius, alias_blur) in enumerate(params, start=1):
        grid = np.arange(-8, 9)
        xx, yy = np.meshgrid(grid, grid)
        disk = np.array(xx**2 + yy**2 <= radius**2, dtype=np.float32)
        kernel = cv2.GaussianBlur(disk / disk.sum(), ksize=(3, 3), sigmaX=alias_blur)
        got = CORRUPTIONS["defocus_blur"].fn(images, severity)
        for image, out in zip(images, got, strict=True):
            x = image / 255.0
            by_cv2 = np.stack([cv2.filter2D(x[..., k], -1, kernel) for k in range(3)], -1)
            by_scipy = np.stack([correlate(x[..., k], kernel, mode="mirror") for k in range(3)], -1)
            for reference in (by_cv2, by_scipy):
                expected = (np.clip(reference, 0, 1) * 255).astype(np.uint8)
                assert_close_bytes(out, expected, max_fraction=0.002)


def test_gaussian_blur_equals_scipy(images):
    from scipy.ndimage import gaussian_filter

    for severity, sigma in enumerate([0.4, 0.6, 0.7, 0.8, 1], start=1):
        got = CORRUPTIONS["gaussian_blur"].fn(images, severity)
        for image, out in zip(images, got, strict=True):
            x = image / 255.0
            blurred = np.stack(
                [gaussian_filter(x[..., k], sigma, mode="nearest", truncate=4.0) for k in range(3)],
                axis=-1,
            )
            assert_close_bytes(out, (np.clip(blurred, 0, 1) * 255).astype(np.uint8), 0.001)


@pytest.mark.parametrize("size", [32, 28])
def test_zoom_blur_equals_scipy_zoom(size):
    from scipy.ndimage import zoom

    images = photos(size)
    for severity, end in enumerate([1.06, 1.11, 1.16, 1.21, 1.26], start=1):
        got = CORRUPTIONS["zoom_blur"].fn(images, severity)
        zooms = np.arange(1, end, 0.01)
        for image, out in zip(images, got, strict=True):
            x = (image / 255.0).astype(np.float32)
            total = np.zeros_like(x)
            for z in zooms:
                crop = int(np.ceil(size / z))
                top = (size - crop) // 2
                zoomed = zoom(x[top : top + crop, top : top + crop], (z, z, 1), order=1)
                trim = (zoomed.shape[0] - size) // 2
                total += zoomed[trim : trim + size, trim : trim + size]
            expected = np.clip((x + total) / (len(zooms) + 1), 0, 1) * 255
            # float64 sum of the zooms instead of a float32 running sum: rare one-level flips
            assert_close_bytes(out, expected.astype(np.uint8), max_fraction=0.003)


def test_impulse_noise_draws_like_skimage_random_noise(images):
    from skimage.util import random_noise

    for severity, amount in enumerate([0.01, 0.02, 0.03, 0.05, 0.07], start=1):
        got = CORRUPTIONS["impulse_noise"].fn(images, severity, rngs(len(images)))
        for image, out, r in zip(images, got, rngs(len(images)), strict=True):
            noisy = random_noise(image / 255.0, mode="s&p", amount=amount, rng=r)
            np.testing.assert_array_equal(out, (np.clip(noisy, 0, 1) * 255).astype(np.uint8))


def test_raw_imagemagick_route_equals_the_original_png_route(images):
    pytest.importorskip("wand.image")
    from PIL import Image
    from wand.image import Image as WandImage

    from ubdl_data._external import magick_motion_blur

    rng = np.random.default_rng(0)
    for image in [*images, images[0, ..., :1]]:
        for radius, sigma in [(6, 1), (9, 2.5), (14, 12)]:
            angle = rng.uniform(-135, 45)
            buffer = io.BytesIO()
            Image.fromarray(image.squeeze()).save(buffer, format="PNG")
            with WandImage(blob=buffer.getvalue()) as wand_image:
                wand_image.motion_blur(radius=radius, sigma=sigma, angle=angle)
                png = wand_image.make_blob("png")
            decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            expected = decoded[..., ::-1] if decoded.ndim == 3 else decoded[..., None]
            if image.shape[-1] == 3 and expected.shape[-1] == 1:  # grey PNG written for grey
                expected = np.repeat(expected, 3, axis=-1)
            np.testing.assert_array_equal(magick_motion_blur(image, radius, sigma, angle), expected)


def test_frost_adds_a_texture_crop(images):
    from ubdl_data._external import frost_textures

    textures = frost_textures(32)
    assert len(textures) == 6 and all(t.shape[2] == 3 for t in textures)
    out = CORRUPTIONS["frost"].fn(images[:1], 1, [np.random.default_rng(3)])[0]
    r = np.random.default_rng(3)
    texture = textures[r.integers(5)]
    top, left = r.integers(0, texture.shape[0] - 32), r.integers(0, texture.shape[1] - 32)
    crop = texture[top : top + 32, left : left + 32]
    expected = np.clip(1 * images[0] + 0.2 * crop, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
