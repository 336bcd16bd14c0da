"""Wide ResNets (Zagoruyko & Komodakis) for CIFAR: wrn_16_2, wrn_40_1, wrn_40_2.

Pre-activation blocks; names follow the public zoo (conv1, block{1,2,3}.layer.{i}.{bn1,conv1,
bn2,conv2,convShortcut}, bn1, fc).
"""
import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """bn-relu-conv-bn-relu-conv with an identity or 1x1-conv shortcut.

    When the shape changes, the shortcut conv sees the pre-activated input
    (bn1 + relu), as in the original WRN code; otherwise it is the raw input.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)
        # The public block decides on channel equality only (stride changes always come
        # with a channel change in these nets).
        self.equal_in_out = in_ch == out_ch
        self.convShortcut = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)), inplace=True)
        out = self.conv2(out)
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        return out + shortcut


class NetworkBlock(nn.Module):
    """One stage: ``n`` blocks, the first one changing width and stride (module path ``.layer``)."""

    def __init__(self, n: int, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[PreActBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """depth = 6n + 4; stage widths 16k, 32k, 64k for widen factor k."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth={depth} is not 6n+4 (e.g. 16, 40)")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn1(x), inplace=True)
        x = F.avg_pool2d(x, 8)
        return self.fc(x.flatten(1))


def wrn_16_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 2, num_classes)


def wrn_40_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 1, num_classes)


def wrn_40_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 2, num_classes)
