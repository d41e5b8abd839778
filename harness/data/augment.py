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

    Cutout, as MLKD computes it (:func:`cutout`): ``v = U(0, 0.5) * 32``, a centre in ``(1, 32]`` per
    axis (``np.random.uniform(32)`` draws between ``low=32`` and ``high=1``), the square from
    ``x0 = int(max(0, cx - v/2))`` to ``min(32, x0 + v)`` with both edges filled (PIL's rectangle), so
    ``floor(v) + 1`` = 1..16 px a side; the fill is the MLKD grey (125, 123, 114), which
    :func:`to_float_normalized` maps to within 0.07 of zero.
eval view (``eval_view``)
    Normalization only.

Normalization uses MLKD's mean/std ``(0.5071, 0.4867, 0.4408)/(0.2675, 0.2565, 0.2761)``.

How it is batched: every sample draws its own parameters, and each RandAugment round is three passes,
one per kind of op, so the number of torch ops per call is fixed by the 14 ops (not by how many samples
drew each) and, on an accelerator, nothing waits for the device:

1. a lookup: AutoContrast, Equalize, Posterize and Solarize map each pixel value on its own, so each is a
   256-entry table per (sample, channel), built for the samples of the pass, kept with ``torch.where``
   where the sample drew that op (the identity table elsewhere) and applied by one gather;
2. a blend: Brightness, Color, Contrast and Sharpness are ``Image.blend`` with a degenerate image
   (black, grey, the mean grey level, the smoothed image); one blend with each sample's own, by a
   factor ``v`` where the sample drew one of them and 1 elsewhere (which returns the sample exactly);
3. a warp: the five geometric ops are folded into one per-sample 2x3 matrix (the identity for samples
   that drew another op; a nearest-pixel identity warp returns the sample exactly), turned into a grid
   once for all rounds and applied by one ``grid_sample`` per round.

A sample draws one op per round, so one pass at most changes it, and each pass computes the same values
as the op applied on its own (``RandAugmentOp.__call__``, which the tests hold to PIL). On an accelerator
every pass runs on the whole batch; on the CPU, where reading a count back costs nothing, each pass runs
on the samples that drew one of its ops only (``rand_augment(by_subset=...)``); the images are the same.

Random numbers come from ``generator`` (on the batch's device) or the global torch RNG, drawn in a fixed
order: crop offsets, flips, then per RandAugment round the op indices and magnitudes, then cutout's size
and centre. The same seed on the same device gives the same batch.

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

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)  # official SLD/MLKD code, mdistiller/dataset/cifar100.py
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CUTOUT_FILL = (125, 123, 114)  # MLKD's cutout grey, about the dataset mean
_PAD = 4
_NUM_OPS = 2
_MAX_CUTOUT = 0.5  # of the image side


# ---------------------------------------------------------------------------------------------- public views


def to_float_normalized(x: torch.Tensor) -> torch.Tensor:
    """``uint8 (B, 3, H, W)`` in ``[0, 255]`` -> ``float32`` ``(x / 255 - mean) / std`` per channel.

    The same float32 operations as torchvision's ``ToTensor`` then ``Normalize``, so the same bits. The
    255 is a tensor on ``x``'s device: CUDA turns a division by a Python number into a multiply by its
    reciprocal, which is an ulp off for about half the pixel values.

    Examples
    --------
    >>> to_float_normalized(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))[0, :, 0, 0]
    tensor([-1.8957, -1.8975, -1.5965])
    """
    _check_batch(x)
    scale, mean, std = _normalization_constants(x.device)
    return (x.float() / scale - mean) / std


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
    b, c, h, w = x.shape
    padded = F.pad(x, (_PAD, _PAD, _PAD, _PAD)).view(b, c, -1)
    top = torch.randint(0, 2 * _PAD + 1, (b,), device=x.device, generator=generator)
    left = torch.randint(0, 2 * _PAD + 1, (b,), device=x.device, generator=generator)
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    # One gather from the flattened padded image: offsets of the window at (0, 0), as it is or mirrored,
    # plus each sample's shift.
    window, mirrored = _crop_offsets(h, w, x.device)
    offsets = torch.where(flip.view(b, 1), mirrored, window) + (top * (w + 2 * _PAD) + left).view(b, 1)
    return padded.gather(2, offsets.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def rand_augment(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    num_ops: int = _NUM_OPS,
    *,
    by_subset: bool | None = None,
) -> torch.Tensor:
    """``uint8`` batch -> ``uint8`` batch with ``num_ops`` RandAugment ops applied to each sample, each op
    and magnitude drawn per sample from :data:`RANDAUGMENT_OPS`.

    Parameters
    ----------
    x
        ``uint8 (B, 3, H, W)``.
    generator
        Source of randomness, on ``x.device``; ``None`` uses torch's global RNG.
    num_ops
        Ops per sample (MLKD: 2), applied one after the other.
    by_subset
        How each of a round's three passes (module docstring) reaches the samples that drew one of its
        ops; both give the same result. ``True`` gathers those samples and runs the pass on them only
        (least work, but counting them reads a number back from the device: a sync); ``False`` runs it
        on the whole batch (no sync), which leaves the other samples exactly as they are. ``None``:
        subsets on the CPU, the whole batch elsewhere.

    Returns
    -------
    torch.Tensor
        ``uint8`` of ``x``'s shape, on its device: what applying each sample's ops to it one at a time
        gives.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> rand_augment(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), g).shape
    torch.Size([4, 3, 32, 32])
    """
    _check_batch(x, generator)
    if not isinstance(num_ops, int) or num_ops < 0:
        raise ValueError(f"num_ops must be an int >= 0, got {num_ops!r}")
    if num_ops == 0:
        return x
    if by_subset is None:
        by_subset = x.device.type == "cpu"
    b = x.shape[0]
    draws = [
        (
            torch.randint(0, len(RANDAUGMENT_OPS), (b,), device=x.device, generator=generator),
            torch.rand(b, device=x.device, generator=generator),
        )
        for _ in range(num_ops)
    ]
    choice = torch.stack([c for c, _ in draws])
    u = torch.stack([u for _, u in draws])
    return _rand_augment_drawn(x, choice, u, by_subset=by_subset)


def _rand_augment_drawn(
    x: torch.Tensor, choice: torch.Tensor, u: torch.Tensor, *, by_subset: bool
) -> torch.Tensor:
    """:func:`rand_augment` with its draws given: op indices ``choice``, uniforms ``u``, ``(rounds, B)``."""
    num_ops, b = choice.shape
    h, w = x.shape[-2:]
    # Everything that depends on the draws alone is computed for all rounds at once.
    table = _op_table(x.device)
    v = table.low[choice] + (table.high[choice] - table.low[choice]) * u
    drew = choice == table.index  # (14, rounds, B)
    kind = table.kind[choice]
    matrices = _matrices(v.view(-1), drew.view(len(RANDAUGMENT_OPS), -1, 1, 1).unbind(0), h, w)
    grids = _grid(matrices, h, w).view(num_ops, b, h, w, 2)
    for r in range(num_ops):
        planes = _Planes(x)  # the round's input, which every op of the round reads
        passes = (
            (_TABLE, functools.partial(_table_pass, planes=planes, drew=drew[:, r], v=v[r])),
            (_BLEND, functools.partial(_blend_pass, planes=planes, drew=drew[:, r], v=v[r], kind=kind[r])),
            (_GEOMETRIC, functools.partial(_warp_pass, grid=grids[r])),
        )
        for pass_kind, fn in passes:
            x = _on_samples(x, kind[r], pass_kind, fn, by_subset)
    return x


# Which pass of a round an op belongs to (none for Identity).
_IDENTITY, _TABLE, _BLEND, _GEOMETRIC = range(4)


def _on_samples(
    x: torch.Tensor,
    kind: torch.Tensor,
    pass_kind: int,
    fn: Callable[[torch.Tensor, torch.Tensor | slice], torch.Tensor],
    by_subset: bool,
) -> torch.Tensor:
    """``x`` with ``fn(samples, which)`` in place of the samples whose op (``kind``, ``(B,)``) is of
    ``pass_kind``; ``which`` indexes per-sample parameters the way the samples were taken from ``x``.
    With ``by_subset=False`` ``fn`` gets the whole batch and must return the other samples as they are."""
    if not by_subset:
        return fn(x, slice(None))
    which = (kind == pass_kind).nonzero().squeeze(1)
    return x.index_copy(0, which, fn(x[which], which)) if which.numel() else x


def _pass_planes(planes: _Planes, samples: torch.Tensor, which: torch.Tensor | slice) -> _Planes:
    # The whole batch: the round's planes (a pass changes only the samples of its own ops, whose pixels
    # the earlier passes of the round left as they were). A subset: planes of its own.
    return planes if isinstance(which, slice) else _Planes(samples)


def _table_pass(
    samples: torch.Tensor,
    which: torch.Tensor | slice,
    *,
    planes: _Planes,
    drew: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """The table ops: one lookup in each sample's table of the op it drew, the identity for other ops.
    ``drew``: bool ``(14, B)``; ``v``: ``(B,)``."""
    p = _pass_planes(planes, samples, which)
    drew = drew[:, which].view(len(RANDAUGMENT_OPS), -1, 1, 1).unbind(0)
    v = v[which]
    lut = _levels(torch.uint8, samples.device)
    for k, op in enumerate(RANDAUGMENT_OPS):
        if op.lut is not None:
            lut = torch.where(drew[k], op.lut(p, v), lut)
    return _apply_lut(p, lut)


def _blend_pass(
    samples: torch.Tensor,
    which: torch.Tensor | slice,
    *,
    planes: _Planes,
    drew: torch.Tensor,
    v: torch.Tensor,
    kind: torch.Tensor,
) -> torch.Tensor:
    """The blend ops: one blend with the degenerate image of the op each sample drew, by a factor of 1
    (which returns the sample as it is) for other ops."""
    p = _pass_planes(planes, samples, which)
    drew = drew[:, which].view(len(RANDAUGMENT_OPS), -1, 1, 1, 1).unbind(0)
    degenerate = None
    for k, op in enumerate(RANDAUGMENT_OPS):
        if op.degenerate is not None:
            image = op.degenerate(p)
            degenerate = image if degenerate is None else torch.where(drew[k], image, degenerate)
    assert degenerate is not None
    return _blend(degenerate, samples, torch.where(kind[which] == _BLEND, v[which], 1.0))


def _warp_pass(samples: torch.Tensor, which: torch.Tensor | slice, *, grid: torch.Tensor) -> torch.Tensor:
    """The geometric ops: one warp, by the identity for samples that drew another op."""
    return _sample(samples, grid[which])


def cutout(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``uint8`` batch -> ``uint8`` batch with one grey square per sample, MLKD's ``Cutout`` /
    ``CutoutAbs`` (``mdistiller/dataset/cifar100.py``) in its own arithmetic (float64, like Python's):

    - size ``v = U * 0.5 * W`` (``random.random() * 0.5``, times ``img.size[0]``, the width, for both axes);
      no hole when ``v == 0``;
    - centre ``cx = W + (1 - W) * U`` in ``(1, W]``: MLKD calls ``np.random.uniform(w)``, whose first
      argument is ``low``, so it draws between ``low=W`` and the default ``high=1``; likewise ``cy``;
    - corners ``x0 = int(max(0, cx - v / 2))``, ``x1 = min(W, x0 + v)`` (likewise ``y``);
    - ``ImageDraw.rectangle((x0, y0, x1, y1), fill)``: PIL truncates the corners to integers and fills
      both edges, clipped to the image. The side is ``floor(v) + 1``, 1..16 px on 32 x 32.

    The three uniforms are one ``torch.rand((3, B), dtype=float64)`` draw: row 0 for the size, rows 1
    and 2 for ``cx`` and ``cy``. The fill is :data:`CUTOUT_FILL`.
    """
    _check_batch(x, generator)
    u = torch.rand((3, x.shape[0]), dtype=torch.float64, device=x.device, generator=generator)
    return _cutout_drawn(x, u)


def _cutout_drawn(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """:func:`cutout` with its uniforms ``u`` given, float64 ``(3, B)``."""
    b, _, h, w = x.shape
    v = u[0] * _MAX_CUTOUT * w
    x0 = (w + (1.0 - w) * u[1] - v / 2.0).clamp(min=0).floor()
    y0 = (h + (1.0 - h) * u[2] - v / 2.0).clamp(min=0).floor()
    x1 = (x0 + v).clamp(max=w).floor()
    y1 = (y0 + v).clamp(max=h).floor()
    rows, cols = _positions(h, w, x.device)
    # (B, H) and (B, W), both edges included; an edge past the image is clipped by the comparison itself.
    in_rows = (rows >= y0.view(b, 1)) & (rows <= y1.view(b, 1)) & (v > 0).view(b, 1)
    in_cols = (cols >= x0.view(b, 1)) & (cols <= x1.view(b, 1))
    hole = in_rows.view(b, 1, h, 1) & in_cols.view(b, 1, 1, w)
    return torch.where(hole, _cutout_fill(x.device), x)


# ------------------------------------------------------------------------------------------------- the 14 ops


class _Planes:
    """A batch and the per-image statistics that several ops read, each computed on first use (a
    RandAugment round computes the grey image once, for both Contrast and Color)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    @functools.cached_property
    def luma(self) -> torch.Tensor:
        return _luma(self)

    @functools.cached_property
    def values(self) -> torch.Tensor:
        """``int64 (B, C, H*W)``: the pixel values as indices (into a lookup table, a histogram)."""
        b, c, h, w = self.x.shape
        return self.x.reshape(b, c, h * w).long()

    @functools.cached_property
    def channel_min(self) -> torch.Tensor:
        return self.x.amin(dim=(-2, -1))  # (B, C)

    @functools.cached_property
    def channel_max(self) -> torch.Tensor:
        return self.x.amax(dim=(-2, -1))


@dataclass(frozen=True)
class RandAugmentOp:
    """One RandAugment op ``op(x_uint8, v) -> uint8`` with a magnitude ``v`` ``(B,)`` drawn from
    ``[low, high]``, given in the form that lets a batch share one pass (at most one of the three; none
    for Identity):

    ``lut(planes, v)``
        a per-pixel-value table, ``uint8 (B, 1 or C, 256)``;
    ``degenerate(planes)``
        the image that ``x`` is blended with (factor ``v``): whole-number pixel values (``uint8`` or
        float), broadcastable to ``x``;
    ``matrix(v, height, width)``
        ``(B, 2, 3)``, output pixel -> input pixel in pixel units with pixel centres at ``i + 0.5``.
    """

    name: str
    low: float
    high: float
    lut: Callable[[_Planes, torch.Tensor], torch.Tensor] | None = None
    degenerate: Callable[[_Planes], torch.Tensor] | None = None
    matrix: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor, v: float | torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        v = torch.as_tensor(v, dtype=torch.float32, device=x.device).expand(x.shape[0])
        planes = _Planes(x)
        if self.lut is not None:
            return _apply_lut(planes, self.lut(planes, v))
        if self.degenerate is not None:
            return _blend(self.degenerate(planes), x, v)
        if self.matrix is not None:
            return _warp(x, self.matrix(v, x.shape[-2], x.shape[-1]))
        return x


def _apply_lut(planes: _Planes, lut: torch.Tensor) -> torch.Tensor:
    """Each pixel replaced by its entry in its (sample, channel)'s 256-entry ``lut``."""
    b, c, h, w = planes.x.shape
    return lut.expand(b, c, 256).gather(2, planes.values).view(b, c, h, w)


def _blend_values(degenerate: torch.Tensor | float, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, x, factor)`` on float32 pixel values: truncate toward zero, clip to
    [0, 255]. A factor of 1 gives ``x`` exactly (``x - degenerate`` is exact on whole numbers)."""
    return (degenerate + factor * (x - degenerate)).clamp(0, 255).floor().to(torch.uint8)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """:func:`_blend_values` on ``uint8`` images with a per-sample ``factor`` ``(B,)``."""
    return _blend_values(degenerate.float(), x.float(), factor.view(-1, 1, 1, 1))


def _luma(planes: _Planes) -> torch.Tensor:
    """PIL ``convert("L")``, ITU-R 601-2 luma in 16-bit fixed point: ``uint8 (B, 1, H, W)``."""
    b, _, h, w = planes.x.shape
    weighted = (planes.values * _luma_weights(planes.x.device)).sum(dim=1, keepdim=True)
    return ((weighted + 0x8000) >> 16).to(torch.uint8).view(b, 1, h, w)


def _autocontrast(planes: _Planes, v: torch.Tensor) -> torch.Tensor:
    # PIL's formula, in double precision as PIL computes it: the result truncates, and products that
    # should be whole numbers land just below them (255 * (255/167) - 88 * (255/167) = 254.99999999999997).
    lo = planes.channel_min.double().unsqueeze(-1)  # (B, C, 1)
    hi = planes.channel_max.double().unsqueeze(-1)
    # A tensor numerator: torch turns `scalar / tensor` into a multiply by the reciprocal, off by an ulp.
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp(min=1)
    levels = _levels(torch.float64, lo.device)
    stretched = (levels * scale - lo * scale).floor().clamp(0, 255).to(torch.uint8)
    return torch.where(hi > lo, stretched, _levels(torch.uint8, lo.device))  # a flat channel stays as it is


def _brightness(planes: _Planes) -> torch.Tensor:
    return _zero(planes.x.device)  # blend with black


def _color(planes: _Planes) -> torch.Tensor:
    return planes.luma


def _contrast(planes: _Planes) -> torch.Tensor:
    # Blend with the mean luma, rounded as PIL does: int(mean + 0.5). A sum of uint8 values is exact.
    return (planes.luma.float().mean(dim=(-3, -2, -1), keepdim=True) + 0.5).floor()


def _equalize(planes: _Planes, v: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per channel: ``lut[i] = (step // 2 + #pixels below i) // step`` with
    ``step = (#pixels - #pixels at the top value) // 255``; identity when ``step == 0``."""
    b, c, h, w = planes.x.shape
    flat = planes.values.view(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=flat.device).scatter_add_(
        1, flat, torch.ones_like(flat)
    )
    top_count = hist.gather(1, planes.channel_max.view(b * c, 1).long())
    step = (h * w - top_count) // 255  # (B*C, 1)
    below = hist.cumsum(dim=1) - hist
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    lut = torch.where(step > 0, lut, _levels(torch.long, flat.device))
    return lut.to(torch.uint8).view(b, c, 256)


def _posterize(planes: _Planes, v: torch.Tensor) -> torch.Tensor:
    bits = v.long().clamp(1, 8)  # MLKD: max(1, int(v))
    mask = (255 - ((1 << (8 - bits)) - 1)).to(torch.uint8)  # the top `bits` bits set
    return _levels(torch.uint8, v.device) & mask.view(-1, 1, 1)


def _sharpness(planes: _Planes) -> torch.Tensor:
    # PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as a 3x3 box sum plus 4x the centre: sums
    # of small integers are exact in float32 (the rounded mean of values in [0, 255] stays in [0, 255]).
    x = planes.x.float()
    # The 3x3 sums of the interior (the one-pixel border is lost) as sums of shifted slices: on the
    # CPU this is several times faster than avg_pool2d(divisor_override=1).
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = ((box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0).round()
    # PIL's filter copies the one-pixel border unchanged.
    return torch.where(_border(x.shape[-2], x.shape[-1], x.device), x, F.pad(smooth, (1, 1, 1, 1)))


def _solarize(planes: _Planes, v: torch.Tensor) -> torch.Tensor:
    levels = _levels(torch.uint8, v.device)
    return torch.where(_levels(torch.float32, v.device) >= v.view(-1, 1, 1), 255 - levels, levels)


def _shift(v: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """The identity matrix ``(B, 2, 3)`` with ``v`` added at ``[row, col]`` (``0 * v`` elsewhere)."""
    return _eye(v.device) + v.view(-1, 1, 1) * _unit(row, col, v.device)


def _rotate_matrix(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    # PIL Image.rotate(v): counter-clockwise on screen (y points down) about (w/2, h/2).
    theta = torch.deg2rad(v)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    entries = (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)
    return torch.stack(entries, dim=-1).view(-1, 2, 3)


def _shear_x_matrix(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _shift(v, 0, 1)


def _shear_y_matrix(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _shift(v, 1, 0)


def _translate_x_matrix(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _shift(v * w, 0, 2)


def _translate_y_matrix(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _shift(v * h, 1, 2)


def _matrices(v: torch.Tensor, drew: tuple[torch.Tensor, ...], h: int, w: int) -> torch.Tensor:
    """Per-sample warp matrices ``(N, 2, 3)`` for magnitudes ``v`` ``(N,)``: the matrix of the geometric
    op each sample drew (``drew[k]``: bool ``(N, 1, 1)``, op ``k``), the identity for the others."""
    matrix = _eye(v.device).expand(v.shape[0], 2, 3)
    for k, op in enumerate(RANDAUGMENT_OPS):
        if op.matrix is not None:
            matrix = torch.where(drew[k], op.matrix(v, h, w), matrix)
    return matrix


def _grid(matrix: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``grid_sample``'s ``(N, H, W, 2)`` grid for output -> input pixel maps ``matrix`` ``(N, 2, 3)``.

    ``affine_grid`` wants normalized coordinates (``-1``/``+1`` at the outer pixel edges with
    ``align_corners=False``): with ``S = diag(w/2, h/2)`` and ``p = S (u + 1)``, the map ``p -> A p + t``
    becomes ``u -> S^-1 A S u + S^-1 (A S 1 + t) - 1``.
    """
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
    ).view(-1, 2, 3)
    return F.affine_grid(theta, [theta.shape[0], 1, h, w], align_corners=False)


def _sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Nearest-pixel ``grid_sample`` with black fill. An identity grid returns ``x`` exactly: its
    coordinates land within rounding error of the pixel centres, and nearest sampling rounds that away."""
    # float32 holds every uint8 exactly and nearest sampling never mixes values, so the round trip is exact.
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.to(torch.uint8)


def _warp(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Nearest-pixel warp with black fill; ``matrix`` ``(B, 2, 3)`` maps output to input pixel coordinates."""
    return _sample(x, _grid(matrix, x.shape[-2], x.shape[-1]))


RANDAUGMENT_OPS: tuple[RandAugmentOp, ...] = (
    RandAugmentOp("AutoContrast", 0.0, 1.0, lut=_autocontrast),
    RandAugmentOp("Brightness", 0.05, 0.95, degenerate=_brightness),
    RandAugmentOp("Color", 0.05, 0.95, degenerate=_color),
    RandAugmentOp("Contrast", 0.05, 0.95, degenerate=_contrast),
    RandAugmentOp("Equalize", 0.0, 1.0, lut=_equalize),
    RandAugmentOp("Identity", 0.0, 1.0),
    RandAugmentOp("Posterize", 4.0, 8.0, lut=_posterize),
    RandAugmentOp("Rotate", -30.0, 30.0, matrix=_rotate_matrix),
    RandAugmentOp("Sharpness", 0.05, 0.95, degenerate=_sharpness),
    RandAugmentOp("ShearX", -0.3, 0.3, matrix=_shear_x_matrix),
    RandAugmentOp("ShearY", -0.3, 0.3, matrix=_shear_y_matrix),
    RandAugmentOp("Solarize", 0.0, 256.0, lut=_solarize),
    RandAugmentOp("TranslateX", -0.3, 0.3, matrix=_translate_x_matrix),
    RandAugmentOp("TranslateY", -0.3, 0.3, matrix=_translate_y_matrix),
)
"""MLKD's ``augment_list()``, in its order, with its magnitude ranges."""


# ---------------------------------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=64)
def _levels(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``0..255`` as ``dtype`` on ``device``: the identity lookup table. Callers must not write to it."""
    return torch.arange(256, dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _positions(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices ``0..H-1``, ``0..W-1`` as float64, to compare with float64 corners."""
    return torch.arange(h, dtype=torch.float64, device=device), torch.arange(
        w, dtype=torch.float64, device=device
    )


@functools.lru_cache(maxsize=16)
def _cutout_fill(device: torch.device) -> torch.Tensor:
    return torch.tensor(CUTOUT_FILL, dtype=torch.uint8, device=device).view(1, 3, 1, 1)


@functools.lru_cache(maxsize=16)
def _zero(device: torch.device) -> torch.Tensor:
    return torch.zeros((), device=device)


@functools.lru_cache(maxsize=16)
def _luma_weights(device: torch.device) -> torch.Tensor:
    return torch.tensor([19595, 38470, 7471], device=device).view(1, 3, 1)


@functools.lru_cache(maxsize=16)
def _border(h: int, w: int, device: torch.device) -> torch.Tensor:
    """bool ``(H, W)``: the one-pixel frame of an ``H x W`` image."""
    border = torch.ones(h, w, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    return border.to(device)


@functools.lru_cache(maxsize=16)
def _eye(device: torch.device) -> torch.Tensor:
    return torch.eye(2, 3, device=device)


@functools.lru_cache(maxsize=64)
def _unit(row: int, col: int, device: torch.device) -> torch.Tensor:
    """``(2, 3)`` zeros with a one at ``[row, col]``."""
    unit = torch.zeros(2, 3)
    unit[row, col] = 1.0
    return unit.to(device)


@dataclass(frozen=True)
class _OpTable:
    """Per-op constants on one device, indexed by the drawn op: ``(14,)`` each (``index`` is
    ``(14, 1, 1)``, for comparing with a ``(rounds, B)`` draw)."""

    low: torch.Tensor
    high: torch.Tensor
    kind: torch.Tensor
    index: torch.Tensor


@functools.lru_cache(maxsize=16)
def _op_table(device: torch.device) -> _OpTable:
    def kind(op: RandAugmentOp) -> int:
        if op.lut is not None:
            return _TABLE
        if op.degenerate is not None:
            return _BLEND
        return _GEOMETRIC if op.matrix is not None else _IDENTITY

    return _OpTable(
        low=torch.tensor([op.low for op in RANDAUGMENT_OPS], dtype=torch.float32, device=device),
        high=torch.tensor([op.high for op in RANDAUGMENT_OPS], dtype=torch.float32, device=device),
        kind=torch.tensor([kind(op) for op in RANDAUGMENT_OPS], device=device),
        index=torch.arange(len(RANDAUGMENT_OPS), device=device).view(-1, 1, 1),
    )


@functools.lru_cache(maxsize=16)
def _normalization_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """255 (0-d), mean and std (``(1, 3, 1, 1)``) as float32 tensors on ``device``."""
    as_tensor = functools.partial(torch.tensor, dtype=torch.float32, device=device)
    return (
        as_tensor(255.0),
        as_tensor(CIFAR100_MEAN).view(1, 3, 1, 1),
        as_tensor(CIFAR100_STD).view(1, 3, 1, 1),
    )


@functools.lru_cache(maxsize=16)
def _crop_offsets(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat offsets ``(1, H*W)`` into a 4-px-padded ``(H+8) x (W+8)`` image of the ``H x W`` window at its
    top-left corner, as it is and mirrored left-right."""
    rows = torch.arange(h, device=device).view(h, 1) * (w + 2 * _PAD)
    cols = torch.arange(w, device=device)
    return (rows + cols).view(1, -1), (rows + (w - 1 - cols)).view(1, -1)


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
