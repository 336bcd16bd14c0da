"""The CIFAR training augmentation as explicit, batched view rendering.

torchvision's ``RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize`` draws
a row offset ``dy`` in 0..8, a column offset ``dx`` in 0..8 and a flip bit. Here that choice is
a view id ``(dy * 9 + dx) * 2 + flip`` in 0..161, and the view is rendered by tensor indexing on
whatever device holds the images: no Python loop over samples and no host synchronisation, so
the whole thing can run inside a CUDA graph.

Scaling to [0, 1] and normalizing go through a 3 x 256 lookup table computed with exactly
torchvision's float32 arithmetic, so every device gives torchvision's CPU values bit for bit.
"""
from __future__ import annotations

from typing import Sequence, Union
import torch
from sortkd.data.cifar import CifarArrays


# --- augment ------------------------------------------------------------------

PAD = 4
CROP_OFFSETS = 2 * PAD + 1  # 9 offsets per axis
NUM_VIEWS = CROP_OFFSETS * CROP_OFFSETS * 2  # x flip = 162
SIZE = 32
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

IntOrTensor = Union[int, torch.Tensor]


def _check_int_range(name: str, value: int, limit: int) -> None:
    if not 0 <= value < limit:
        raise ValueError(f"{name} must be in 0..{limit - 1}, got {value}")


def encode_view(dy: IntOrTensor, dx: IntOrTensor, flip: IntOrTensor) -> IntOrTensor:
    """View id of crop offsets ``(dy, dx)`` and flip bit; ints or int64 tensors.

    Tensors are not range-checked (that would need a host sync).
    """
    checks = (("dy", dy, CROP_OFFSETS), ("dx", dx, CROP_OFFSETS), ("flip", flip, 2))
    for name, value, limit in checks:
        if isinstance(value, int):
            _check_int_range(name, value, limit)
    return (dy * CROP_OFFSETS + dx) * 2 + flip


def decode_view(view: IntOrTensor) -> tuple[IntOrTensor, IntOrTensor, IntOrTensor]:
    """``(dy, dx, flip)`` of a view id; ints or int64 tensors."""
    if isinstance(view, int):
        _check_int_range("view", view, NUM_VIEWS)
    flip = view % 2
    crop = view // 2
    return crop // CROP_OFFSETS, crop % CROP_OFFSETS, flip


def _check_images(x: torch.Tensor, size: int, what: str) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
        raise ValueError(
            f"{what} must be a uint8 tensor [N, 3, {size}, {size}], "
            f"got {x.dtype} {tuple(x.shape)}"
        )


def pad_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, 32, 32] -> uint8 [N, 3, 40, 40] with a zero border of 4 px."""
    _check_images(x, SIZE, "images")
    padded = x.new_zeros((x.shape[0], 3, SIZE + 2 * PAD, SIZE + 2 * PAD))
    padded[:, :, PAD : PAD + SIZE, PAD : PAD + SIZE] = x
    return padded


_LUT_CACHE: dict[tuple, torch.Tensor] = {}


def normalization_table(
    mean: Sequence[float] = CIFAR100_MEAN,
    std: Sequence[float] = CIFAR100_STD,
    device: Union[str, torch.device] = "cpu",
) -> torch.Tensor:
    """float32 [3, 256]: entry ``[c, v]`` is ``(v / 255 - mean[c]) / std[c]``.

    Computed on the CPU with torchvision's operations (``to_tensor`` then ``normalize``) and
    cached per device: only the first call on a device copies it there, so warm up once before
    capturing a CUDA graph.
    """
    device = torch.device(device)
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need one value per channel (3), got {mean} and {std}")
    key = (mean, std, str(device))
    table = _LUT_CACHE.get(key)
    if table is None:
        levels = torch.arange(256, dtype=torch.float32).div(255).expand(3, 256)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1)
        table = levels.sub(mean_t).div(std_t).contiguous().to(device)
        _LUT_CACHE[key] = table
    return table


def _lookup(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Map uint8 [B, 3, H, W] through the per-channel table to float32."""
    channel_base = torch.arange(3, device=values.device).view(1, 3, 1, 1) * 256
    # int64 indices: a uint8 index tensor would be read as a boolean mask.
    return table.view(-1)[values.long() + channel_base]


