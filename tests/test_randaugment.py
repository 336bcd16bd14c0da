"""The batched strong view (sortkd.data.randaugment) against torchvision's PIL path, op by op.

Reference images are 32x32 crops of a real photograph (matplotlib's bundled grace_hopper.jpg)
plus a few degenerate images for the histogram ops. Tolerances, per op:
- AutoContrast, Brightness, Color, Contrast, Equalize, Identity, Posterize, Sharpness, Solarize:
  exact (PIL's integer / float32 arithmetic is reproduced);
- ShearX, ShearY, TranslateX, TranslateY, Rotate (nearest resampling): a pixel may differ only
  where its source point lies within 1e-3 px of a pixel boundary. PIL walks the map in 16.16
  fixed point, the batched version evaluates it in float64; which side of a boundary a point
  within ~5e-4 px of it falls on differs.
- Cutout: exact against PIL's ImageDraw rectangle.
"""
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw

from sortkd.data import randaugment as RA

SIZE = 32
EDGE_TOLERANCE_PX = 1e-3
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def photo_crops(count: int, seed: int = 0) -> np.ndarray:
    """uint8 [count, 32, 32, 3]: random square crops of a photograph, resized to 32x32."""
    import matplotlib.cbook as cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        photo = np.asarray(im.convert("RGB"))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        side = int(rng.integers(40, 400))
        y = int(rng.integers(0, photo.shape[0] - side))
        x = int(rng.integers(0, photo.shape[1] - side))
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((SIZE, SIZE), Image.BILINEAR)
        out.append(np.asarray(crop))
    return np.stack(out)


def degenerate_images() -> np.ndarray:
    """Flat, two-valued and saturated images: the identity branches of AutoContrast / Equalize."""
    flat = np.full((SIZE, SIZE, 3), 77, np.uint8)
    two = np.zeros((SIZE, SIZE, 3), np.uint8)
    two[:, 16:] = 200
    few_bright = np.zeros((SIZE, SIZE, 3), np.uint8)  # Equalize's table reaches 256 here: clipped
    few_bright[1:] = (np.arange(31 * SIZE * 3).reshape(31, SIZE, 3) % 200).astype(np.uint8)
    few_bright[0, :2] = 200
    saturated = np.where(np.indices((SIZE, SIZE, 3)).sum(0) % 2 == 0, 0, 255).astype(np.uint8)
    return np.stack([flat, two, few_bright, saturated])


IMAGES = np.concatenate([photo_crops(60), degenerate_images()])


def as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def as_hwc(batch: torch.Tensor) -> np.ndarray:
    return batch.permute(0, 2, 3, 1).numpy()


def torchvision_op(name: str, img: Image.Image, v: float) -> Image.Image:
    """The op through torchvision.transforms.functional on a PIL image."""
    if name == "AutoContrast":
        return TF.autocontrast(img)
    if name == "Brightness":
        return TF.adjust_brightness(img, v)
    if name == "Color":
        return TF.adjust_saturation(img, v)
    if name == "Contrast":
        return TF.adjust_contrast(img, v)
    if name == "Equalize":
        return TF.equalize(img)
    if name == "Identity":
        return img
    if name == "Posterize":
        return TF.posterize(img, int(v))
    if name == "Rotate":
        return TF.rotate(img, v)  # nearest, black fill, about the centre: PIL's img.rotate(v)
    if name == "Sharpness":
        return TF.adjust_sharpness(img, v)
    if name == "Solarize":
        return TF.solarize(img, v)
    # The upstream ops map output (x, y) to input (x + v·y, y) etc.; torchvision's affine about
    # the origin with shear angle atan(v), and translation by −v·size, is the same map.
    shear = math.degrees(math.atan(v))
    if name == "ShearX":
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[shear, 0.0], center=[0, 0])
    if name == "ShearY":
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, shear], center=[0, 0])
    if name == "TranslateX":
        return TF.affine(img, angle=0.0, translate=[-v * SIZE, 0], scale=1.0, shear=[0.0, 0.0])
    if name == "TranslateY":
        return TF.affine(img, angle=0.0, translate=[0, -v * SIZE], scale=1.0, shear=[0.0, 0.0])
    raise AssertionError(name)


def upstream_pil_op(name: str, img: Image.Image, v: float) -> Image.Image:
    """The geometric ops as the upstream code calls PIL (Image.transform / Image.rotate)."""
    if name == "Rotate":
        return img.rotate(v)
    data = {"ShearX": (1, v, 0, 0, 1, 0), "ShearY": (1, 0, 0, v, 1, 0),
            "TranslateX": (1, 0, v * SIZE, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, v * SIZE)}[name]
    return img.transform(img.size, Image.AFFINE, data)


