"""VGG with batch norm for CIFAR (vgg8 = config "S", vgg13 = config "B").

Five conv blocks, each a Sequential of [conv(bias), bn, relu] units whose last relu is
applied by forward; names follow the public zoo (block{0..4}.{3j}/{3j+1}, classifier).
"""
import torch
import torch.nn.functional as F
from torch import nn

# Output channels of the convs in each of the five blocks.
VGG_CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


def _conv_block(in_ch: int, widths: tuple) -> nn.Sequential:
    layers = []
    for w in widths:
        layers += [nn.Conv2d(in_ch, w, kernel_size=3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_ch = w
    # The block ends at its last BN: forward applies that relu (the public layout).
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, widths: tuple, num_classes: int = 100):
        super().__init__()
        in_chs = (3,) + tuple(block[-1] for block in widths[:-1])
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _conv_block(c, w) for c, w in zip(in_chs, widths)
        )
        self.classifier = nn.Linear(widths[-1][-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 2x2 max pools after blocks 0-2; the pool after block3 is only used for 64-pixel
        # inputs in the public model, so on CIFAR block4 runs at 4x4.
        pool_after_block3 = x.shape[2] == 64
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        if pool_after_block3:
            x = F.max_pool2d(x, 2)
        x = F.relu(self.block4(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.classifier(x.flatten(1))


def vgg8(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg8"], num_classes)


def vgg13(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg13"], num_classes)
