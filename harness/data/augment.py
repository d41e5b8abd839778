"""Batched CIFAR augmentation in plain torch, on ``uint8`` NCHW batches already on the training device.

The recipe is the CIFAR one of the MLKD code base (Jin et al., CVPR 2023, ``mdistiller/dataset/cifar100.py``),
which SLD's official code reuses for its "strong" view, redone per batch instead of per PIL image:

weak view (``weak_view``)
    ``RandomCrop(32, padding=4)`` (zero padding, offset uniform in ``0..8`` per axis) then
    ``RandomHorizontalFlip(p=0.5)``, then :func:`to_float_normalized`.
strong view (``strong_view``)
    The same crop and flip, then ``RandAugment(n=2)``: two ops per sample, each drawn uniformly (with
    replacement) from the 14 below, each at its own magnitude ``v = low + (high - low) * U(0, 1)`` (MLKD
    ignores the ``m=10`` argument and samples the magnitude), then Cutout, then normalization.

    ======================  =============  ====================================================
    op                      range of v     effect (PIL semantics)
    ======================  =============  ====================================================
    AutoContrast            --             per channel, stretch [min, max] to [0, 255]
    Brightness              0.05 .. 0.95   blend with black: ``v * x``
    Color                   0.05 .. 0.95   blend with the grey (ITU-R 601 luma) image
    Contrast                0.05 .. 0.95   blend with the image's mean luma
    Equalize                --             per channel histogram equalization (PIL's LUT)
    Identity                --             nothing
    Posterize               4 .. 8         keep the top ``int(v)`` bits
    Rotate                  -30 .. 30      degrees counter-clockwise about the centre
    Sharpness               0.05 .. 0.95   blend with the 3x3 SMOOTH-filtered image (border kept)
    ShearX                  -0.3 .. 0.3    ``x_in = x + v * y`` (about the top-left corner)
    ShearY                  -0.3 .. 0.3    ``y_in = y + v * x``
    Solarize                0 .. 256       invert pixels ``>= v``
    TranslateX              -0.3 .. 0.3    ``x_in = x + v * width``
    TranslateY              -0.3 .. 0.3    ``y_in = y + v * height``
    ======================  =============  ====================================================

    Geometric ops sample the nearest pixel and fill with black, like PIL's ``transform``; a blend with
    factor ``f`` is ``floor(degenerate + f * (x - degenerate))`` clipped to ``[0, 255]`` like
    ``Image.blend``. Results are ``uint8`` after every op, as with PIL images. The colour ops and the
    shear/translate ops reproduce Pillow's output bit for bit; Rotate differs on about 0.02% of pixels
    (nearest-pixel ties under float rounding).

    Cutout: side ``s = floor(U(0, 0.5) * 32)`` (0..16 px), centre ``(cy, cx)`` uniform over the pixels,
    hole ``[max(0, cy - s/2), +s)`` in each axis clipped at the far border, filled with the MLKD grey
    (125, 123, 114), which :func:`to_float_normalized` maps to within 0.07 of zero.
eval view (``eval_view``)
    Normalization only.

Normalization uses MLKD's mean/std ``(0.5071, 0.4867, 0.4408)/(0.2675, 0.2565, 0.2761)``. One deliberate
difference from MLKD: PIL's cutout rectangle includes its far edge (up to 17 px), ours does not (up to 16 px).

How it is vectorized: every sample draws its own parameters; the geometric ops are folded into one
per-sample 2x3 matrix (identity for samples that drew another op) and applied by one ``affine_grid`` /
``grid_sample``; on an accelerator each colour op is computed for the whole batch and kept with
``torch.where`` where the sample drew it, so nothing branches on data and there is no host-device sync. On
the CPU, where a sync costs nothing, each op runs only on the samples that drew it (about 1/14 of the
work). There is no Python loop over samples either way.

Random numbers come from ``generator`` (on the batch's device) or the global torch RNG, drawn in a fixed
order: crop offsets, flips, then per RandAugment round the op indices and magnitudes, then cutout. The same
seed on the same device gives the same batch.

Example
-------
>>> g = torch.Generator(device=x.device).manual_seed(0)          # doctest: +SKIP
>>> weak, strong = weak_view(x, g), strong_view(x, g)              # float32 (B, 3, 32, 32) each
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CUTOUT_FILL",
    "RANDAUGMENT_OPS",
    "RandAugmentOp",
    "cutout",
    "eval_view",
    "rand_augment",
    "random_crop_flip",
    "strong_view",
    "to_float_normalized",
    "weak_view",
]

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)  # official SLD/MLKD code (shared/spec/paper_results.md)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CUTOUT_FILL = (125, 123, 114)  # MLKD's cutout grey, about the dataset mean
_PAD = 4
_NUM_OPS = 2
_MAX_CUTOUT = 0.5  # of the image side


# ---------------------------------------------------------------------------------------------- public views


def to_float_normalized(x: torch.Tensor) -> torch.Tensor:
    """``uint8 (B, 3, H, W)`` in ``[0, 255]`` -> ``float32`` ``(x / 255 - mean) / std`` per channel."""
    _check_batch(x)
    mean = _constant(CIFAR100_MEAN, torch.float32, x.device).view(1, 3, 1, 1)
    std = _constant(CIFAR100_STD, torch.float32, x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def eval_view(x: torch.Tensor) -> torch.Tensor:
    """Test-time view: normalization only. ``uint8 (B, 3, H, W)`` -> ``float32`` of the same shape."""
    return to_float_normalized(x)


def weak_view(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (4 px zero padding) + horizontal flip + normalization.

    Parameters
    ----------
    x
        ``uint8 (B, 3, H, W)`` on the training device.
    generator
        Source of randomness, on ``x.device``; ``None`` uses torch's global RNG.

    Returns
    -------
    torch.Tensor
        ``float32 (B, 3, H, W)`` on ``x.device``.
    """
    return to_float_normalized(random_crop_flip(x, generator))


