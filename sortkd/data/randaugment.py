"""The strong view of MLKD: FixMatch-style RandAugment + Cutout on device-resident uint8 batches.

Per sample (methods.md, "MLKD"): two ops drawn uniformly, with replacement, from the 14 below,
each with a magnitude drawn uniformly from its range (the nominal m = 10 is unused); then
always Cutout, a square of side U(0, 0.5)·W filled with RGB (125, 123, 114). Every op follows
the PIL definition the upstream code calls (ImageOps / ImageEnhance / Image.transform with
nearest sampling and black fill); the tests compare each op with torchvision's PIL path.

Batched without a Python loop over samples and without host syncs: in each of the two op
stages every sample goes through one affine resampling (the identity unless its op is
geometric), one per-channel lookup table (the identity unless its op is a LUT op) and one
blend with a degenerate image (factor 1 unless its op is an enhancement), all with per-sample
parameters. The draws come from an explicit CPU ``torch.Generator`` for a whole epoch and are
indexed by sample id, so the strong view of a sample depends only on (seed, epoch, sample):
base and sort runs, and resumed runs, see the same strong views whatever the batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# (name, low, high): the magnitude is low + (high − low)·U[0, 1).
OPS = (
    ("AutoContrast", 0.0, 1.0),
    ("Brightness", 0.05, 0.95),
    ("Color", 0.05, 0.95),
    ("Contrast", 0.05, 0.95),
    ("Equalize", 0.0, 1.0),
    ("Identity", 0.0, 1.0),
    ("Posterize", 4.0, 8.0),     # bits = int(magnitude)
    ("Rotate", -30.0, 30.0),     # degrees, counter-clockwise, about the image centre
    ("Sharpness", 0.05, 0.95),
    ("ShearX", -0.3, 0.3),
    ("ShearY", -0.3, 0.3),
    ("Solarize", 0.0, 256.0),    # values >= threshold are inverted
    ("TranslateX", -0.3, 0.3),   # fraction of the width
    ("TranslateY", -0.3, 0.3),   # fraction of the height
)
OP_NAMES = tuple(name for name, _, _ in OPS)
OP_ID = {name: i for i, name in enumerate(OP_NAMES)}
NUM_OPS_PER_SAMPLE = 2
CUTOUT_MAX = 0.5
CUTOUT_FILL = (125, 123, 114)

_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
_LUT = ("AutoContrast", "Equalize", "Posterize", "Solarize")
_BLEND = ("Brightness", "Color", "Contrast", "Sharpness")
# PIL's RGB -> L conversion: fixed-point ITU-R 601-2 luma, rounded.
_LUMA = (19595, 38470, 7471)
# PIL's SMOOTH filter (3x3, divided by 13), stored as float32 the way PIL stores kernels. 0-d
# CPU tensors combine with tensors on any device without a host-to-device copy.
_SMOOTH_EDGE = torch.tensor(1.0 / 13.0, dtype=torch.float32)
_SMOOTH_CENTRE = torch.tensor(5.0 / 13.0, dtype=torch.float32)


@dataclass(frozen=True)
class StrongDraws:
    """The random choices of the strong view for a set of samples (row i = sample i)."""

    ops: torch.Tensor         # int64 [N, 2]: op ids, applied in column order
    magnitudes: torch.Tensor  # float64 [N, 2]: in each op's range
    cutout: torch.Tensor      # float64 [N, 3]: side as a fraction of the width, centre x, centre y (px)

    def __getitem__(self, index) -> "StrongDraws":
        return StrongDraws(self.ops[index], self.magnitudes[index], self.cutout[index])

    def to(self, device) -> "StrongDraws":
        return StrongDraws(self.ops.to(device), self.magnitudes.to(device), self.cutout.to(device))

    def __len__(self) -> int:
        return self.ops.shape[0]


def draw_strong(num_samples: int, generator: torch.Generator, size: int = 32) -> StrongDraws:
    """Draw the strong-view choices of ``num_samples`` samples of ``size``×``size`` images.

    ``generator`` is a CPU generator, e.g. ``sortkd.seeding.generator(seed, "strong", epoch)``;
    the draws are the same on every machine. Move them to the images' device once per epoch.
    """
    ops = torch.randint(0, len(OPS), (num_samples, NUM_OPS_PER_SAMPLE), generator=generator)
    unit = torch.rand((num_samples, NUM_OPS_PER_SAMPLE), generator=generator, dtype=torch.float64)
    low = torch.tensor([lo for _, lo, _ in OPS], dtype=torch.float64)
    span = torch.tensor([float(hi - lo) for _, lo, hi in OPS], dtype=torch.float64)
    magnitudes = low[ops] + span[ops] * unit
    u = torch.rand((num_samples, 3), generator=generator, dtype=torch.float64)
    # The upstream centre is numpy's uniform(W), i.e. low=W, high=1: a value in (1, W].
    centre = size + (1.0 - size) * u[:, 1:]
    cutout = torch.cat([CUTOUT_MAX * u[:, :1], centre], dim=1)
    return StrongDraws(ops, magnitudes, cutout)


def rand_augment(images: torch.Tensor, draws: StrongDraws) -> torch.Tensor:
    """The strong view of uint8 [B, 3, H, W] images (already cropped and flipped): both ops, then
    Cutout. ``draws`` holds one row per image, on the images' device. Returns uint8."""
    _check(images, draws)
    out = images
    for stage in range(draws.ops.shape[1]):
        out = apply_ops(out, draws.ops[:, stage], draws.magnitudes[:, stage])
    return cutout(out, draws.cutout)