def crop_flip(padded: torch.Tensor, index: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """The crop + flip of training views, still uint8 [B, 3, 32, 32] (the strong view's input).

    ``padded`` is uint8 [N, 3, 40, 40] (from :func:`pad_images`); ``index`` and ``views`` are
    int64 [B] on the same device: sample ``b`` is image ``index[b]`` cropped at ``(dy, dx)`` and
    flipped horizontally if ``flip``, where ``(dy, dx, flip) = decode_view(views[b])``.
    """
    _check_images(padded, SIZE + 2 * PAD, "padded images")
    for name, t in (("index", index), ("views", views)):
        if t.dim() != 1 or t.dtype != torch.int64:
            raise ValueError(
                f"{name} must be an int64 tensor [B], got {t.dtype} {tuple(t.shape)}"
            )
        if t.device != padded.device:
            raise ValueError(f"{name} is on {t.device} but the images are on {padded.device}")
    if index.shape != views.shape:
        raise ValueError(
            f"index {tuple(index.shape)} and views {tuple(views.shape)} differ in size"
        )
    dy, dx, flip = decode_view(views)
    steps = torch.arange(SIZE, device=padded.device)
    rows = dy[:, None] + steps  # [B, 32]
    # A flipped view reads its columns right to left: output column c <- dx + 31 - c.
    cols = dx[:, None] + torch.where(flip[:, None].bool(), (SIZE - 1) - steps, steps)
    channels = torch.arange(3, device=padded.device)
    return padded[
        index[:, None, None, None],
        channels[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def render_views(
    padded: torch.Tensor,
    index: torch.Tensor,
    views: torch.Tensor,
    mean: Sequence[float] = CIFAR100_MEAN,
    std: Sequence[float] = CIFAR100_STD,
) -> torch.Tensor:
    """Render training views (:func:`crop_flip`, then normalized): float32 [B, 3, 32, 32]."""
    return _lookup(crop_flip(padded, index, views), normalization_table(mean, std, padded.device))


def normalize_images(
    x: torch.Tensor, mean: Sequence[float] = CIFAR100_MEAN, std: Sequence[float] = CIFAR100_STD
) -> torch.Tensor:
    """The test-set transform: uint8 [B, 3, 32, 32] -> normalized float32 [B, 3, 32, 32]."""
    _check_images(x, SIZE, "images")
    return _lookup(x, normalization_table(mean, std, x.device))


# --- device_data --------------------------------------------------------------

class DeviceCifar:
    """uint8 training images (zero-padded once) and normalized test images on one device."""

    num_views = NUM_VIEWS

    def __init__(self, arrays: CifarArrays, device: torch.device):
        self.device = device
        self.num_classes = arrays.num_classes
        train_x = torch.from_numpy(arrays.train_x)
        self.train_padded = pad_images(train_x).to(device)
        self.train_y = torch.from_numpy(arrays.train_y).long().to(device)
        self.test_x = normalize_images(torch.from_numpy(arrays.test_x)).to(device)
        self.test_y = torch.from_numpy(arrays.test_y).long().to(device)
        normalization_table(device=device)  # its one host-to-device copy here, not in the first step

    @property
    def num_train(self) -> int:
        return self.train_y.shape[0]

    def train_batch(self, index: torch.Tensor, views: torch.Tensor):
        return render_views(self.train_padded, index, views), self.train_y[index]

    def strong_batch(self, index: torch.Tensor, views: torch.Tensor, draws) -> torch.Tensor:
        """MLKD's strong view: crop + flip, RandAugment + Cutout on uint8, then normalized.
        ``draws`` (``sortkd.data.randaugment.StrongDraws``) holds one row per sample of the batch."""
        from sortkd.data.randaugment import rand_augment

        return normalize_images(rand_augment(crop_flip(self.train_padded, index, views), draws))
