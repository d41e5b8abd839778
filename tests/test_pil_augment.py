"""The ImageNet views: every op against the official definition written here with Pillow, the arithmetic ops
also against plain NumPy, RandomResizedCrop against torchvision's algorithm written out, Cutout against the
official ImageDraw rule, and the composed views against their recipe."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")  # pil_augment shares the op table with the torch CIFAR module
PIL = pytest.importorskip("PIL")
from PIL import Image, ImageDraw, ImageEnhance, ImageOps  # noqa: E402

from harness.data.pil_augment import (  # noqa: E402
    PIL_OPS,
    center_crop,
    cutout,
    eval_view,
    load_rgb,
    rand_augment,
    random_flip,
    random_resized_crop,
    random_resized_crop_box,
    resize_shorter_side,
    strong_view,
    weak_view,
)

OPS = {op.name: op for op in PIL_OPS}
GREY = (125, 123, 114)


def _image(seed: int, size: tuple[int, int] = (37, 29)) -> Image.Image:
    """A random RGB image, not square (catches width/height swaps)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------- the official definitions, with Pillow


def _official_affine(img: Image.Image, coefficients: tuple) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coefficients)


OFFICIAL = {  # the official ImageNet code's op functions, as it writes them
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Identity": lambda img, v: img,
    "Posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
    "Rotate": lambda img, v: img.rotate(v),
    "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "ShearX": lambda img, v: _official_affine(img, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda img, v: _official_affine(img, (1, 0, 0, v, 1, 0)),
    "Solarize": lambda img, v: ImageOps.solarize(img, v),
    "TranslateX": lambda img, v: _official_affine(img, (1, 0, v * img.size[0], 0, 1, 0)),
    "TranslateY": lambda img, v: _official_affine(img, (1, 0, 0, 0, 1, v * img.size[1])),
}
OFFICIAL_RANGES = [  # the official augment_list(), in order
    ("AutoContrast", 0, 1),
    ("Brightness", 0.05, 0.95),
    ("Color", 0.05, 0.95),
    ("Contrast", 0.05, 0.95),
    ("Equalize", 0, 1),
    ("Identity", 0, 1),
    ("Posterize", 4, 8),
    ("Rotate", -30, 30),
    ("Sharpness", 0.05, 0.95),
    ("ShearX", -0.3, 0.3),
    ("ShearY", -0.3, 0.3),
    ("Solarize", 0, 256),
    ("TranslateX", -0.3, 0.3),
    ("TranslateY", -0.3, 0.3),
]


def test_op_table_is_the_official_list() -> None:
    assert [(op.name, op.low, op.high) for op in PIL_OPS] == OFFICIAL_RANGES


@pytest.mark.parametrize("name", [name for name, _, _ in OFFICIAL_RANGES])
def test_op_matches_the_official_pillow_call(name: str) -> None:
    op = OPS[name]
    for seed, fraction in enumerate((0.0, 0.13, 0.5, 0.77, 1.0)):
        v = op.low + (op.high - op.low) * fraction
        img = _image(seed)
        expected = _arr(OFFICIAL[name](img, v))
        got = op.apply(img, v)
        assert got.mode == "RGB" and got.size == img.size
        np.testing.assert_array_equal(_arr(got), expected, err_msg=f"{name} at v={v}")
        np.testing.assert_array_equal(_arr(img), _arr(_image(seed)))  # the input is left alone


# ------------------------------------------------------------------ the arithmetic ops, in plain NumPy


def _blend_reference(degenerate: np.ndarray, x: np.ndarray, v: float) -> np.ndarray:
    """Pillow's blend: ``d + v * (x - d)`` in C float (float32), truncated, clipped to [0, 255]."""
    d, x32 = degenerate.astype(np.float32), x.astype(np.float32)
    out = d + np.float32(v) * (x32 - d)
    return np.clip(np.trunc(out), 0, 255).astype(np.uint8)