def source_point(name: str, v: float, x: int, y: int) -> tuple[float, float]:
    """Where PIL's inverse map sends the centre of output pixel (x, y), in float64."""
    X, Y = x + 0.5, y + 0.5
    if name == "Rotate":  # Image.rotate's matrix
        a = -math.radians(v % 360.0)
        c, s = math.cos(a), math.sin(a)
        return c * X + s * Y + (-c * SIZE / 2 - s * SIZE / 2 + SIZE / 2), \
            -s * X + c * Y + (s * SIZE / 2 - c * SIZE / 2 + SIZE / 2)
    return {"ShearX": (X + v * Y, Y), "ShearY": (X, v * X + Y),
            "TranslateX": (X + v * SIZE, Y), "TranslateY": (X, Y + v * SIZE)}[name]


def magnitudes_for(name: str, count: int, seed: int) -> torch.Tensor:
    lo, hi = {n: (lo, hi) for n, lo, hi in RA.OPS}[name][0:2]
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(count, generator=g, dtype=torch.float64)


def assert_matches(name, got, ref, mags):
    """Exact, except geometric ops at pixels whose source point is within the edge tolerance."""
    differ = (got != ref).any(axis=-1)
    if name not in GEOMETRIC:
        assert not differ.any(), f"{name}: {int(differ.sum())} pixels differ"
        return
    assert differ.mean() < 1e-3, f"{name}: {differ.mean():.2%} of pixels differ"
    for i, y, x in np.argwhere(differ):
        sx, sy = source_point(name, float(mags[i]), int(x), int(y))
        edge = min(abs(sx - round(sx)), abs(sy - round(sy)))
        assert edge < EDGE_TOLERANCE_PX, f"{name} v={float(mags[i])}: pixel ({y}, {x}) differs {edge:.2e} px from an edge"


@pytest.mark.parametrize("name", RA.OP_NAMES)
def test_each_op_matches_torchvision_pil(name):
    n = len(IMAGES)
    mags = magnitudes_for(name, n, seed=RA.OP_ID[name])
    got = as_hwc(RA.apply_ops(as_batch(IMAGES), torch.full((n,), RA.OP_ID[name]), mags))
    ref = np.stack([np.asarray(torchvision_op(name, Image.fromarray(IMAGES[i]), float(mags[i])))
                    for i in range(n)])
    assert_matches(name, got, ref, mags)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_match_the_upstream_pil_calls(name):
    n = len(IMAGES)
    mags = magnitudes_for(name, n, seed=100 + RA.OP_ID[name])
    got = as_hwc(RA.apply_ops(as_batch(IMAGES), torch.full((n,), RA.OP_ID[name]), mags))
    ref = np.stack([np.asarray(upstream_pil_op(name, Image.fromarray(IMAGES[i]), float(mags[i])))
                    for i in range(n)])
    assert_matches(name, got, ref, mags)


def test_op_edge_magnitudes_exact():
    """Range ends where a rule changes: Posterize bits 4 and 7, Solarize thresholds 0 / 128 / 255.5."""
    cases = [("Posterize", 4.0), ("Posterize", 7.999), ("Solarize", 0.0), ("Solarize", 128.0),
             ("Solarize", 255.5), ("Brightness", 0.05), ("Contrast", 0.95)]
    x = as_batch(IMAGES[:8])
    for name, v in cases:
        mags = torch.full((8,), v, dtype=torch.float64)
        got = as_hwc(RA.apply_ops(x, torch.full((8,), RA.OP_ID[name]), mags))
        ref = np.stack([np.asarray(torchvision_op(name, Image.fromarray(IMAGES[i]), v)) for i in range(8)])
        assert np.array_equal(got, ref), (name, v)


@pytest.mark.parametrize("name", ["Brightness", "Color", "Contrast", "Sharpness"])
def test_enhance_ops_blend_in_float32_like_pil(name):
    """Every pixel value against round decimal factors, where a float64 blend would land on the
    other side of an integer (e.g. 20 · 0.35 = 7 in float64, 6.9999998 in float32)."""
    ramp = (np.arange(SIZE * SIZE * 3).reshape(SIZE, SIZE, 3) % 256).astype(np.uint8)
    steps = np.arange(0.05, 0.951, 0.05)
    factors = np.concatenate([np.round(steps, 2), steps])
    x = as_batch(np.repeat(ramp[None], len(factors), axis=0))
    got = as_hwc(RA.apply_ops(x, torch.full((len(factors),), RA.OP_ID[name]),
                              torch.tensor(factors, dtype=torch.float64)))
    ref = np.stack([np.asarray(torchvision_op(name, Image.fromarray(ramp), float(v))) for v in factors])
    assert np.array_equal(got, ref)


def pil_cutout(img: Image.Image, side_fraction: float, cx: float, cy: float) -> Image.Image:
    """Upstream Cutout, given its draws: a PIL rectangle with inclusive integer-cast corners."""
    if side_fraction <= 0:
        return img
    v = side_fraction * img.size[0]
    x0, y0 = int(max(0, cx - v / 2.0)), int(max(0, cy - v / 2.0))
    x1, y1 = min(img.size[0], x0 + v), min(img.size[1], y0 + v)
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), RA.CUTOUT_FILL)
    return img


