"""MobileNetV1 for ImageNet, laid out like the public mdistiller student.

Parameter names (``model.<i>.<j>.*``, ``fc.*``) and shapes match mdistiller's ImageNet
MobileNetV1, so its checkpoints load without conversion: 4,231,976 parameters for 1000
classes. mdistiller ends the feature stack with ``AvgPool2d(7)``, which only fits 224 px
inputs; the global average pool used here is the same operation at 224 px and also accepts
the tiny images of the tests.
"""
from __future__ import annotations

import torch
from torch import nn

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