def _luma(x: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma in Pillow's 16-bit fixed point."""
    r, g, b = (x[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _nearest_affine_reference(x: np.ndarray, a: float, b: float, c: float, d: float, e: float, f: float):
    """Pillow AFFINE with NEAREST: output pixel centre (i + .5, j + .5) reads the input pixel at
    (a*px + b*py + c, d*px + e*py + f), truncated; outside the image is black."""
    h, w = x.shape[:2]
    out = np.zeros_like(x)
    for j in range(h):
        for i in range(w):
            px, py = i + 0.5, j + 0.5
            xin, yin = a * px + b * py + c, d * px + e * py + f
            if 0 <= xin < w and 0 <= yin < h:
                out[j, i] = x[int(yin), int(xin)]
    return out


NUMPY_REFERENCES = {
    "Identity": lambda x, v: x,
    "Posterize": lambda x, v: x & np.uint8((0xFF << (8 - max(1, int(v)))) & 0xFF),
    "Solarize": lambda x, v: np.where(x >= v, 255 - x, x).astype(np.uint8),
    "Brightness": lambda x, v: _blend_reference(np.zeros_like(x), x, v),
    "Color": lambda x, v: _blend_reference(np.repeat(_luma(x)[..., None], 3, axis=2), x, v),
    "Contrast": lambda x, v: _blend_reference(np.full_like(x, int(_luma(x).mean() + 0.5)), x, v),
    "ShearX": lambda x, v: _nearest_affine_reference(x, 1, v, 0, 0, 1, 0),
    "ShearY": lambda x, v: _nearest_affine_reference(x, 1, 0, 0, v, 1, 0),
    "TranslateX": lambda x, v: _nearest_affine_reference(x, 1, 0, v * x.shape[1], 0, 1, 0),
    "TranslateY": lambda x, v: _nearest_affine_reference(x, 1, 0, 0, 0, 1, v * x.shape[0]),
}


@pytest.mark.parametrize("name", sorted(NUMPY_REFERENCES))
def test_op_matches_a_numpy_reference(name: str) -> None:
    op = OPS[name]
    rng = np.random.default_rng(11)
    for seed in range(4):
        v = float(op.low + (op.high - op.low) * rng.random())
        img = _image(100 + seed)
        np.testing.assert_array_equal(
            _arr(op.apply(img, v)), NUMPY_REFERENCES[name](_arr(img), v), err_msg=f"v={v}"
        )


def test_solarize_threshold_is_inclusive_and_fractional() -> None:
    img = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)[..., None].repeat(3, axis=2))
    out = _arr(OPS["Solarize"].apply(img, 100.5))[..., 0].ravel()
    assert out[100] == 100 and out[101] == 255 - 101
    out = _arr(OPS["Solarize"].apply(img, 100.0))[..., 0].ravel()
    assert out[99] == 99 and out[100] == 255 - 100


# -------------------------------------------------------------------------------------- RandomResizedCrop


def _torchvision_crop_reference(width: int, height: int, rng: np.random.Generator, scale, ratio):
    """torchvision's RandomResizedCrop.get_params in plain words, drawing in the documented order."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 600),
    height=st.integers(1, 600),
    seed=st.integers(0, 2**32 - 1),
)
def test_crop_box_is_torchvisions(width: int, height: int, seed: int) -> None:
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    got = random_resized_crop_box(width, height, np.random.default_rng(seed))
    assert got == _torchvision_crop_reference(width, height, np.random.default_rng(seed), scale, ratio)
    top, left, h, w = got
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0


def test_crop_box_fallbacks_are_central() -> None:
    rng = np.random.default_rng(0)
    never_fits = (2.0, 3.0)  # an area larger than the image: all 10 tries fail
    assert random_resized_crop_box(100, 10, rng, scale=never_fits) == (0, 43, 10, 13)  # too wide: 4/3
    assert random_resized_crop_box(10, 100, rng, scale=never_fits) == (43, 0, 13, 10)  # too tall: 3/4
    assert random_resized_crop_box(50, 40, rng, scale=never_fits) == (0, 0, 40, 50)  # in range: whole


def test_crop_box_statistics() -> None:
    """Accepted boxes: area fraction in [0.08, 1], aspect in [3/4, 4/3] up to the rounding of the sides."""
    rng = np.random.default_rng(1)
    fractions = []
    for _ in range(2000):
        top, left, h, w = random_resized_crop_box(500, 375, rng)
        fractions.append(h * w / (500 * 375))
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    fractions = np.array(fractions)
    assert fractions.min() >= 0.075 and fractions.max() <= 1.0
    assert abs(np.median(fractions) - 0.5) < 0.1  # roughly uniform in area (large boxes retry more)


def test_random_resized_crop_is_the_box_resized_bilinearly() -> None:
    img = _image(3, (80, 60))
    top, left, h, w = random_resized_crop_box(80, 60, np.random.default_rng(5))
    expected = img.crop((left, top, left + w, top + h)).resize((32, 32), Image.BILINEAR)
    got = random_resized_crop(img, 32, np.random.default_rng(5))
    np.testing.assert_array_equal(_arr(got), _arr(expected))


def test_flip_draws_one_uniform() -> None:
    img = _image(4)
    for seed in range(20):
        flips = np.random.default_rng(seed).random() < 0.5
        got = _arr(random_flip(img, np.random.default_rng(seed)))
        np.testing.assert_array_equal(got, _arr(img)[:, ::-1] if flips else _arr(img))


# ---------------------------------------------------------------------------------------------- Cutout


def _legacy_uniform(low: float, rng: np.random.Generator) -> float:
    """``np.random.uniform(low)`` (legacy API, ``high = 1``): ``low + (1 - low) * U`` even for ``low > 1``,
    where ``Generator.uniform`` refuses ``high < low``; checked against the legacy API below."""
    return low + (1.0 - low) * rng.random()


def test_legacy_uniform_with_one_argument_is_low_plus_range_times_u() -> None:
    for seed in range(5):
        legacy = np.random.RandomState(seed)  # noqa: NPY002 (the legacy API the official code calls)
        draws = legacy.uniform(224, size=100)
        u = np.random.RandomState(seed).random_sample(100)  # noqa: NPY002
        np.testing.assert_array_equal(draws, 224 + (1.0 - 224) * u)
        assert draws.min() > 1.0 and draws.max() <= 224.0


def _official_cutout(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The official Cutout: a fraction U(0, 0.5) of the width, the centre from np.random.uniform(side)
    (low = side, high = 1), the rectangle drawn by ImageDraw (far edge included)."""
    v = rng.random() * 0.5
    if v <= 0.0:
        return img
    v = v * img.size[0]
    w, h = img.size
    x0, y0 = _legacy_uniform(w, rng), _legacy_uniform(h, rng)
    x0, y0 = int(max(0, x0 - v / 2.0)), int(max(0, y0 - v / 2.0))
    x1, y1 = min(w, x0 + v), min(h, y0 + v)
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), GREY)
    return img


