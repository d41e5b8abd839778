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

How it is batched: every sample draws its own parameters, and each RandAugment round is three passes
over the whole batch, one per kind of op, so the sequence of torch ops per call is fixed by the 14 ops
(not by how many samples drew each) and nothing waits for the device (about 130 ops a call for
``num_ops=2``: what a GPU pays in launches; ``python -m harness.bench.augment_ops``):

1. a lookup: AutoContrast, Equalize, Posterize and Solarize map each pixel value on its own, so each is a
   256-entry table per (sample, channel), kept with ``torch.where`` where the sample drew that op (the
   identity table elsewhere) and applied by one gather. Posterize's and Solarize's tables depend on the
   magnitude alone and are built for all rounds at once; AutoContrast's depends on the channel's
   minimum and maximum alone and is read from a table of all 32,896 ranges, built once per device;
2. a blend: Brightness, Color, Contrast and Sharpness are ``Image.blend`` with a degenerate image
   (black, grey, the mean grey level, the smoothed image); one blend with each sample's own, by a
   factor ``v`` where the sample drew one of them and 1 elsewhere (which returns the sample exactly);
3. a warp: the five geometric ops are folded into one per-sample 2x3 matrix (the identity for samples
   that drew another op; a nearest-pixel identity warp returns the sample exactly), turned into a grid
   once for all rounds and applied by one ``grid_sample`` per round.

Between the crop and the normalization the image is float32 whole numbers (exact for ``uint8``
values), so no pass converts it back and forth. A sample draws one op per round, so one pass at most
changes it, and each pass computes the same values as the op applied on its own
(``RandAugmentOp.__call__``, which the tests hold to PIL). On the CPU the whole-batch passes cost a few
milliseconds more per batch of 64 than passes over only the samples that drew their ops (an earlier
design), next to a training step of seconds there.

Random numbers come from ``generator`` (on the batch's device) or the global torch RNG, drawn in a fixed
order: crop offsets, flips, then per RandAugment round the op indices and magnitudes, then cutout's size
and centre. The same seed on the same device gives the same batch.

Example
-------
>>> g = torch.Generator(device=x.device).manual_seed(0)          # doctest: +SKIP
>>> weak, strong = weak_view(x, g), strong_view(x, g)              # float32 (B, 3, 32, 32) each
>>> weak, strong = weak_and_strong_views(x, g)                      # the same, in fewer ops
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
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
    "weak_and_strong_views",
    "weak_view",
]

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)  # official SLD/MLKD code, mdistiller/dataset/cifar100.py
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CUTOUT_FILL = (125, 123, 114)  # MLKD's cutout grey, about the dataset mean
_PAD = 4
_NUM_OPS = 2
_MAX_CUTOUT = 0.5  # of the image side
# Keys of _constant, built once here rather than at every call of the ops that read them.
_POSTERIZE_MASKS = tuple(255 - ((1 << (8 - bits)) - 1) for bits in range(9))  # the top `bits` bits set
_INVERTED_LEVELS = tuple(range(255, -1, -1))


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
    return _normalized(x.float())


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


def weak_and_strong_views(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weak_view(x, g), strong_view(x, g))`` with one generator, bit for bit, in fewer ops: both crops
    are one gather and both normalizations one pass. The random numbers are drawn in the same order as
    the two calls draw them (the weak view's crop, then the strong view's crop, RandAugment, Cutout).

    Returns two ``float32 (B, 3, H, W)`` views of one ``(2, B, 3, H, W)`` tensor.
    """
    _check_batch(x, generator)
    crops = _crop_flip_drawn(x, *_crop_draws(x, generator, views=2)).float()
    strong = _cutout_drawn(
        _rand_augment_drawn(crops[1], *_rand_augment_draws(x, generator)), _cutout_draws(x, generator)
    )
    weak, strong = _normalized(torch.stack([crops[0], strong])).unbind(0)
    return weak, strong


# ------------------------------------------------------------------------------------ uint8 -> uint8 steps


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``uint8`` batch -> ``uint8`` batch: each sample a random ``H x W`` window of its zero-padded self
    (offsets uniform in ``0..2*4``), mirrored left-right with probability 1/2."""
    _check_batch(x, generator)
    return _crop_flip_drawn(x, *_crop_draws(x, generator, views=1))[0]


