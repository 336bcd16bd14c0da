"""Weight initialisation schemes of the public CIFAR zoo (mdistiller / RepDistiller).

The zoo uses three variants that differ only in how the classifier is set up; the
convolutions always get He-normal init with fan_out (std = sqrt(2 / (k*k*out))).
"""
from torch import nn


def he_fan_out_init(model: nn.Module, linear: str = "default") -> None:
    """Initialise ``model`` in place the way the public CIFAR models do.

    linear: "default" keeps torch's Linear init (resnet, ResNet50),
            "zero_bias" zeroes the Linear bias only (wrn),
            "small_normal" draws weights from N(0, 0.01) and zeroes the bias (vgg, MobileNetV2).
    """
    if linear not in ("default", "zero_bias", "small_normal"):
        raise ValueError(
            f"linear={linear!r} is not a known scheme; use 'default', 'zero_bias' or 'small_normal'"
        )
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
