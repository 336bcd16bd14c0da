"""ResNet50 for CIFAR: the ImageNet bottleneck ResNet with a 3x3 stride-1 stem and no max pool.

Names follow the public zoo's resnetv2 (conv1, bn1, layer{1..4}.{i}.{conv,bn}{1,2,3},
layer*.{i}.shortcut.{0,1}, linear).
"""
import torch
import torch.nn.functional as F
from torch import nn

from sortkd.models.weight_init import he_fan_out_init

_EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus the (projected) input, then relu."""

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        out_ch = planes * _EXPANSION
        self.conv1 = nn.Conv2d(in_ch, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        # An empty Sequential is the identity and carries no state_dict entries.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet50(nn.Module):
    """Bottleneck stages of (3, 4, 6, 3) blocks with 64/128/256/512 planes; 2048-d pooled feature."""

    def __init__(self, num_classes: int = 100, blocks=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_ch = 64
        stages = []
        for planes, n, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
            layers = []
            for i in range(n):
                layers.append(Bottleneck(in_ch, planes, stride if i == 0 else 1))
                in_ch = planes * _EXPANSION
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512 * _EXPANSION, num_classes)
        he_fan_out_init(self, linear="default")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.linear(x.flatten(1))


def ResNet50(num_classes: int = 100) -> CifarResNet50:  # noqa: N802 (public arch name)
    return CifarResNet50(num_classes)
