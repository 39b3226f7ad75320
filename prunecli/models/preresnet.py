"""Pre-activation ResNet-164 for CIFAR, the ResNet of Network Slimming.

He et al., "Identity Mappings in Deep Residual Networks" (arXiv:1603.05027), as trained
and pruned by Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming" (arXiv:1708.06519): 18 pre-activation bottlenecks per stage, planes 16/32/64
with expansion 4, 1,703,258 params at 10 classes (the paper's 1.70M) and 2.48e8 MACs
at 3x32x32 (the paper's 4.99e8 FLOPs ~ 2 x MACs).

Each block is BN-ReLU-conv1x1, BN-ReLU-conv3x3(stride), BN-ReLU-conv1x1(x4), added to
the shortcut; where the shape changes the shortcut is a strided conv1x1 without BN (the
following block's BN normalises the sum). A final BN-ReLU follows the last stage.

Network Slimming's reference inserts a ``channel_selection`` layer after each block's
first BN (and after the final BN) so that pruning that BN drops inputs of conv1 without
touching the residual width. The model is built without it; ``stream_norms()`` names those
BatchNorms, and ``prune --method slimming`` inserts prunecli's selection layer in front of
them (prunecli.models.channel_selection), recorded in the checkpoint as a converter.

Module names: ``conv1`` (stem), ``layer1``..``layer3`` holding blocks with ``bn1``,
``conv1``, ``bn2``, ``conv2``, ``bn3``, ``conv3`` and ``shortcut``; ``bn`` (final), ``fc``.
"""

from __future__ import annotations


import torch
import torch.nn as nn

from prunecli.models._init import slimming_init
from prunecli.models._registry import register_model


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3(stride), BN-ReLU-conv1x1(x4), plus the shortcut (no ReLU after)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the shortcut takes the raw input x, not the pre-activated one (as in the reference)
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + self.shortcut(x)


class PreActResNet(nn.Module):
    """Stem conv3x3(16), three stages of pre-activation bottlenecks, final BN-ReLU, pool, fc."""

    def __init__(self, blocks_per_stage: int, *, in_channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        channels = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(PreActBottleneck(channels, planes, stride if i == 0 else 1))
                channels = planes * PreActBottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        slimming_init(self)

    def stream_norms(self) -> list[str]:
        """The BatchNorms that read the residual stream: each block's ``bn1`` and the final ``bn``."""
        names = [f"{stage}.{i}.bn1" for stage in ("layer1", "layer2", "layer3") for i in range(len(getattr(self, stage)))]
        return names + ["bn"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def preresnet164(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, depth: int = 164) -> PreActResNet:
    """Pre-activation ResNet-164 for CIFAR, Network Slimming's (He et al., arXiv:1603.05027; Liu et al., arXiv:1708.06519)."""
    # three stages of bottlenecks (three convs each), plus the stem and the classifier
    if depth < 11 or (depth - 2) % 9:
        raise ValueError(f"depth must be 9n + 2 with n >= 1 (e.g. 164, 1001), got {depth}")
    return PreActResNet((depth - 2) // 9, in_channels=in_channels, num_classes=num_classes)
