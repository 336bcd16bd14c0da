"""MobileNetV2 for CIFAR as in the public zoo's ``mobile_half``: width 0.5, expansion 6.

Names follow the public zoo (conv1.{0,1}, blocks.{s}.{i}.conv.{0,1,3,4,6,7}, conv2.{0,1},
classifier.0).
"""
import torch
import torch.nn.functional as F
from torch import nn

# (expansion, channels at width 1, repeats, first stride); expansion None = the model's T.
_STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
           (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise (strided) - 1x1 linear projection; residual when shapes match.

    The expand conv is present even for expansion 1 (unlike torchvision).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 100, expansion: int = 6, width_mult: float = 0.5):
        super().__init__()
        in_ch = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_ch, 3, 2)
        stages = []
        for t, c, n, s in _STAGES:
            out_ch = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t or expansion))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        # The head keeps 1280 channels for any width <= 1.
        last_ch = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_ch, last_ch, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last_ch, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        # Public model: AvgPool2d(input_size // 16 = 2, ceil_mode=True) on the 2x2 map of a
        # 32-pixel input, i.e. a global average on CIFAR.
        x = F.avg_pool2d(x, 2, ceil_mode=True)
        return self.classifier(x.flatten(1))