@pytest.mark.parametrize("size", [(32, 32), (37, 29), (224, 224)])
def test_cutout_matches_the_official_rule(size: tuple[int, int]) -> None:
    touched_far_edge = False
    for seed in range(60):
        img = _image(seed, size)
        x = _arr(img)
        got = cutout(x, np.random.default_rng(seed))
        np.testing.assert_array_equal(got, _arr(_official_cutout(img, np.random.default_rng(seed))))
        np.testing.assert_array_equal(x, _arr(_image(seed, size)))  # the input array is left alone
        hole = np.argwhere((got != x).any(axis=2))
        if hole.size:
            assert hole[:, 1].max() - hole[:, 1].min() + 1 <= int(0.5 * size[0]) + 1
            touched_far_edge |= hole[:, 1].max() == size[0] - 1 or hole[:, 0].max() == size[1] - 1
    assert touched_far_edge  # the clipped-at-the-border case was exercised


def test_cutout_centre_never_lies_in_the_first_column() -> None:
    """The official draw puts the centre in (1, W]: a tiny hole never lands on column 0."""
    width = 8
    x = np.zeros((width, width, 3), dtype=np.uint8)
    columns = set()
    for seed in range(400):
        rng = np.random.default_rng(seed)
        got = cutout(x, rng)
        cols = np.flatnonzero((got != 0).any(axis=(0, 2)))
        if cols.size == 1:  # a one-pixel-wide hole sits at its centre's column
            columns.add(int(cols[0]))
    assert 0 not in columns and columns  # and a hole of side < 1 still fills one pixel (PIL's far edge)


# ----------------------------------------------------------------------------------------- RandAugment


