"""ResNet-18 for 28x28 digits: a 3x3 stride-1 single-channel stem and no max-pool (CIFAR style)."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18

ARCH = "resnet18"


def build_model(n_classes: int = 10) -> nn.Module:
    model = resnet18(weights=None, num_classes=n_classes)
    # The ImageNet stem would shrink 28x28 to 7x7 before the first block.
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    module: nn.Module = model
    return module
