"""Augmentation outputs pinned bit for bit on the CPU: SHA-256 of the views, of ``rand_augment``, of
``cutout`` and of every RandAugment op for fixed inputs, seeds and magnitudes.

The digests were produced by the code as it stood before the batched RandAugment rewrite; a
restructuring that keeps these tests passing gives the same images. Regenerate a digest only for a
change that alters the images on purpose, in its own commit that says why (``python -m
tests.test_augment_pinned`` prints the current ones). Changed on purpose since: ``cutout-*`` and
``strong-*``, when Cutout took MLKD's size and centre rule.

Pinned with torch 2.13 (CPU build) on x86-64 with AVX-512. The geometric ops go through ``affine_grid``
(a BLAS ``bmm``) and, for Rotate, vectorized ``cos``/``sin``: a CPU or library that rounds those
differently could move a nearest-pixel tie, and then only the geometric digests (and those built on
them) would change.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from harness.data.augment import (  # noqa: E402
    RANDAUGMENT_OPS,
    cutout,
    eval_view,
    rand_augment,
    random_crop_flip,
    strong_view,
    weak_view,
)

BATCH = 64


def _images() -> torch.Tensor:
    """Uniform noise, plus a dark low-contrast quarter (AutoContrast/Equalize then have work to do) and
    one flat image (their identity case)."""
    x = np.random.default_rng(2024).integers(0, 256, size=(BATCH, 3, 32, 32), dtype=np.uint8)
    x[:16] = x[:16] // 5 + 30
    x[16] = 200
    return torch.as_tensor(x)


def _digest(t: torch.Tensor) -> str:
    # dtype and shape are part of the digest: a float64 or reshaped result must not pass.
    header = f"{t.dtype}{tuple(t.shape)}".encode()
    return hashlib.sha256(header + t.contiguous().numpy().tobytes()).hexdigest()[:32]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _op_magnitudes(op) -> torch.Tensor:
    """Per-sample magnitudes over the op's whole range, both ends included."""
    v = np.random.default_rng(7).uniform(op.low, op.high, BATCH).astype(np.float32)
    v[0], v[1] = op.low, op.high
    return torch.as_tensor(v)


def outputs() -> dict[str, torch.Tensor]:
    """Everything that is pinned, by name."""
    x = _images()
    out = {"eval": eval_view(x)}
    for seed in (0, 1, 2):
        out[f"weak-{seed}"] = weak_view(x, _gen(seed))
        out[f"strong-{seed}"] = strong_view(x, _gen(seed))
        out[f"crop_flip-{seed}"] = random_crop_flip(x, _gen(seed))
        out[f"rand_augment-{seed}"] = rand_augment(x, _gen(seed))
        out[f"cutout-{seed}"] = cutout(x, _gen(seed))
    out["rand_augment-3ops"] = rand_augment(x, _gen(5), num_ops=3)
    for op in RANDAUGMENT_OPS:
        out[f"op-{op.name}"] = op(x, _op_magnitudes(op))
    return out


PINNED = {
    "crop_flip-0": "63b4fe71c4299e3b95aed96f408d9be5",
    "crop_flip-1": "eca795161dd41751b69ecef1848ce20f",
    "crop_flip-2": "0b100f1b2ff20c647b078ee877dd424a",
    "cutout-0": "043e9f5ed6ece4d90d890d5a91693fce",
    "cutout-1": "9005608ffbd37f8f952fbfc10e781ce4",
    "cutout-2": "6915ad85f7507993d742045d8d5053a4",
    "eval": "15c5993892bfa030f135fd81feca8253",
    "op-AutoContrast": "2b16033b491384c20fb990d3551ece76",
    "op-Brightness": "24e9e70f01c2fd7267bf0b47dcac3a76",
    "op-Color": "c6ab63479b1753ae05c549d4cb893240",
    "op-Contrast": "40829c4e10ccd8d0a7742580ff0da8af",
    "op-Equalize": "179dc1900054643b6fc210fb3a76f5c4",
    "op-Identity": "9d3c072ce5281e90b2acb225ee20ac7e",
    "op-Posterize": "9d7b056d3cc51a39c00fc67e8064b32a",
    "op-Rotate": "a6b695b61ac83a4c3c74e05a7767ce37",
    "op-Sharpness": "8b64153be9fee7d350789ec785e47191",
    "op-ShearX": "d403f12e3a507d3c52978e21ea286768",
    "op-ShearY": "7b2d6a0776b91a2e2dc06cc1c343d676",
    "op-Solarize": "a82c9a4464c9e62cf56ef74f205a294e",
    "op-TranslateX": "48b3459476a889482c176a2e143d4637",
    "op-TranslateY": "b5dd91502d1dcc30d7288153fd02f581",
    "rand_augment-0": "b863701bca5de3add2140954524393ab",
    "rand_augment-1": "8b447c5ac3c9cbe4c13d25d26c28c6e4",
    "rand_augment-2": "afa3d6a0938e2fd5d391566f73187e0b",
    "rand_augment-3ops": "77934837a9d693cb016e42cbb250ec6e",
    "strong-0": "d39cb7fe78433323553211610a99cdcf",
    "strong-1": "ada0623768d96b62d82eb2e13b05d8c3",
    "strong-2": "e9f9dfa7a703c598d61e51ae48ac9bff",
    "weak-0": "693d2adb036e45ef4f806b73b9edece4",
    "weak-1": "dee57443b6f6f63cced4ee050847a1d7",
    "weak-2": "853cd12af2daba325af0f665521a2d47",
}


@pytest.fixture(scope="module")
def current() -> dict[str, torch.Tensor]:
    return outputs()


def test_every_output_is_pinned(current) -> None:
    assert sorted(current) == sorted(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_output_is_bit_identical_to_the_pinned_one(current, name: str) -> None:
    assert _digest(current[name]) == PINNED[name], name


def test_the_digest_sees_one_changed_bit() -> None:
    x = _images()
    y = x.clone()
    y[5, 1, 7, 9] ^= 1
    assert _digest(x) != _digest(y)
    assert _digest(x) != _digest(x.float())  # same values, another dtype


if __name__ == "__main__":
    for name, value in sorted(outputs().items()):
        print(f'    "{name}": "{_digest(value)}",')