def _crop_draws(
    x: torch.Tensor, generator: torch.Generator | None, views: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each view's top and left offsets and flip uniforms, ``(views, B)`` each, drawn view by view in
    the order ``random_crop_flip`` draws them (into preallocated rows: no op to stack them)."""
    b, device = x.shape[0], x.device
    top = torch.empty((views, b), dtype=torch.long, device=device)
    left = torch.empty_like(top)
    flip_u = torch.empty((views, b), device=device)
    for k in range(views):
        torch.randint(0, 2 * _PAD + 1, (b,), out=top[k], generator=generator)
        torch.randint(0, 2 * _PAD + 1, (b,), out=left[k], generator=generator)
        torch.rand(b, out=flip_u[k], generator=generator)
    return top, left, flip_u


def _crop_flip_drawn(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip_u: torch.Tensor
) -> torch.Tensor:
    """The crops of ``x`` for draws ``(views, B)`` each: ``uint8 (views, B, C, H, W)``, one gather."""
    (views, b), (c, h, w) = top.shape, x.shape[1:]
    padded = F.pad(x, (_PAD, _PAD, _PAD, _PAD)).view(1, b, c, -1)
    # Offsets of the window at (0, 0), as it is or mirrored, plus each sample's shift.
    window, mirrored = _crop_offsets(h, w, x.device)
    shift = torch.add(left, top, alpha=w + 2 * _PAD)
    offsets = torch.where((flip_u < 0.5).unsqueeze(-1), mirrored, window) + shift.unsqueeze(-1)
    index = offsets.view(views, b, 1, h * w).expand(views, b, c, h * w)
    return padded.expand(views, b, c, padded.shape[-1]).gather(3, index).view(views, b, c, h, w)


def rand_augment(
    x: torch.Tensor, generator: torch.Generator | None = None, num_ops: int = _NUM_OPS
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
    return _rand_augment_drawn(x, *_rand_augment_draws(x, generator, num_ops))


def _rand_augment_draws(
    x: torch.Tensor, generator: torch.Generator | None, num_ops: int = _NUM_OPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Op indices and uniforms ``(num_ops, B)``, round by round: the op, then the magnitude."""
    b, device = x.shape[0], x.device
    choice = torch.empty((num_ops, b), dtype=torch.long, device=device)
    u = torch.empty((num_ops, b), device=device)
    for r in range(num_ops):
        torch.randint(0, len(RANDAUGMENT_OPS), (b,), out=choice[r], generator=generator)
        torch.rand(b, out=u[r], generator=generator)
    return choice, u


def _rand_augment_drawn(x: torch.Tensor, choice: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """:func:`rand_augment` with its draws given: op indices ``choice``, uniforms ``u``, ``(rounds, B)``.
    Takes and returns ``uint8`` or float images (whole numbers in ``[0, 255]``); works in float32."""
    dtype, x = x.dtype, x.float()
    rounds, b = choice.shape
    h, w = x.shape[-2:]
    # Everything that depends on the draws alone is computed for all rounds at once.
    table = _op_table(x.device)
    low_span = table.low_span[choice]
    v = low_span[..., 0] + low_span[..., 1] * u  # low + (high - low) * u, per draw
    drew = choice == table.index  # (14, rounds, B)
    # A blend by 1 returns the sample as it is: the factor of the samples that drew another op.
    factor = torch.where(table.blends[choice], v, _one(x.device))
    lut_by_value = _merged(
        drew.view(len(RANDAUGMENT_OPS), rounds, b, 1, 1),
        _levels(torch.uint8, x.device),
        ((k, op.lut(None, v.view(-1)).view(rounds, b, 1, 256)) for k, op in _ops("lut_by_value")),
    )
    flat_drew = drew.view(len(RANDAUGMENT_OPS), -1, 1, 1)
    matrices = _matrices(v.view(-1), choice.view(-1), flat_drew, h, w)
    grids = _grid(matrices, h, w).view(rounds, b, h, w, 2)
    for r in range(rounds):
        # A sample drew one op this round, so at most one of the three passes changes it; each pass
        # leaves the other samples exactly as they are.
        planes = _Planes(x)  # the round's input, which the table and blend ops read
        round_drew = drew[:, r].view(len(RANDAUGMENT_OPS), b, 1, 1)
        lut = _merged(
            round_drew, lut_by_value[r], ((k, op.lut(planes, v[r])) for k, op in _ops("lut_by_image"))
        )
        x = _apply_lut(planes, lut)
        degenerate = _merged(
            round_drew.unsqueeze(-1), None, ((k, op.degenerate(planes)) for k, op in _ops("degenerate"))
        )
        # Every factor is in [0, 1], so the blend stays in [0, 255] and needs no clamp (_blend_values).
        x = _blend_values(degenerate, x, factor[r].view(b, 1, 1, 1), clamp=False)
        x = _sample(x, grids[r])
    return x.to(dtype)


def _merged(
    drew: torch.Tensor, base: torch.Tensor | None, values: Iterable[tuple[int, torch.Tensor]]
) -> torch.Tensor:
    """Each ``(k, value)`` where the sample drew op ``k`` (``drew[k]``), ``base`` elsewhere: one ``where``
    per op (none for the first when there is no base: its value stands in for every other sample)."""
    merged = base
    for k, value in values:
        merged = value if merged is None else torch.where(drew[k], value, merged)
    assert merged is not None
    return merged


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
    return _cutout_drawn(x, _cutout_draws(x, generator))


def _cutout_draws(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand((3, x.shape[0]), dtype=torch.float64, device=x.device, generator=generator)


def _cutout_drawn(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """:func:`cutout` with its uniforms ``u`` given, float64 ``(3, B)``; ``x`` ``uint8`` or float."""
    b, _, h, w = x.shape
    # (0.5 * W) is exact, so u * (0.5 * W) is u * 0.5 * W to the bit.
    v = u[0] * (_MAX_CUTOUT * w)
    # Both axes at once: row 0 is x (columns), row 1 is y (rows).
    size = _constant((float(w), float(h)), torch.float64, x.device).view(2, 1)
    one_minus_size = _constant((1.0 - w, 1.0 - h), torch.float64, x.device).view(2, 1)
    low = (size + one_minus_size * u[1:] - v / 2.0).clamp(min=0).floor()
    # With whole-number positions, `pos <= min(size, low + v)` floored is `pos <= low + v`: every
    # position is below the size, and a whole number is <= y exactly when it is <= floor(y).
    positions = _positions(max(h, w), x.device)
    inside = (positions >= low.unsqueeze(-1)) & (positions <= (low + v).unsqueeze(-1))  # (2, B, max(H, W))
    in_rows = inside[1, :, :h] & (u[0] > 0).view(b, 1)  # v == 0 exactly when u == 0: no hole
    hole = in_rows.view(b, 1, h, 1) & inside[0, :, :w].view(b, 1, 1, w)
    return torch.where(hole, _cutout_fill(x.dtype, x.device), x)


# ------------------------------------------------------------------------------------------------- the 14 ops


class _Planes:
    """A batch as float32 whole numbers and the per-image statistics that several ops read, each
    computed on first use (a RandAugment round computes the grey image once, for both Contrast and
    Color)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    @functools.cached_property
    def values(self) -> torch.Tensor:
        """``int64 (B, C, H*W)``: the pixel values as indices (into a lookup table, a histogram)."""
        b, c, h, w = self.x.shape
        return self.x.long().view(b, c, h * w)

    @functools.cached_property
    def channel_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each channel's smallest and largest value, ``int64 (B, C)`` each."""
        return self.values.aminmax(dim=-1)

    @functools.cached_property
    def luma(self) -> torch.Tensor:
        return _luma(self)


@dataclass(frozen=True)
class RandAugmentOp:
    """One RandAugment op ``op(x_uint8, v) -> uint8`` with a magnitude ``v`` ``(B,)`` drawn from
    ``[low, high]``, given in the form that lets a batch share one pass (at most one of the three; none
    for Identity):

    ``lut(planes, v)``
        a per-pixel-value table, ``uint8`` or ``int64`` ``(B, 1 or C, 256)``; ``lut_reads_image``
        says whether it depends on the image (AutoContrast, Equalize) or on ``v`` alone (Posterize,
        Solarize: then ``planes`` is ``None``, and a batch builds the tables of all its rounds at once);
    ``degenerate(planes)``
        the image that ``x`` is blended with (factor ``v``): float32 whole-number pixel values,
        broadcastable to ``x``;
    ``matrix(v, height, width)``
        ``(B, 2, 3)``, output pixel -> input pixel in pixel units with pixel centres at ``i + 0.5``;
        ``linear``: it is ``I + v * (matrix(1) - I)`` (the shears and translations), which a batch
        builds with one multiply and add for all of them.
    """

    name: str
    low: float
    high: float
    lut: Callable[[_Planes | None, torch.Tensor], torch.Tensor] | None = None
    lut_reads_image: bool = False
    degenerate: Callable[[_Planes], torch.Tensor] | None = None
    matrix: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None
    linear: bool = False

    def __call__(self, x: torch.Tensor, v: float | torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        v = torch.as_tensor(v, dtype=torch.float32, device=x.device).expand(x.shape[0])
        planes = _Planes(x.float())
        if self.lut is not None:
            out = _apply_lut(planes, self.lut(planes if self.lut_reads_image else None, v))
        elif self.degenerate is not None:
            out = _blend_values(self.degenerate(planes), planes.x, v.view(-1, 1, 1, 1))
        elif self.matrix is not None:
            out = _warp(planes.x, self.matrix(v, x.shape[-2], x.shape[-1]))
        else:
            return x
        return out.to(torch.uint8)


def _apply_lut(planes: _Planes, lut: torch.Tensor) -> torch.Tensor:
    """Each pixel replaced by its entry in its (sample, channel)'s 256-entry ``lut``: float32."""
    b, c, h, w = planes.x.shape
    return lut.expand(b, c, 256).gather(2, planes.values).view(b, c, h, w).float()


def _blend_values(
    degenerate: torch.Tensor | float, x: torch.Tensor, factor: torch.Tensor, *, clamp: bool = True
) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, x, factor)`` on float32 pixel values: truncate toward zero, clip to
    [0, 255]. A factor of 1 gives ``x`` exactly (``x - degenerate`` is exact on whole numbers).

    ``clamp=False`` skips the clip, which changes nothing for factors in ``[0, 1]``: then
    ``f * (x - d)`` rounds to between 0 and ``x - d`` (rounding is monotone and ``x - d`` is exact),
    so the sum lies between ``d`` and ``x``, both in ``[0, 255]``."""
    blended = degenerate + factor * (x - degenerate)
    return (blended.clamp(0, 255) if clamp else blended).floor()


def _luma(planes: _Planes) -> torch.Tensor:
    """PIL ``convert("L")``, ITU-R 601-2 luma in 16-bit fixed point: ``(x . w + 2^15) >> 16``, float32
    ``(B, 1, H, W)``. Every product and partial sum is a whole number below 2^24, exact in float32."""
    weighted = (planes.x * _luma_weights(planes.x.device)).sum(dim=1, keepdim=True)
    return torch.div(weighted + 0x8000, 0x10000, rounding_mode="floor")


@functools.lru_cache(maxsize=16)
def _autocontrast_table(device: torch.device) -> torch.Tensor:
    """AutoContrast's table for every channel range: ``uint8 (256 * 256, 256)``, row ``lo * 256 + hi``
    (16 MiB per device, built once in chunks of 16 ``lo`` values).

    PIL's formula, in double precision as PIL computes it: the result truncates, and products that
    should be whole numbers land just below them (255 * (255/167) - 88 * (255/167) = 254.99999999999997).
    A flat channel (``hi <= lo``) stays as it is."""
    levels = _levels(torch.float64, device)
    hi = levels.view(1, 256, 1)
    rows = []
    for start in range(0, 256, 16):
        lo = levels[start : start + 16].view(16, 1, 1)
        # A tensor numerator: torch turns `scalar / tensor` into a multiply by the reciprocal, off by an ulp.
        scale = torch.full((16, 256, 1), 255.0, dtype=torch.float64, device=device) / (hi - lo).clamp(min=1)
        stretched = (levels * scale - lo * scale).floor().clamp(0, 255).to(torch.uint8)
        rows.append(torch.where(hi > lo, stretched, _levels(torch.uint8, device)))
    return torch.cat(rows).view(256 * 256, 256)


def _autocontrast(planes: _Planes, v: torch.Tensor) -> torch.Tensor:
    lo, hi = planes.channel_range
    return _autocontrast_table(planes.x.device)[torch.add(hi, lo, alpha=256)]


def _brightness(planes: _Planes) -> torch.Tensor:
    return _zero(planes.x.device)  # blend with black


def _color(planes: _Planes) -> torch.Tensor:
    return planes.luma


def _contrast(planes: _Planes) -> torch.Tensor:
    # Blend with the mean luma, rounded as PIL does: int(mean + 0.5). A sum of uint8 values is exact.
    return (planes.luma.mean(dim=(-3, -2, -1), keepdim=True) + 0.5).floor()


def _equalize(planes: _Planes, v: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per channel: ``lut[i] = (step // 2 + #pixels below i) // step`` with
    ``step = (#pixels - #pixels at the top value) // 255``; identity when ``step == 0``. ``int64``."""
    b, c, h, w = planes.x.shape
    flat = planes.values.view(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=flat.device).scatter_add_(
        1, flat, _ones_long(flat.device).expand_as(flat)
    )
    below = hist.cumsum(dim=1) - hist
    # The pixels below the top value are all but those at it.
    step = below.gather(1, planes.channel_range[1].view(b * c, 1)) // 255  # (B*C, 1)
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    return torch.where(step > 0, lut, _levels(torch.long, flat.device)).view(b, c, 256)


def _posterize(planes: _Planes | None, v: torch.Tensor) -> torch.Tensor:
    # MLKD: max(1, int(v)) bits; the mask keeps the top ones.
    masks = _constant(_POSTERIZE_MASKS, torch.uint8, v.device)
    return _levels(torch.uint8, v.device) & masks[v.long().clamp(1, 8)].view(-1, 1, 1)


def _sharpness(planes: _Planes) -> torch.Tensor:
    # PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as one convolution: its sums of small
    # whole numbers (below 2^12) are exact in float32 in any order, and in TF32, which holds them too.
    x = planes.x
    smooth = (F.conv2d(x, _smooth_kernel(x.device), padding=1, groups=x.shape[1]) / 13.0).round()
    # PIL's filter copies the one-pixel border unchanged.
    return torch.where(_border(x.shape[-2], x.shape[-1], x.device), x, smooth)


def _solarize(planes: _Planes | None, v: torch.Tensor) -> torch.Tensor:
    inverted = _constant(_INVERTED_LEVELS, torch.uint8, v.device)
    return torch.where(
        _levels(torch.float32, v.device) >= v.view(-1, 1, 1), inverted, _levels(torch.uint8, v.device)
    )


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


def _matrices(v: torch.Tensor, choice: torch.Tensor, drew: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample warp matrices ``(N, 2, 3)`` for magnitudes ``v`` and op indices ``choice`` ``(N,)``:
    the matrix of the geometric op each sample drew (``drew[k]``: bool ``(N, 1, 1)``, op ``k``), the
    identity for the others.

    The linear ops' matrices are ``I + v * slope[op]``, the identity's too (slope 0): the same float
    operations as :func:`_shift`, since a slope entry is 0, 1 or the image side, and ``(v * w) * 1`` is
    ``v * w``."""
    matrix = _eye(v.device) + v.view(-1, 1, 1) * _slopes(h, w, v.device)[choice]
    return _merged(drew, matrix, ((k, op.matrix(v, h, w)) for k, op in _ops("matrix")))


def _grid(matrix: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``grid_sample``'s ``(N, H, W, 2)`` grid for output -> input pixel maps ``matrix`` ``(N, 2, 3)``.

    ``affine_grid`` wants normalized coordinates (``-1``/``+1`` at the outer pixel edges with
    ``align_corners=False``): with ``S = diag(w/2, h/2)`` and ``p = S (u + 1)``, the map ``p -> A p + t``
    becomes ``u -> S^-1 A S u + S^-1 (A S 1 + t) - 1``; both rows at once.
    """
    sx, sy = w / 2.0, h / 2.0
    linear = matrix[..., :2] * _constant((1.0, sy / sx, sx / sy, 1.0), torch.float32, matrix.device).view(
        2, 2
    )
    offset = (matrix[..., 0] * sx + matrix[..., 1] * sy + matrix[..., 2]) / _constant(
        (sx, sy), torch.float32, matrix.device
    ) - 1.0
    theta = torch.cat([linear, offset.unsqueeze(-1)], dim=-1)
    return F.affine_grid(theta, [theta.shape[0], 1, h, w], align_corners=False)


def _sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Nearest-pixel ``grid_sample`` with black fill on float32 whole numbers (nearest sampling never
    mixes values, so they stay whole). An identity grid returns ``x`` exactly: its coordinates land
    within rounding error of the pixel centres, and nearest sampling rounds that away."""
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _warp(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Nearest-pixel warp with black fill; ``matrix`` ``(B, 2, 3)`` maps output to input pixel coordinates."""
    return _sample(x, _grid(matrix, x.shape[-2], x.shape[-1]))


RANDAUGMENT_OPS: tuple[RandAugmentOp, ...] = (
    RandAugmentOp("AutoContrast", 0.0, 1.0, lut=_autocontrast, lut_reads_image=True),
    RandAugmentOp("Brightness", 0.05, 0.95, degenerate=_brightness),
    RandAugmentOp("Color", 0.05, 0.95, degenerate=_color),
    RandAugmentOp("Contrast", 0.05, 0.95, degenerate=_contrast),
    RandAugmentOp("Equalize", 0.0, 1.0, lut=_equalize, lut_reads_image=True),
    RandAugmentOp("Identity", 0.0, 1.0),
    RandAugmentOp("Posterize", 4.0, 8.0, lut=_posterize),
    RandAugmentOp("Rotate", -30.0, 30.0, matrix=_rotate_matrix),
    RandAugmentOp("Sharpness", 0.05, 0.95, degenerate=_sharpness),
    RandAugmentOp("ShearX", -0.3, 0.3, matrix=_shear_x_matrix, linear=True),
    RandAugmentOp("ShearY", -0.3, 0.3, matrix=_shear_y_matrix, linear=True),
    RandAugmentOp("Solarize", 0.0, 256.0, lut=_solarize),
    RandAugmentOp("TranslateX", -0.3, 0.3, matrix=_translate_x_matrix, linear=True),
    RandAugmentOp("TranslateY", -0.3, 0.3, matrix=_translate_y_matrix, linear=True),
)
"""MLKD's ``augment_list()``, in its order, with its magnitude ranges."""


@functools.lru_cache(maxsize=8)
def _ops(kind: str) -> tuple[tuple[int, RandAugmentOp], ...]:
    """``(index, op)`` of the ops a batched pass merges: ``lut_by_value``, ``lut_by_image``,
    ``degenerate`` or ``matrix`` (the geometric ops that are not linear)."""
    keep = {
        "lut_by_value": lambda op: op.lut is not None and not op.lut_reads_image,
        "lut_by_image": lambda op: op.lut is not None and op.lut_reads_image,
        "degenerate": lambda op: op.degenerate is not None,
        "matrix": lambda op: op.matrix is not None and not op.linear,
    }[kind]
    return tuple((k, op) for k, op in enumerate(RANDAUGMENT_OPS) if keep(op))


# ---------------------------------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=64)
def _levels(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``0..255`` as ``dtype`` on ``device``: the identity lookup table. Callers must not write to it."""
    return torch.arange(256, dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _positions(n: int, device: torch.device) -> torch.Tensor:
    """Pixel indices ``0..n-1`` as float64, to compare with float64 corners."""
    return torch.arange(n, dtype=torch.float64, device=device)


@functools.lru_cache(maxsize=16)
def _cutout_fill(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(CUTOUT_FILL, dtype=dtype, device=device).view(1, 3, 1, 1)


@functools.lru_cache(maxsize=16)
def _zero(device: torch.device) -> torch.Tensor:
    return torch.zeros((), device=device)


@functools.lru_cache(maxsize=16)
def _one(device: torch.device) -> torch.Tensor:
    return torch.ones((), device=device)


@functools.lru_cache(maxsize=16)
def _ones_long(device: torch.device) -> torch.Tensor:
    return torch.ones((1, 1), dtype=torch.long, device=device)


@functools.lru_cache(maxsize=16)
def _luma_weights(device: torch.device) -> torch.Tensor:
    return torch.tensor([19595.0, 38470.0, 7471.0], device=device).view(1, 3, 1, 1)


@functools.lru_cache(maxsize=16)
def _smooth_kernel(device: torch.device) -> torch.Tensor:
    """PIL's SMOOTH kernel times 13, one copy per channel: ``(3, 1, 3, 3)``."""
    kernel = torch.ones(3, 3)
    kernel[1, 1] = 5.0
    return kernel.expand(3, 1, 3, 3).contiguous().to(device)


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


@functools.lru_cache(maxsize=16)
def _slopes(h: int, w: int, device: torch.device) -> torch.Tensor:
    """``(14, 2, 3)``: ``matrix(1) - I`` of each linear op (exact: its entries are 0, 1 or a side), zeros
    for the other ops."""
    one = torch.ones(1, device=device)
    slopes = [
        op.matrix(one, h, w)[0] - _eye(device) if op.linear else torch.zeros(2, 3, device=device)
        for op in RANDAUGMENT_OPS
    ]
    return torch.stack(slopes)


@dataclass(frozen=True)
class _OpTable:
    """Per-op constants on one device, indexed by the drawn op: ``low_span`` ``(14, 2)`` (``low`` and
    ``high - low``), ``blends`` ``(14,)`` (the op is a blend), ``index`` ``(14, 1, 1)`` (for comparing
    with a ``(rounds, B)`` draw)."""

    low_span: torch.Tensor
    blends: torch.Tensor
    index: torch.Tensor


@functools.lru_cache(maxsize=16)
def _op_table(device: torch.device) -> _OpTable:
    low = torch.tensor([op.low for op in RANDAUGMENT_OPS], dtype=torch.float32)
    high = torch.tensor([op.high for op in RANDAUGMENT_OPS], dtype=torch.float32)
    return _OpTable(
        low_span=torch.stack([low, high - low], dim=-1).to(device),  # float32 high - low, as per draw
        blends=torch.tensor([op.degenerate is not None for op in RANDAUGMENT_OPS], device=device),
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


def _normalized(x: torch.Tensor) -> torch.Tensor:
    """:func:`to_float_normalized` of float32 whole numbers, ``(..., 3, H, W)``."""
    scale, mean, std = _normalization_constants(x.device)
    return (x / scale - mean) / std


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
