"""Name -> constructor table of the CIFAR model zoo."""
from torch import nn

from sortkd.models import cifar_resnet, cifar_resnet50, mobilenetv2, shufflenet, vgg, wide_resnet

_CONSTRUCTORS = {
    "resnet8": cifar_resnet.resnet8,
    "resnet14": cifar_resnet.resnet14,
    "resnet20": cifar_resnet.resnet20,
    "resnet32": cifar_resnet.resnet32,
    "resnet56": cifar_resnet.resnet56,
    "resnet110": cifar_resnet.resnet110,
    "resnet8x4": cifar_resnet.resnet8x4,
    "resnet32x4": cifar_resnet.resnet32x4,
    "wrn_16_2": wide_resnet.wrn_16_2,
    "wrn_40_1": wide_resnet.wrn_40_1,
    "wrn_40_2": wide_resnet.wrn_40_2,
    "vgg8": vgg.vgg8,
    "vgg13": vgg.vgg13,
    "MobileNetV2": mobilenetv2.MobileNetV2,
    "ShuffleV1": shufflenet.ShuffleV1,
    "ShuffleV2": shufflenet.ShuffleV2,
    "ResNet50": cifar_resnet50.ResNet50,
}

# Architecture names accepted by build(), spelled as in the public zoo and the paper.
ARCHS = tuple(_CONSTRUCTORS)


def build(arch: str, num_classes: int = 100) -> nn.Module:
    """A freshly initialised CIFAR model whose forward(x: N x 3 x 32 x 32) returns N x num_classes logits.

    Initial weights are drawn from torch's global RNG: seed it (torch.manual_seed) first
    for reproducible weights.
    """
    if arch not in _CONSTRUCTORS:
        raise ValueError(f"unknown arch {arch!r}; allowed archs: {', '.join(ARCHS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return _CONSTRUCTORS[arch](num_classes=num_classes)