def strong_view(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop + flip + RandAugment (2 ops) + Cutout + normalization, the MLKD/SLD strong view.

    Same arguments and result as :func:`weak_view`; the recipe is in the module docstring.
    """
    return to_float_normalized(cutout(rand_augment(random_crop_flip(x, generator), generator), generator))


# ------------------------------------------------------------------------------------ uint8 -> uint8 steps


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``uint8`` batch -> ``uint8`` batch: each sample a random ``H x W`` window of its zero-padded self
    (offsets uniform in ``0..2*4``), mirrored left-right with probability 1/2."""
    _check_batch(x, generator)
    b, _, h, w = x.shape
    padded = F.pad(x, (_PAD, _PAD, _PAD, _PAD))
    top = torch.randint(0, 2 * _PAD + 1, (b,), device=x.device, generator=generator)
    left = torch.randint(0, 2 * _PAD + 1, (b,), device=x.device, generator=generator)
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + left[:, None]  # (B, W)
    rows = torch.arange(h, device=x.device) + top[:, None]  # (B, H)
    batch = torch.arange(b, device=x.device)
    channel = torch.arange(x.shape[1], device=x.device)
    return padded[
        batch[:, None, None, None],
        channel[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def rand_augment(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    num_ops: int = _NUM_OPS,
    *,
    by_subset: bool | None = None,
) -> torch.Tensor:
    """``uint8`` batch -> ``uint8`` batch with ``num_ops`` RandAugment ops applied to each sample, each op
    and magnitude drawn per sample from :data:`RANDAUGMENT_OPS`.

    ``by_subset`` picks how an op reaches the samples that drew it; both give the same result.
    ``True`` gathers those samples and runs the op on them only (least work, but counting them reads a
    number back from the device: a sync); ``False`` runs every op on the whole batch and keeps the right
    samples with ``torch.where`` (no sync). ``None``: subsets on the CPU, masks elsewhere.
    """
    _check_batch(x, generator)
    if by_subset is None:
        by_subset = x.device.type == "cpu"
    b, _, h, w = x.shape
    lows = _constant(tuple(op.low for op in RANDAUGMENT_OPS), torch.float32, x.device)
    highs = _constant(tuple(op.high for op in RANDAUGMENT_OPS), torch.float32, x.device)
    geometric = _constant(tuple(op.matrix is not None for op in RANDAUGMENT_OPS), torch.bool, x.device)
    for _ in range(num_ops):
        choice = torch.randint(0, len(RANDAUGMENT_OPS), (b,), device=x.device, generator=generator)
        u = torch.rand(b, device=x.device, generator=generator)
        v = lows[choice] + (highs[choice] - lows[choice]) * u
        # One warp for all geometric ops: per-sample matrices, the identity where another op was drawn.
        matrix = _identity_matrices(b, x.device)
        for k, op in enumerate(RANDAUGMENT_OPS):
            if op.matrix is not None:
                matrix = torch.where((choice == k)[:, None, None], op.matrix(v, h, w), matrix)
        x = _apply_to(x, geometric[choice], lambda xs, sel, m=matrix: _warp(xs, m[sel]), by_subset)
        for k, op in enumerate(RANDAUGMENT_OPS):
            if op.pixels is not None and op.pixels is not _identity:
                x = _apply_to(x, choice == k, lambda xs, sel, op=op, v=v: op.pixels(xs, v[sel]), by_subset)
    return x


def _apply_to(
    x: torch.Tensor,
    chosen: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor | slice], torch.Tensor],
    by_subset: bool,
) -> torch.Tensor:
    """``x`` with ``fn(samples, which)`` replacing the samples where ``chosen`` (bool ``(B,)``); ``which``
    indexes per-sample parameters (``v[which]``) the way the samples were taken from ``x``."""
    if by_subset:
        which = chosen.nonzero().squeeze(1)
        return x.index_copy(0, which, fn(x[which], which)) if which.numel() else x
    return torch.where(chosen[:, None, None, None], fn(x, slice(None)), x)


def cutout(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``uint8`` batch -> ``uint8`` batch with one square of side ``0..H/2`` per sample set to
    :data:`CUTOUT_FILL` (placement as in the module docstring)."""
    _check_batch(x, generator)
    b, _, h, w = x.shape
    side = (torch.rand(b, device=x.device, generator=generator) * (_MAX_CUTOUT * h)).floor().long()
    cy = torch.randint(0, h, (b,), device=x.device, generator=generator)
    cx = torch.randint(0, w, (b,), device=x.device, generator=generator)
    y0 = (cy - side // 2).clamp(min=0)
    x0 = (cx - side // 2).clamp(min=0)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    # (B, H) and (B, W); a hole running past the far border is clipped by the comparison itself.
    in_rows = (rows >= y0[:, None]) & (rows < y0[:, None] + side[:, None])
    in_cols = (cols >= x0[:, None]) & (cols < x0[:, None] + side[:, None])
    hole = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
    fill = _constant(CUTOUT_FILL, torch.uint8, x.device).view(1, 3, 1, 1)
    return torch.where(hole, fill, x)


# ------------------------------------------------------------------------------------------------- the 14 ops


@dataclass(frozen=True)
class RandAugmentOp:
    """One RandAugment op: ``op(x_uint8, v) -> uint8`` with a magnitude ``v`` ``(B,)`` drawn from
    ``[low, high]``. Geometric ops carry ``matrix(v, height, width) -> (B, 2, 3)`` (output pixel -> input
    pixel, in pixel units with pixel centres at ``i + 0.5``) so a batch can share one warp."""

    name: str
    low: float
    high: float
    pixels: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    matrix: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor, v: float | torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        v = torch.as_tensor(v, dtype=torch.float32, device=x.device).expand(x.shape[0])
        if self.matrix is not None:
            return _warp(x, self.matrix(v, x.shape[-2], x.shape[-1]))
        assert self.pixels is not None
        return self.pixels(x, v)


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, x, factor)`` on uint8: truncate toward zero, clip to [0, 255]."""
    d = degenerate.float()
    return (d + _per_sample(factor) * (x.float() - d)).clamp(0, 255).floor().to(torch.uint8)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL ``convert("L")``, ITU-R 601-2 luma in 16-bit fixed point: ``(B, 3, H, W)`` -> ``(B, 1, H, W)``."""
    r, g, b = x.int().unbind(dim=1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1).to(torch.uint8)


def _autocontrast(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # PIL's formula, in double precision as PIL computes it: the result truncates, and products that
    # should be whole numbers land just below them (255 * (255/167) - 88 * (255/167) = 254.99999999999997).
    lo = x.amin(dim=(-2, -1), keepdim=True).double()
    hi = x.amax(dim=(-2, -1), keepdim=True).double()
    # A tensor numerator: torch turns `scalar / tensor` into a multiply by the reciprocal, off by an ulp.
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp(min=1)
    stretched = (x.double() * scale - lo * scale).floor().clamp(0, 255).to(torch.uint8)
    return torch.where(hi > lo, stretched, x)  # a flat channel stays as it is


def _brightness(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, v)


def _color(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _blend(_luma(x).expand_as(x), x, v)


def _contrast(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    mean = (_luma(x).float().mean(dim=(-3, -2, -1), keepdim=True) + 0.5).floor()  # PIL: int(mean + 0.5)
    return _blend(mean.expand_as(x), x, v)


def _equalize(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per channel: ``lut[i] = (step // 2 + #pixels below i) // step`` with
    ``step = (#pixels - #pixels at the top value) // 255``; identity when ``step == 0``."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(
        1, flat, torch.ones_like(flat)
    )
    top_count = hist.gather(1, flat.amax(dim=1, keepdim=True))
    step = (h * w - top_count) // 255  # (B*C, 1)
    below = hist.cumsum(dim=1) - hist
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device))
    return lut.gather(1, flat).to(torch.uint8).view(b, c, h, w)


def _posterize(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    bits = v.long().clamp(1, 8)  # MLKD: max(1, int(v))
    mask = (255 - ((1 << (8 - bits)) - 1)).to(torch.uint8)  # the top `bits` bits set
    return x & _per_sample(mask)


def _sharpness(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as a 3x3 box sum plus 4x the centre: sums
    # of small integers are exact in float32, and this is far faster on CPU than a depthwise conv2d.
    xf = x.float()
    box = F.avg_pool2d(xf, 3, stride=1, divisor_override=1)  # valid: the one-pixel border is lost
    smooth = ((box + 4.0 * xf[..., 1:-1, 1:-1]) / 13.0).round().clamp(0, 255).to(torch.uint8)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth  # PIL's filter copies the one-pixel border unchanged
    return _blend(degenerate, x, v)


def _solarize(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.where(x.float() >= _per_sample(v), 255 - x, x)


def _identity(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x


def _affine(v: torch.Tensor, *entries: float | torch.Tensor) -> torch.Tensor:
    """Stack per-sample ``[[a, b, c], [d, e, f]]`` (scalars broadcast) into ``(B, 2, 3)``."""
    # full_like fills on the device; torch.as_tensor(float, device=...) would copy from the host every time.
    columns = [e.expand_as(v) if isinstance(e, torch.Tensor) else torch.full_like(v, e) for e in entries]
    return torch.stack(columns, dim=-1).view(-1, 2, 3)


def _rotate_matrix(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    # PIL Image.rotate(v): counter-clockwise on screen (y points down) about (w/2, h/2).
    theta = torch.deg2rad(v)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    return _affine(v, cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


def _shear_x_matrix(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _affine(v, 1.0, v, 0.0, 0.0, 1.0, 0.0)


def _shear_y_matrix(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _affine(v, 1.0, 0.0, 0.0, v, 1.0, 0.0)


def _translate_x_matrix(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _affine(v, 1.0, 0.0, v * w, 0.0, 1.0, 0.0)


def _translate_y_matrix(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _affine(v, 1.0, 0.0, 0.0, 0.0, 1.0, v * h)


def _identity_matrices(b: int, device: torch.device) -> torch.Tensor:
    return torch.eye(2, 3, device=device).expand(b, 2, 3)


def _warp(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Nearest-pixel warp with black fill; ``matrix`` ``(B, 2, 3)`` maps output to input pixel coordinates.

    ``affine_grid`` wants normalized coordinates (``-1``/``+1`` at the outer pixel edges with
    ``align_corners=False``): with ``S = diag(w/2, h/2)`` and ``p = S (u + 1)``, the map ``p -> A p + t``
    becomes ``u -> S^-1 A S u + S^-1 (A S 1 + t) - 1``.
    """
    b, c, h, w = x.shape
    sx, sy = w / 2.0, h / 2.0
    (a, bb, tx), (d, e, ty) = matrix[:, 0].unbind(-1), matrix[:, 1].unbind(-1)
    theta = torch.stack(
        [
            a,
            bb * (sy / sx),
            (a * sx + bb * sy + tx) / sx - 1.0,
            d * (sx / sy),
            e,
            (d * sx + e * sy + ty) / sy - 1.0,
        ],
        dim=-1,
    ).view(b, 2, 3)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    # float32 holds every uint8 exactly and nearest sampling never mixes values, so the round trip is exact.
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.to(torch.uint8)


RANDAUGMENT_OPS: tuple[RandAugmentOp, ...] = (
    RandAugmentOp("AutoContrast", 0.0, 1.0, pixels=_autocontrast),
    RandAugmentOp("Brightness", 0.05, 0.95, pixels=_brightness),
    RandAugmentOp("Color", 0.05, 0.95, pixels=_color),
    RandAugmentOp("Contrast", 0.05, 0.95, pixels=_contrast),
    RandAugmentOp("Equalize", 0.0, 1.0, pixels=_equalize),
    RandAugmentOp("Identity", 0.0, 1.0, pixels=_identity),
    RandAugmentOp("Posterize", 4.0, 8.0, pixels=_posterize),
    RandAugmentOp("Rotate", -30.0, 30.0, matrix=_rotate_matrix),
    RandAugmentOp("Sharpness", 0.05, 0.95, pixels=_sharpness),
    RandAugmentOp("ShearX", -0.3, 0.3, matrix=_shear_x_matrix),
    RandAugmentOp("ShearY", -0.3, 0.3, matrix=_shear_y_matrix),
    RandAugmentOp("Solarize", 0.0, 256.0, pixels=_solarize),
    RandAugmentOp("TranslateX", -0.3, 0.3, matrix=_translate_x_matrix),
    RandAugmentOp("TranslateY", -0.3, 0.3, matrix=_translate_y_matrix),
)
"""MLKD's ``augment_list()``, in its order, with its magnitude ranges."""


# ---------------------------------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant on ``device``, copied there once: a host-to-device copy from pageable memory on
    every batch would block the host each time. Callers must not write to it."""
    return torch.tensor(values, dtype=dtype, device=device)


def _resolved(device: torch.device) -> torch.device:
    """``cuda`` with its index filled in: ``torch.Generator(device="cuda")`` reports ``cuda`` while the
    tensors it serves report ``cuda:0``, and the two are the same device."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _check_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor batch, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 batch in [0, 255], got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an NCHW batch of shape (B, 3, H, W), got {tuple(x.shape)}")
    if generator is not None and _resolved(generator.device) != _resolved(x.device):
        raise ValueError(
            f"generator is on {generator.device} but the batch is on {x.device}; create it with "
            f"torch.Generator(device=x.device)"
        )