def _check(images: torch.Tensor, draws: StrongDraws) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a uint8 tensor [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    if len(draws) != images.shape[0]:
        raise ValueError(f"draws hold {len(draws)} rows for {images.shape[0]} images; index them by sample")
    if draws.ops.device != images.device:
        raise ValueError(f"draws are on {draws.ops.device} but the images are on {images.device}")


# --- one stage: every sample goes through its own op --------------------------------

def apply_ops(images: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """Apply op ``ops[b]`` with magnitude ``magnitudes[b]`` to image ``b``; uint8 in, uint8 out."""
    x = _affine(images, ops, magnitudes)
    x = _lookup(x, _luts(x, ops, magnitudes))
    return _blend(x, ops, magnitudes)


def _is(ops: torch.Tensor, name: str) -> torch.Tensor:
    return ops == OP_ID[name]


def _affine(images: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resampling through PIL's inverse affine map, black outside.

    PIL maps output pixel (x, y) to the input point (a0·X + a1·Y + a2, a3·X + a4·Y + a5) with
    X = x + 0.5, Y = y + 0.5 (pixel centres) and takes the pixel containing it.
    """
    b, _, h, w = images.shape
    m = magnitudes.to(torch.float64)
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    # Rotate: PIL's Image.rotate(v) about (W/2, H/2), angle −v in its inverse matrix.
    theta = -m * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    rotate = (cos, sin, (cos * -cx + sin * -cy) + cx, -sin, cos, (-sin * -cx + cos * -cy) + cy)
    # (a0, a1, a2, a3, a4, a5) per geometric op; every other op gets the identity.
    maps = {
        "Rotate": rotate,
        "ShearX": (one, m, zero, zero, one, zero),
        "ShearY": (one, zero, zero, m, one, zero),
        "TranslateX": (one, zero, m * w, zero, one, zero),
        "TranslateY": (one, zero, zero, zero, one, m * h),
    }
    coeffs = [one, zero, zero, zero, one, zero]
    for name, values in maps.items():
        chosen = _is(ops, name)
        coeffs = [torch.where(chosen, v, c) for v, c in zip(values, coeffs)]
    a0, a1, a2, a3, a4, a5 = (c.view(b, 1, 1) for c in coeffs)
    xs = (torch.arange(w, device=images.device, dtype=torch.float64) + 0.5).view(1, 1, w)
    ys = (torch.arange(h, device=images.device, dtype=torch.float64) + 0.5).view(1, h, 1)
    x_in = torch.floor(a0 * xs + a1 * ys + a2)
    y_in = torch.floor(a3 * xs + a4 * ys + a5)
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    pixel = (y_in.clamp(0, h - 1) * w + x_in.clamp(0, w - 1)).long()  # [B, H, W]
    flat = images.reshape(b, 3, h * w)
    gathered = flat.gather(2, pixel.view(b, 1, h * w).expand(b, 3, h * w)).view(b, 3, h, w)
    return torch.where(inside.unsqueeze(1), gathered, torch.zeros_like(gathered))


def _luts(images: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """int64 [B, 3, 256]: each sample's per-channel lookup table (the identity for non-LUT ops)."""
    b, c, h, w = images.shape
    device = images.device
    levels = torch.arange(256, device=device)
    values = images.reshape(b, c, h * w).long()
    identity = levels.expand(b, c, 256)
    luts = identity

    # AutoContrast (cutoff 0): map [lo, hi] of each channel onto [0, 255]; flat channels unchanged.
    lo = values.amin(dim=2, keepdim=True)
    hi = values.amax(dim=2, keepdim=True)
    span = (hi - lo).clamp_min(1).to(torch.float64)
    # A true division, as PIL's Python: ``255.0 / tensor`` is computed as 255 · (1 / tensor).
    scale = torch.full_like(span, 255.0) / span
    offset = -lo.to(torch.float64) * scale
    stretched = (levels.to(torch.float64) * scale + offset).trunc().clamp(0, 255).long()
    autocontrast = torch.where(hi > lo, stretched, identity)
    luts = torch.where(_is(ops, "AutoContrast").view(b, 1, 1), autocontrast, luts)

    # Equalize: PIL's cumulative-histogram table, its step from the pixels below the brightest
    # value. A scatter-add of ones (integer sums: exact in any order) and no bincount, which
    # reads its input's maximum on the host.
    slots = (values + (torch.arange(b * c, device=device) * 256).view(b, c, 1)).view(-1)
    histogram = torch.zeros(b * c * 256, dtype=torch.int64, device=device)
    histogram = histogram.scatter_add_(0, slots, torch.ones_like(slots)).view(b, c, 256)
    below = torch.cumsum(histogram, dim=2) - histogram  # pixels < level
    step = below.gather(2, hi) // 255
    equalized = ((step // 2 + below) // step.clamp_min(1)).clamp_max(255)
    # step = 0 also covers a single-valued channel (no pixel below the brightest value).
    equalize = torch.where(step > 0, equalized, identity)
    luts = torch.where(_is(ops, "Equalize").view(b, 1, 1), equalize, luts)

    # Posterize: keep the top int(v) bits.
    bits = magnitudes.to(torch.float64).trunc().long().clamp(1, 8).view(b, 1, 1)
    posterize = levels & ~((1 << (8 - bits)) - 1)
    luts = torch.where(_is(ops, "Posterize").view(b, 1, 1), posterize, luts)

    # Solarize: invert every value >= the threshold.
    threshold = magnitudes.to(torch.float64).view(b, 1, 1)
    solarize = torch.where(levels.to(torch.float64) < threshold, levels, 255 - levels)
    return torch.where(_is(ops, "Solarize").view(b, 1, 1), solarize.expand(b, c, 256), luts)


def _lookup(images: torch.Tensor, luts: torch.Tensor) -> torch.Tensor:
    b, c, h, w = images.shape
    index = images.reshape(b, c, h * w).long()
    return luts.gather(2, index).view(b, c, h, w).to(torch.uint8)


def _luma(images: torch.Tensor) -> torch.Tensor:
    """PIL's convert("L") of RGB: int32 [B, 1, H, W]."""
    x = images.to(torch.int32)
    return (x[:, 0:1] * _LUMA[0] + x[:, 1:2] * _LUMA[1] + x[:, 2:3] * _LUMA[2] + 0x8000) >> 16


def _smooth(images: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH in its float32 arithmetic; the one-pixel border is copied."""
    x = images.to(torch.float32)
    edge, centre = _SMOOTH_EDGE, _SMOOTH_CENTRE

    def row(r, middle):  # one kernel row: left·k + centre·k' + right·k, summed left to right
        return (r[..., :-2] * edge + r[..., 1:-1] * middle) + r[..., 2:] * edge

    # PIL accumulates the row below, the row itself, then the row above.
    total = row(x[:, :, 2:], edge) + row(x[:, :, 1:-1], centre)
    total = total + row(x[:, :, :-2], edge)
    # PIL's clip8: 0 below, 255 above, else rounded half up.
    inner = torch.where(total <= 0, 0.0, torch.where(total >= 255, 255.0, torch.floor(total + 0.5)))
    out = images.clone()
    out[:, :, 1:-1, 1:-1] = inner.to(torch.uint8)
    return out


def _blend(images: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """ImageEnhance: PIL's Image.blend(degenerate, image, v) = trunc(d + v·(x − d)) in float32."""
    b = images.shape[0]
    luma = _luma(images)
    count = images.shape[2] * images.shape[3]
    # Contrast's degenerate: the mean luma rounded half up (float64, as PIL's ImageStat).
    mean = torch.floor(luma.sum(dim=(1, 2, 3), keepdim=True).to(torch.float64) / count + 0.5)
    degenerate = torch.zeros_like(images, dtype=torch.float32)  # Brightness: black
    for name, value in (("Color", luma.to(torch.float32)), ("Contrast", mean.to(torch.float32)),
                        ("Sharpness", _smooth(images).to(torch.float32))):
        degenerate = torch.where(_is(ops, name).view(b, 1, 1, 1), value, degenerate)
    blended = _is(ops, "Brightness") | _is(ops, "Color") | _is(ops, "Contrast") | _is(ops, "Sharpness")
    # Factor 1 reproduces the image exactly, so non-enhancement ops pass through unchanged.
    factor = torch.where(blended, magnitudes, torch.ones_like(magnitudes)).to(torch.float32).view(b, 1, 1, 1)
    x = images.to(torch.float32)
    out = degenerate + factor * (x - degenerate)
    return out.clamp(0, 255).trunc().to(torch.uint8)


# --- Cutout ----------------------------------------------------------------------------

def cutout(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Fill a square per image with CUTOUT_FILL, as upstream's PIL ImageDraw rectangle.

    ``params`` is float64 [B, 3]: side as a fraction of the width, centre x, centre y. The
    corners are x0 = int(max(0, cx − v/2)), x1 = min(W, x0 + v) (v = side·W), likewise in y, and
    the rectangle covers x0..int(x1) inclusive. A side of 0 leaves the image unchanged.
    """
    b, _, h, w = images.shape
    side = (params[:, 0] * w).view(b, 1, 1)
    x0 = (params[:, 1].view(b, 1, 1) - side / 2).clamp_min(0).trunc()
    y0 = (params[:, 2].view(b, 1, 1) - side / 2).clamp_min(0).trunc()
    x1 = torch.minimum(x0 + side, torch.full_like(x0, w)).trunc()
    y1 = torch.minimum(y0 + side, torch.full_like(y0, h)).trunc()
    xs = torch.arange(w, device=images.device, dtype=torch.float64).view(1, 1, w)
    ys = torch.arange(h, device=images.device, dtype=torch.float64).view(1, h, 1)
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1) & (side > 0)
    # Built on the device: a copy of the colour from the host would synchronise.
    channel = torch.arange(3, device=images.device).view(1, 3, 1, 1)
    fill = torch.where(channel == 0, CUTOUT_FILL[0],
                       torch.where(channel == 1, CUTOUT_FILL[1], CUTOUT_FILL[2])).to(torch.uint8)
    return torch.where(inside.unsqueeze(1), fill, images)
