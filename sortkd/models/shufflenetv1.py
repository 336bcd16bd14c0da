"""ShuffleNet v1 for CIFAR (groups 3, stage outputs 240/480/960, 4/8/4 blocks).

Names follow the public zoo (conv1, bn1, layer{1,2,3}.{i}.{conv,bn}{1,2,3}, linear). Torch's
default init is kept, as in the public model.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .channel_shuffle import channel_shuffle

_STEM_CH = 24


class ShuffleUnit(nn.Module):
    """Grouped 1x1 - shuffle - 3x3 depthwise - grouped 1x1.

    Stride 2 units concatenate a 3x3 average-pooled input (so they produce only
    out_ch - in_ch new channels); stride 1 units add the input.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = out_ch // 4
        # The stem output (24 channels) is too narrow to split into groups.
        self.first_groups = 1 if in_ch == _STEM_CH else groups
        self.conv1 = nn.Conv2d(in_ch, mid, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int = 100, stage_out=(240, 480, 960), stage_blocks=(4, 8, 4), groups: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM_CH, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CH)
        in_ch = _STEM_CH
        stages = []
        for out_ch, n in zip(stage_out, stage_blocks):
            units = [ShuffleUnit(in_ch, out_ch - in_ch, stride=2, groups=groups)]
            units += [ShuffleUnit(out_ch, out_ch, stride=1, groups=groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(stage_out[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.avg_pool2d(x, 4)
        return self.linear(x.flatten(1))


def ShuffleV1(num_classes: int = 100) -> ShuffleNetV1:  # noqa: N802 (public arch name)
    return ShuffleNetV1(num_classes)
