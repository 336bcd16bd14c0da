"""The CIFAR model zoo: arch name -> an initialised model, as the public zoo builds it.

mdistiller / RepDistiller initialise their models in three ways that differ only in the
classifier; convolutions always get He-normal init with fan_out (std = sqrt(2 / (k*k*out))).
The table below names, per arch, the constructor and the scheme ``build`` applies right after
construction (ShuffleNets keep torch's default init, as the public zoo does).
"""
from torch import nn

from sortkd.models import cifar_resnet, mobilenetv2, shufflenet, vgg, wide_resnet

# linear scheme: "default" keeps torch's Linear init; "zero_bias" zeroes the Linear bias;
# "small_normal" draws Linear weights from N(0, 0.01) and zeroes the bias; None: no He init.
_ZOO = {
    "resnet8": (cifar_resnet.resnet8, "default"),
    "resnet14": (cifar_resnet.resnet14, "default"),
    "resnet20": (cifar_resnet.resnet20, "default"),
    "resnet32": (cifar_resnet.resnet32, "default"),
    "resnet56": (cifar_resnet.resnet56, "default"),
    "resnet110": (cifar_resnet.resnet110, "default"),
    "resnet8x4": (cifar_resnet.resnet8x4, "default"),
    "resnet32x4": (cifar_resnet.resnet32x4, "default"),
    "wrn_16_2": (wide_resnet.wrn_16_2, "zero_bias"),
    "wrn_40_1": (wide_resnet.wrn_40_1, "zero_bias"),
    "wrn_40_2": (wide_resnet.wrn_40_2, "zero_bias"),
    "vgg8": (vgg.vgg8, "small_normal"),
    "vgg13": (vgg.vgg13, "small_normal"),
    "MobileNetV2": (mobilenetv2.MobileNetV2, "small_normal"),
    "ShuffleV1": (shufflenet.ShuffleV1, None),
    "ShuffleV2": (shufflenet.ShuffleV2, None),
    "ResNet50": (cifar_resnet.ResNet50, "default"),
}

# Architecture names accepted by build(), spelled as in the public zoo and the paper.
ARCHS = tuple(_ZOO)


def build(arch: str, num_classes: int = 100) -> nn.Module:
    """A freshly initialised CIFAR model whose forward(x: N x 3 x 32 x 32) returns N x num_classes logits.

    Initial weights are drawn from torch's global RNG: seed it (torch.manual_seed) first
    for reproducible weights.
    """
    if arch not in _ZOO:
        raise ValueError(f"unknown arch {arch!r}; allowed archs: {', '.join(ARCHS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    constructor, linear = _ZOO[arch]
    model = constructor(num_classes=num_classes)
    if linear is not None:
        he_fan_out_init(model, linear)
    return model


def he_fan_out_init(model: nn.Module, linear: str) -> None:
    """Initialise ``model`` in place the way the public CIFAR models do (schemes above)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "small_normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            if linear != "default":
                nn.init.zeros_(m.bias)
