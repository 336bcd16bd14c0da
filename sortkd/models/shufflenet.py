"""Channel shuffle shared by ShuffleNet v1 and v2 (a parameter-free permutation)."""
import torch
import torch.nn.functional as F
from torch import nn


# --- channel_shuffle ----------------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups: [g, C/g] -> [C/g, g] order."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# --- shufflenetv1 -------------------------------------------------------------

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


# --- shufflenetv2 -------------------------------------------------------------

_STEM_CH = 24


class BasicUnit(nn.Module):
    """Split channels in half; transform the second half (1x1, 3x3 dw, 1x1); concat; shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        self.keep = channels // 2
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, branch = x[:, : self.keep], x[:, self.keep :]
        branch = F.relu(self.bn1(self.conv1(branch)), inplace=True)
        branch = self.bn2(self.conv2(branch))
        branch = F.relu(self.bn3(self.conv3(branch)), inplace=True)
        return channel_shuffle(torch.cat([kept, branch], 1), 2)


class DownUnit(nn.Module):
    """Two stride-2 branches over the full input, each giving out_ch / 2 channels; concat; shuffle."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = out_ch // 2
        # left branch: 3x3 dw (stride 2) - 1x1
        self.conv1 = nn.Conv2d(in_ch, in_ch, kernel_size=3, stride=2, padding=1, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = nn.Conv2d(in_ch, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1 - 3x3 dw (stride 2) - 1x1
        self.conv3 = nn.Conv2d(in_ch, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)), inplace=True)
        right = F.relu(self.bn3(self.conv3(x)), inplace=True)
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)), inplace=True)
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 100, stage_out=(116, 232, 464), stage_blocks=(3, 7, 3), head_ch: int = 1024):
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM_CH, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CH)
        in_ch = _STEM_CH
        stages = []
        for out_ch, n in zip(stage_out, stage_blocks):
            # One down-sampling unit followed by n basic units (n + 1 modules per stage).
            stages.append(nn.Sequential(DownUnit(in_ch, out_ch), *[BasicUnit(out_ch) for _ in range(n)]))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_ch, head_ch, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(head_ch)
        self.linear = nn.Linear(head_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = F.avg_pool2d(x, 4)
        return self.linear(x.flatten(1))


def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:  # noqa: N802 (public arch name)
    return ShuffleNetV2(num_classes)