def test_cutout_matches_pil_rectangle():
    g = torch.Generator().manual_seed(7)
    draws = RA.draw_strong(len(IMAGES), g)
    params = draws.cutout.clone()
    params[0] = torch.tensor([0.0, 10.0, 10.0], dtype=torch.float64)   # no square
    params[1] = torch.tensor([0.5, 32.0, 32.0], dtype=torch.float64)   # clipped at the corner
    params[2] = torch.tensor([0.001, 1.0, 1.0], dtype=torch.float64)   # one pixel
    got = as_hwc(RA.cutout(as_batch(IMAGES), params))
    ref = np.stack([np.asarray(pil_cutout(Image.fromarray(IMAGES[i]), *params[i].tolist()))
                    for i in range(len(IMAGES))])
    assert np.array_equal(got, ref)
    assert np.array_equal(got[0], IMAGES[0]) and (got[2] != IMAGES[2]).any(axis=-1).sum() == 1


def upstream_strong_view(img: np.ndarray, ops, mags, cut) -> np.ndarray:
    """The upstream per-image loop (two ops in order, then Cutout) on PIL, with given draws."""
    pil = Image.fromarray(img)
    for op, v in zip(ops, mags):
        name = RA.OP_NAMES[op]
        pil = upstream_pil_op(name, pil, v) if name in GEOMETRIC else torchvision_op(name, pil, v)
    return np.asarray(pil_cutout(pil, *cut))


def test_rand_augment_matches_the_per_image_pil_loop():
    n = len(IMAGES)
    draws = RA.draw_strong(n, torch.Generator().manual_seed(3))
    got = as_hwc(RA.rand_augment(as_batch(IMAGES), draws))
    exact = 0
    for i in range(n):
        ops, mags = draws.ops[i].tolist(), draws.magnitudes[i].tolist()
        ref = upstream_strong_view(IMAGES[i], ops, mags, draws.cutout[i].tolist())
        if np.array_equal(got[i], ref):
            exact += 1
            continue
        # Only a geometric op can shift a boundary pixel (and a later histogram op may spread
        # that by one level).
        assert any(RA.OP_NAMES[op] in GEOMETRIC for op in ops), (i, ops, mags)
        assert (got[i] != ref).any(axis=-1).mean() < 0.05
    assert exact >= n - 3


def test_batch_equals_one_image_at_a_time():
    """Per-sample parameters, histograms and means: no sample leaks into another."""
    draws = RA.draw_strong(16, torch.Generator().manual_seed(11))
    x = as_batch(IMAGES[:16])
    whole = RA.rand_augment(x, draws)
    for i in range(16):
        assert torch.equal(whole[i:i + 1], RA.rand_augment(x[i:i + 1], draws[i:i + 1]))


def test_draws_are_reproducible_indexable_and_in_range():
    a = RA.draw_strong(20000, torch.Generator().manual_seed(5))
    b = RA.draw_strong(20000, torch.Generator().manual_seed(5))
    c = RA.draw_strong(20000, torch.Generator().manual_seed(6))
    for field in ("ops", "magnitudes", "cutout"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.magnitudes, c.magnitudes)
    index = torch.tensor([5, 0, 19999])
    assert torch.equal(a[index].magnitudes, a.magnitudes[index]) and len(a[index]) == 3
    # Ops: uniform over 14, drawn independently (with replacement) in both slots.
    counts = torch.bincount(a.ops.flatten(), minlength=len(RA.OPS)).double()
    expected = a.ops.numel() / len(RA.OPS)
    assert ((counts - expected).abs() < 5 * math.sqrt(expected)).all()
    assert (a.ops[:, 0] == a.ops[:, 1]).double().mean().item() == pytest.approx(1 / 14, abs=0.01)
    for op, (name, lo, hi) in enumerate(RA.OPS):
        m = a.magnitudes[a.ops == op]
        assert m.min() >= lo and m.max() < hi, name
        # Uniform: the mean sits in the middle of the range.
        assert m.mean().item() == pytest.approx((lo + hi) / 2, abs=0.05 * (hi - lo))
    side, centre = a.cutout[:, 0], a.cutout[:, 1:]
    assert side.min() >= 0 and side.max() < RA.CUTOUT_MAX
    assert centre.min() > 1 and centre.max() <= SIZE


def test_errors():
    x = as_batch(IMAGES[:4])
    draws = RA.draw_strong(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="uint8 tensor"):
        RA.rand_augment(x.float(), draws)
    with pytest.raises(ValueError, match="draws hold 3 rows for 4 images"):
        RA.rand_augment(x, draws[:3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    draws = RA.draw_strong(len(IMAGES), torch.Generator().manual_seed(4))
    cpu = RA.rand_augment(as_batch(IMAGES), draws)
    images, on_device = as_batch(IMAGES).cuda(), draws.to("cuda")
    RA.rand_augment(images, on_device)  # warm-up: first-call set-up may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the hot path raises
    try:
        gpu = RA.rand_augment(images, on_device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    gpu = gpu.cpu()
    # Trigonometry may differ in the last bit between devices: only rotated boundary pixels.
    differ = (cpu != gpu).any(dim=1)
    assert differ.double().mean().item() < 1e-3
    rotated = (draws.ops == RA.OP_ID["Rotate"]).any(dim=1)
    assert not differ[~rotated].any()