def test_rand_augment_applies_two_drawn_ops_in_order() -> None:
    img = _image(8, (40, 30))
    for seed in range(40):
        rng = np.random.default_rng(seed)
        expected = img
        for k in rng.integers(0, 14, size=2):  # with replacement, as random.choices
            name, low, high = OFFICIAL_RANGES[int(k)]
            expected = OFFICIAL[name](expected, low + float(high - low) * rng.random())
        got = rand_augment(img, np.random.default_rng(seed))
        np.testing.assert_array_equal(_arr(got), _arr(expected))


# ----------------------------------------------------------------------------------------------- views


def test_weak_and_strong_views_follow_the_recipe() -> None:
    img = _image(9, (90, 70))
    for seed in range(10):
        rng = np.random.default_rng(seed)
        crop = random_resized_crop(img, 48, rng)
        weak = random_flip(crop, rng)
        np.testing.assert_array_equal(
            weak_view(img, np.random.default_rng(seed), 48), _arr(weak).transpose(2, 0, 1)
        )

        rng = np.random.default_rng(seed)
        x = random_flip(random_resized_crop(img, 48, rng), rng)
        for k in rng.integers(0, 14, size=2):
            name, low, high = OFFICIAL_RANGES[int(k)]
            x = OFFICIAL[name](x, low + float(high - low) * rng.random())
        expected = _arr(_official_cutout(x, rng)).transpose(2, 0, 1)
        got = strong_view(img, np.random.default_rng(seed), 48)
        assert got.dtype == np.uint8 and got.shape == (3, 48, 48) and got.flags.writeable
        np.testing.assert_array_equal(got, expected)


def test_views_are_deterministic_under_a_seed() -> None:
    img = _image(10, (64, 48))
    for view in (weak_view, strong_view):
        a = view(img, np.random.default_rng(7), 32)
        b = view(img, np.random.default_rng(7), 32)
        c = view(img, np.random.default_rng(8), 32)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_eval_view_is_resize_shorter_side_then_centre_crop() -> None:
    img = _image(12, (500, 375))
    assert resize_shorter_side(img, 256).size == (341, 256)  # int(256 * 500 / 375) = 341
    assert resize_shorter_side(_image(12, (375, 500)), 256).size == (256, 341)
    resized = img.resize((341, 256), Image.BILINEAR)
    # Offsets round half to even: (341 - 224) / 2 = 58.5 -> 58; (256 - 224) / 2 = 16.
    expected = _arr(resized.crop((58, 16, 58 + 224, 16 + 224))).transpose(2, 0, 1)
    np.testing.assert_array_equal(eval_view(img), expected)
    assert center_crop(Image.new("RGB", (227, 226)), 224).getbbox() is None  # offsets 2 (1.5 -> 2) and 1
    small = eval_view(img, resize_size=72, size=64)
    assert small.shape == (3, 64, 64)
    with pytest.raises(ValueError, match=r"resize_size \(60\) must be at least the crop size \(64\)"):
        eval_view(img, resize_size=60, size=64)


def test_center_crop_offsets() -> None:
    ramp = np.tile(np.arange(227, dtype=np.uint8), (226, 1))
    img = Image.fromarray(np.repeat(ramp[..., None], 3, axis=2))
    out = _arr(center_crop(img, 224))
    assert out[0, 0, 0] == 2  # round(1.5) = 2: left offset 2 (half to even)
    assert out.shape == (224, 224, 3)


def test_load_rgb_converts_every_mode(tmp_path) -> None:
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    for mode, ext in (("L", ".jpg"), ("P", ".png"), ("RGBA", ".png"), ("RGB", ".bmp")):
        path = tmp_path / f"img_{mode}{ext}"
        grey.convert(mode).save(path)
        img = load_rgb(path)
        assert img.mode == "RGB" and img.size == (8, 8)
        with Image.open(path) as reference:
            np.testing.assert_array_equal(_arr(img), _arr(reference.convert("RGB")))


def test_rng_is_the_only_source_of_randomness() -> None:
    img = _image(13, (50, 40))
    rng = np.random.default_rng(3)
    snapshot = copy.deepcopy(rng)
    np.random.seed(1)  # noqa: NPY002 (the legacy global state must not matter)
    a = strong_view(img, rng, 32)
    np.random.seed(2)  # noqa: NPY002
    b = strong_view(img, snapshot, 32)
    np.testing.assert_array_equal(a, b)
