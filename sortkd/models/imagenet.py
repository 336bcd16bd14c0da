"""ImageNet architectures: torchvision ResNets and the mdistiller MobileNetV1.

Teachers come with torchvision's pretrained weights, named by a member of the arch's weights
enum (``ResNet34_Weights.IMAGENET1K_V1``: 73.314 % top-1, ``ResNet50_Weights.IMAGENET1K_V1``:
76.13 %, the teachers of methods.md §3). torchvision downloads them into ``$TORCH_HOME`` and
checks the file hash. The choice ``"none"`` builds the teacher with random weights (tests,
dry runs). Random weights come from derived seeds: the student from (seed, "init", 0), a
random teacher from (seed, "init", 1), so every variant of a seed starts alike.
"""
from __future__ import annotations

from typing import Callable
from torch import nn
from torchvision import models as tv
from sortkd.seeding import seeded_global_rng
import torch


# --- models -------------------------------------------------------------------

NO_WEIGHTS = "none"

# arch -> (constructor, weights enum); the teachers must come from this table.
_TORCHVISION: dict[str, tuple[Callable[..., nn.Module], type]] = {
    "resnet18": (tv.resnet18, tv.ResNet18_Weights),
    "resnet34": (tv.resnet34, tv.ResNet34_Weights),
    "resnet50": (tv.resnet50, tv.ResNet50_Weights),
}

TEACHER_ARCHS = tuple(_TORCHVISION)
STUDENT_ARCHS = (*_TORCHVISION, "mobilenetv1")

# The init stream's counter: students and random teachers draw different weights.
_STUDENT_INIT, _TEACHER_INIT = 0, 1


def _check_arch(arch: str, allowed: tuple[str, ...], role: str) -> None:
    if arch not in allowed:
        raise ValueError(f"unknown ImageNet {role} arch {arch!r}; allowed: {', '.join(allowed)}")


def teacher_weights(arch: str, choice: str):
    """The torchvision weights enum member named ``choice`` for ``arch``, or None for 'none'."""
    _check_arch(arch, TEACHER_ARCHS, "teacher")
    if choice == NO_WEIGHTS:
        return None
    enum = _TORCHVISION[arch][1]
    try:
        return enum[choice]
    except KeyError:
        allowed = [member.name for member in enum] + [NO_WEIGHTS]
        raise ValueError(f"teacher {arch}: unknown weights {choice!r}; allowed: {', '.join(allowed)}") from None


def build_student(arch: str, num_classes: int, seed: int) -> nn.Module:
    _check_arch(arch, STUDENT_ARCHS, "student")
    with seeded_global_rng(seed, "init", _STUDENT_INIT):
        if arch == "mobilenetv1":
            return MobileNetV1(num_classes=num_classes)
        return _TORCHVISION[arch][0](weights=None, num_classes=num_classes)


def build_teacher(arch: str, choice: str, num_classes: int, seed: int) -> nn.Module:
    """The teacher in eval mode with frozen parameters: pretrained, or random for 'none'."""
    weights = teacher_weights(arch, choice)
    constructor = _TORCHVISION[arch][0]
    if weights is None:
        with seeded_global_rng(seed, "init", _TEACHER_INIT):
            model = constructor(weights=None, num_classes=num_classes)
    else:
        classes = len(weights.meta["categories"])
        if num_classes != classes:
            raise ValueError(f"teacher {arch} with weights {choice} predicts {classes} classes but the "
                             f"data set has {num_classes}; use teacher weights 'none' for a small data set")
        model = _download_guard(constructor, weights)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _download_guard(constructor, weights) -> nn.Module:
    try:
        return constructor(weights=weights)
    except OSError as exc:  # URLError and friends: no network on the compute node
        file_name = weights.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not fetch the pretrained weights {weights} from {weights.url} ({exc}). "
            f"On a machine without network, copy {file_name} into $TORCH_HOME/hub/checkpoints/ "
            f"(default ~/.cache/torch/hub/checkpoints/) first") from exc


# --- mobilenetv1 --------------------------------------------------------------

# (output channels, stride) of the 13 depthwise-separable blocks after the 3x3 stem.
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
_STEM_CHANNELS = 32


def _stem(out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers = [_stem(_STEM_CHANNELS, 2)]
        channels = _STEM_CHANNELS
        for out_channels, stride in _BLOCKS:
            layers.append(_depthwise_separable(channels, out_channels, stride))
            channels = out_channels
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.model(x), 1))
