"""CIFAR ResNeXt-29, the 8x64d network of Xie et al.

Xie et al., "Aggregated Residual Transformations for Deep Neural Networks"
(arXiv:1611.05431), section 5.3, in pytorch-classification's layout: a 3x3 stem conv to
64 channels, three stages of (depth - 2) / 9 bottlenecks with output widths 64*w, 128*w,
256*w (w = ``widen_factor``, 4 by default: 256/512/1024), global average pool, linear.
Each bottleneck reduces to D channels with a conv1x1, runs a grouped conv3x3 with
``cardinality`` groups (the stride sits here), expands with a conv1x1, and adds a
conv1x1 + BN projection shortcut where the width changes. D = cardinality x base_width
in the first stage and doubles with the stage width, so 8x64d has 34,426,698 params at
10 classes (the paper's 34.4M).

Module names: ``conv1``/``bn1`` (stem), ``layer1``..``layer3`` holding blocks with
``conv_reduce``, ``bn_reduce``, ``conv_group``, ``bn_group``, ``conv_expand``,
``bn_expand`` and ``shortcut``; ``avgpool``, ``fc``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from prunecli.models._registry import register_model
from prunecli.models.residual import ResidualLayout, register_residual_block

_STEM_WIDTH = 64


class ResNeXtBottleneck(nn.Module):
    """conv1x1(D)-BN-ReLU, grouped conv3x3(D, stride)-BN-ReLU, conv1x1(out)-BN, add the shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, cardinality: int, group_width: int):
        super().__init__()
        width = cardinality * group_width  # D in the paper
        self.conv_reduce = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(width)
        self.conv_group = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn_group = nn.BatchNorm2d(width)
        self.conv_expand = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn_reduce(self.conv_reduce(x)))
        out = self.relu(self.bn_group(self.conv_group(out)))
        out = self.bn_expand(self.conv_expand(out))
        return self.relu(out + self.shortcut(x))


register_residual_block(
    ResNeXtBottleneck,
    ResidualLayout(branch_end="bn_expand", inner=("bn_reduce", "bn_group"), shortcut="shortcut", grouped=("conv_group", "bn_group")),
)


class CifarResNeXt(nn.Module):
    """Stem conv3x3(64)-BN-ReLU, three stages of ResNeXt bottlenecks, pool, fc."""

    def __init__(
        self,
        blocks_per_stage: int,
        cardinality: int,
        base_width: int,
        widen_factor: int,
        *,
        in_channels: int,
        num_classes: int,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, _STEM_WIDTH, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_WIDTH)
        self.relu = nn.ReLU(inplace=True)
        channels = _STEM_WIDTH
        stages = []
        for scale, stride in ((1, 1), (2, 2), (4, 2)):
            out_channels = _STEM_WIDTH * widen_factor * scale
            group_width = base_width * scale  # the bottleneck widens with the stage
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(ResNeXtBottleneck(channels, out_channels, stride if i == 0 else 1, cardinality, group_width))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_weights(model: nn.Module) -> None:
    # He-normal on fan_out for ReLU networks, BN starting as the identity, zero linear bias.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


@register_model
def resnext29(
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    cardinality: int = 8,
    base_width: int = 64,
    widen_factor: int = 4,
    depth: int = 29,
) -> CifarResNeXt:
    """ResNeXt-29 (8x64d) for CIFAR (Xie et al., arXiv:1611.05431)."""
    if depth < 11 or (depth - 2) % 9:
        raise ValueError(f"depth must be 9n + 2 with n >= 1 (e.g. 29), got {depth}")
    for name, value in (("cardinality", cardinality), ("base_width", base_width), ("widen_factor", widen_factor)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    return CifarResNeXt(
        (depth - 2) // 9, cardinality, base_width, widen_factor, in_channels=in_channels, num_classes=num_classes
    )
