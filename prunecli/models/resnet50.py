"""ResNet-50 (bottleneck, [3, 4, 6, 3], widths 64-512 x 4), with the CIFAR stem the Sensitivity Pruner uses.

He et al., "Deep Residual Learning for Image Recognition" (arXiv:1512.03385). torchvision's
ResNet-50 with its ImageNet stem (7x7 stride-2 conv, 3x3 max pool) has 25,557,032 params
and 4.11e9 MACs at 3x224x224, 1000 classes (the seed's ImageNet baseline: 4.111 G MACs /
25.557 M params). The Sensitivity Pruner's folders named "resnet56" hold this network with a
CIFAR stem instead: a 3x3 stride-1 conv and no max pool, so 32x32 inputs reach the last
stage at 4x4 (METHODS.md, "Reference code"). ``cifar_stem`` chooses; by default it is on
for inputs smaller than 64 pixels. The real CIFAR ResNet-56 is ``resnet56``.

Built on torchvision's ResNet class, so module names are torchvision's: ``conv1``,
``bn1``, ``layer1``..``layer4`` (blocks with ``conv1``..``conv3``, ``bn1``..``bn3`` and
``downsample``), ``fc``; block-by-block compression takes ``layer1``..``layer4`` as the
seed's group_id 0-3.
"""

from __future__ import annotations

from typing import Optional

import torch.nn as nn

from prunecli.models._registry import register_model


@register_model
def resnet50(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, cifar_stem: Optional[bool] = None) -> nn.Module:
    """ResNet-50, bottleneck [3, 4, 6, 3] (He et al., arXiv:1512.03385); CIFAR stem below 64 pixels (the Sensitivity Pruner's)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    model = ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
    small = image_size < 64 if cifar_stem is None else bool(cifar_stem)
    if small:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if small or in_channels != 3:
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's conv init
    return model
